//! Bans from logs: parsing log lines and deciding which sources misbehaved.

pub mod access;
pub mod bunches;
pub mod input;
