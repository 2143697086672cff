//! One module per CLI command.

pub mod scan;
