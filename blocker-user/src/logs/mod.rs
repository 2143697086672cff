//! Bans from logs: jails that follow log files and the journal, parse their lines (filters,
//! access logs), and ban sources that misbehave.

pub mod access;
pub mod bunches;
pub mod config;
pub mod filter;
pub mod follow;
pub mod input;
pub mod jail;
pub mod positions;
