pub mod analyze;
pub mod status_jails;
