//! See tests/ for the integration tests.
