//! One module per CLI command.

pub mod analyze;
pub mod scan;
pub mod status_jails;
