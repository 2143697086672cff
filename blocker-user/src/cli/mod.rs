//! One module per CLI command.

pub mod analyze;
pub mod export;
pub mod feeds;
pub mod import;
pub mod scan;
pub mod status_jails;
