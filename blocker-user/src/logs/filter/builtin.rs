//! The built-in filters: fail2ban-format files kept in `blocker-user/filters/` and embedded
//! in the binary, so `filter = "sshd"` needs no file on the host.

use std::path::{Path, PathBuf};

use super::ini::Source;
use super::FilterError;

/// Name → file text. The `*common` files are included by the others, not filters themselves.
const FILES: &[(&str, &str)] = &[
    ("common", include_str!("../../../filters/common.conf")),
    (
        "botsearch-common",
        include_str!("../../../filters/botsearch-common.conf"),
    ),
    ("sshd", include_str!("../../../filters/sshd.conf")),
    ("vsftpd", include_str!("../../../filters/vsftpd.conf")),
    ("proftpd", include_str!("../../../filters/proftpd.conf")),
    ("pure-ftpd", include_str!("../../../filters/pure-ftpd.conf")),
    (
        "apache-auth",
        include_str!("../../../filters/apache-auth.conf"),
    ),
    (
        "apache-botsearch",
        include_str!("../../../filters/apache-botsearch.conf"),
    ),
    (
        "nginx-http-auth",
        include_str!("../../../filters/nginx-http-auth.conf"),
    ),
    (
        "nginx-botsearch",
        include_str!("../../../filters/nginx-botsearch.conf"),
    ),
    ("postfix", include_str!("../../../filters/postfix.conf")),
    ("dovecot", include_str!("../../../filters/dovecot.conf")),
];

/// Where built-ins appear to live, so includes and error messages read like paths.
const DIR: &str = "built-in";

/// The names of the built-in filters.
pub fn names() -> impl Iterator<Item = &'static str> {
    FILES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !name.ends_with("common"))
}

/// The path a built-in filter is read from, if `name` is one.
pub fn path(name: &str) -> Option<PathBuf> {
    names()
        .any(|builtin| builtin == name)
        .then(|| Path::new(DIR).join(format!("{name}.conf")))
}

/// The embedded files, read by path (`built-in/sshd.conf`).
pub struct Embedded;

impl Source for Embedded {
    fn read(&self, path: &Path) -> Result<Option<String>, FilterError> {
        if path.parent() != Some(Path::new(DIR)) || path.extension().is_none_or(|ext| ext != "conf")
        {
            return Ok(None);
        }
        let stem = path.file_stem().and_then(|stem| stem.to_str());
        Ok(FILES
            .iter()
            .find(|(name, _)| Some(*name) == stem)
            .map(|(_, text)| text.to_string()))
    }
}
