//! One module per CLI command.

pub mod analyze;
pub mod completions;
pub mod man;
pub mod scan;
pub mod status_jails;
