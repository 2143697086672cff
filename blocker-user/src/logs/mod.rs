//! Bans from logs: jails that follow log files and the journal, match their lines against
//! filters, and ban sources that fail too often.

pub mod config;
pub mod follow;
pub mod jail;
pub mod positions;
