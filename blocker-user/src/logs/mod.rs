//! Bans from logs: jails that follow log files and the journal, filters that turn lines into
//! failures of a source address, access logs and their bunches, and the bans that follow.

pub mod access;
pub mod bunches;
pub mod config;
pub mod filter;
pub mod follow;
pub mod jail;
pub mod lines;
pub mod positions;
