//! One module per CLI command.

pub mod analyze;
pub mod completions;
pub mod doctor;
pub mod export;
pub mod feeds;
pub mod import;
pub mod man;
pub mod scan;
pub mod status_jails;
pub mod top;
pub mod top_data;
pub mod top_events;
pub mod top_samples;
pub mod top_view;
