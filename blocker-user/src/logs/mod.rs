//! Bans from logs: filters that turn log lines into failures of a source address.

pub mod filter;
pub mod lines;
