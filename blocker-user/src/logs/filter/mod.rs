//! Interim stand-in for the filter module (branch i10-filters): the agreed API with a
//! minimal sshd matcher, replaced by the real module at merge.

use std::net::IpAddr;

use jiff::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {file}: {reason}")]
pub struct FilterError {
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineVerdict {
    Failure {
        addr: IpAddr,
        time: Option<Timestamp>,
    },
    Ignored,
    NoMatch,
}

#[derive(Debug)]
pub struct Filter {
    name: String,
}

impl Filter {
    pub fn load(name_or_path: &str) -> Result<Filter, FilterError> {
        if name_or_path == "sshd" {
            return Ok(Filter {
                name: name_or_path.into(),
            });
        }
        Err(FilterError {
            file: name_or_path.into(),
            line: None,
            reason: "no built-in filter of that name and no such file".into(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn check(&self, line: &str) -> LineVerdict {
        if !(line.contains("Failed password") || line.contains("Invalid user")) {
            return LineVerdict::NoMatch;
        }
        line.split(" from ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|addr| addr.parse().ok())
            .map_or(LineVerdict::NoMatch, |addr| LineVerdict::Failure {
                addr,
                time: None,
            })
    }
}
