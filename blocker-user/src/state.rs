//! The state file: every manual ban and allowlist entry with its reason, creation time and
//! wall-clock expiry. It is what `blocker load` restores after a reboot, and it is rewritten
//! atomically (temp file, fsync, rename, fsync of the directory) on every change.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{offense::OffenseBook, rules::RuleTable, Error, Result};

/// Default location of the state file.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/blocker/state.json";

const FORMAT_VERSION: u32 = 1;

/// What blocker remembers about one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub reason: Option<String>,
    pub created_at: Timestamp,
    /// `None` for permanent bans and allowlist entries.
    pub expires_at: Option<Timestamp>,
}

impl Entry {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expiry| expiry <= now)
    }

    /// `permanent` or `temporary` for a ban.
    pub fn ban_kind(&self) -> &'static str {
        if self.expires_at.is_some() {
            "temporary"
        } else {
            "permanent"
        }
    }
}

/// One entry as `blocker list --json` and `GET /v1/bans` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub addr: String,
    /// `permanent`, `temporary`, `allow` or `dynamic`.
    pub kind: &'static str,
    pub expires_at: Option<Timestamp>,
    pub reason: Option<String>,
    pub created_at: Option<Timestamp>,
    /// Dynamic entries: the rule that blacklisted the source, and its hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<u32>,
}

impl Listed {
    fn of(net: &IpNet, entry: &Entry, kind: &'static str) -> Self {
        Self {
            addr: net.to_string(),
            kind,
            expires_at: entry.expires_at,
            reason: entry.reason.clone(),
            created_at: Some(entry.created_at),
            rule: None,
            hits: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub bans: BTreeMap<IpNet, Entry>,
    pub allow: BTreeMap<IpNet, Entry>,
    /// `None` until rules were first set: `blocker load` then installs the default.
    pub rules: Option<RuleTable>,
    /// Offense scores and ban histories of `blocker daemon` / `blocker report`.
    pub offenses: OffenseBook,
    /// Bans issued so far, by where they came from (`cli`, `import`, `offense`).
    pub issued: BTreeMap<String, u64>,
}

/// The on-disk layout: lists of records, readable and diffable by people.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    bans: Vec<Record>,
    #[serde(default)]
    allow: Vec<Record>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rules: Option<RuleTable>,
    #[serde(default)]
    offenses: OffenseBook,
    #[serde(default)]
    issued: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    addr: IpNet,
    #[serde(flatten)]
    entry: Entry,
}

fn to_records(entries: &BTreeMap<IpNet, Entry>) -> Vec<Record> {
    entries
        .iter()
        .map(|(addr, entry)| Record {
            addr: *addr,
            entry: entry.clone(),
        })
        .collect()
}

fn from_records(records: Vec<Record>) -> BTreeMap<IpNet, Entry> {
    records
        .into_iter()
        .map(|record| (record.addr.trunc(), record.entry))
        .collect()
}

impl State {
    /// Reads the state file; a missing file is an empty state. A file that does not parse is
    /// an error, never silently replaced.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self::read(path)?.unwrap_or_default())
    }

    /// Reads and checks the state file; `None` when it does not exist. Rules are checked as
    /// the kernel will take them, so a bad file fails here, before any map is touched.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading state file {}", path.display()),
                    source,
                })
            }
        };
        let invalid = |message: String| Error::State {
            path: path.to_path_buf(),
            message: format!(
                "{message}; fix it or replace it with {} (nothing was changed)",
                last_good_path(path).display()
            ),
        };
        let mut file: StateFile =
            serde_json::from_str(&text).map_err(|err| invalid(err.to_string()))?;
        if file.version != FORMAT_VERSION {
            return Err(invalid(format!(
                "unsupported format version {}",
                file.version
            )));
        }
        if let Some(rules) = &mut file.rules {
            rules.migrate_events();
            rules.compile().map_err(invalid)?;
        }
        Ok(Some(Self {
            bans: from_records(file.bans),
            allow: from_records(file.allow),
            rules: file.rules,
            offenses: file.offenses,
            issued: file.issued,
        }))
    }

    /// Reads the state for `blocker load`, which must attach even when the file is damaged:
    /// a file that cannot be used is left as it is for the operator, and the last good copy
    /// (or nothing) is used instead. Returns the state and, when it is a fallback, why.
    pub fn read_for_boot(path: &Path) -> Result<(Option<Self>, Option<Error>)> {
        let damaged = match Self::read(path) {
            Ok(state) => return Ok((state, None)),
            Err(err @ Error::State { .. }) => err,
            Err(err) => return Err(err),
        };
        let fallback = match Self::read(&last_good_path(path)) {
            Ok(state) => state,
            Err(err) => {
                tracing::error!("the last good copy is not usable either: {err}");
                None
            }
        };
        Ok((Some(fallback.unwrap_or_default()), Some(damaged)))
    }

    /// Writes the state file atomically: readers and a crash at any moment see either the old
    /// file or the new one, whole. Then refreshes the last good copy beside it, which
    /// `blocker load` falls back to when the file is damaged.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io = |what: &str| Error::io(format!("{what} {}", path.display()));
        fs::create_dir_all(&dir).map_err(io("creating the directory of"))?;
        let file = StateFile {
            version: FORMAT_VERSION,
            bans: to_records(&self.bans),
            allow: to_records(&self.allow),
            rules: self.rules.clone(),
            offenses: self.offenses.clone(),
            issued: self.issued.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|err| Error::State {
            path: path.to_path_buf(),
            message: format!("encoding: {err}"),
        })?;
        text.push(b'\n');
        replace_file(path, &text)?;
        replace_file(&last_good_path(path), &text)?;
        File::open(&dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io("syncing the directory of"))?;
        Ok(())
    }

    /// Bans in force at `now`.
    pub fn listed_bans(&self, now: Timestamp) -> Vec<Listed> {
        self.bans
            .iter()
            .filter(|(_, entry)| !entry.is_expired(now))
            .map(|(net, entry)| Listed::of(net, entry, entry.ban_kind()))
            .collect()
    }

    pub fn listed_allow(&self) -> Vec<Listed> {
        self.allow
            .iter()
            .map(|(net, entry)| Listed::of(net, entry, "allow"))
            .collect()
    }

    /// Drops entries whose expiry has passed.
    pub fn prune_expired(&mut self, now: Timestamp) {
        self.bans.retain(|_, entry| !entry.is_expired(now));
        self.allow.retain(|_, entry| !entry.is_expired(now));
    }
}

/// Where [`State::save`] keeps a copy of the last state it wrote.
pub fn last_good_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".last-good");
    path.with_file_name(name)
}

/// The temporary file `path` is written through. Its name is fixed, not random: writers hold
/// the pin directory lock, and a writer killed midway leaves one file that the next overwrites.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `text` to a temporary file, syncs it and renames it over `path`.
fn replace_file(path: &Path, text: &[u8]) -> Result<()> {
    let io = |what: &str| Error::io(format!("{what} {}", path.display()));
    let temp = temp_path(path);
    let mut file = File::create(&temp).map_err(io("creating a temporary file for"))?;
    file.write_all(text).map_err(io("writing"))?;
    file.sync_all().map_err(io("syncing"))?;
    fs::rename(&temp, path).map_err(io("replacing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Events, RuleSpec};

    fn entry(expires_at: Option<i64>) -> Entry {
        Entry {
            reason: Some("test".into()),
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            expires_at: expires_at.map(|s| Timestamp::from_second(s).unwrap()),
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut state = State::default();
        state
            .bans
            .insert("10.0.0.0/8".parse().unwrap(), entry(None));
        state
            .bans
            .insert("2001:db8::/64".parse().unwrap(), entry(Some(1_800_000_000)));
        state
            .allow
            .insert("192.0.2.1/32".parse().unwrap(), entry(None));
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"addr\": \"10.0.0.0/8\""), "{text}");
        assert!(text.contains("2027-01-15T08:00:00Z"), "{text}");
    }

    #[test]
    fn missing_file_is_empty_and_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        fs::write(&path, "{not json").unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("fix it or replace it with"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");
    }

    #[test]
    fn saving_keeps_a_last_good_copy_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // What a writer killed midway leaves is taken over by the next one.
        fs::write(dir.path().join(".state.json.tmp"), "{killed wri").unwrap();
        let mut state = State::default();
        state
            .bans
            .insert("10.0.0.0/8".parse().unwrap(), entry(None));
        state.save(&path).unwrap();
        assert_eq!(State::load(&last_good_path(&path)).unwrap(), state);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["state.json", "state.json.last-good"]);
    }

    #[test]
    fn a_boot_falls_back_to_the_last_good_copy_and_leaves_the_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = State::default();
        state
            .bans
            .insert("10.0.0.0/8".parse().unwrap(), entry(None));
        state.save(&path).unwrap();
        fs::write(&path, "{not json").unwrap();
        let (read, damaged) = State::read_for_boot(&path).unwrap();
        assert_eq!(read, Some(state));
        assert!(damaged.is_some());
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");
        fs::remove_file(last_good_path(&path)).unwrap();
        let (read, damaged) = State::read_for_boot(&path).unwrap();
        assert_eq!(read, Some(State::default()));
        assert!(damaged.is_some());
    }

    #[test]
    fn rules_saved_by_the_previous_release_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let dns = crate::rules::RuleSpec {
            proto: crate::rules::Proto::Udp,
            ..crate::rules::RuleSpec::named("dns")
        };
        let state = State {
            rules: Some(RuleTable::from_specs(&[RuleSpec::ssh(), dns]).unwrap()),
            ..State::default()
        };
        state.save(&path).unwrap();
        // The previous release stored `events = "new"` on every rule; on UDP it meant every
        // packet, which a UDP rule now says explicitly.
        let text = fs::read_to_string(&path).unwrap();
        let old = text.replace("\"events\": \"all\"", "\"events\": \"new\"");
        assert_ne!(old, text, "the fixture names the events of the UDP rule");
        fs::write(&path, old).unwrap();
        let read = State::read(&path).unwrap().unwrap();
        let rules = read.rules.unwrap();
        assert_eq!(rules.get("dns").unwrap().spec.events(), Events::All);
        assert_eq!(rules.get("ssh").unwrap().spec.events(), Events::New);
    }

    #[test]
    fn rules_are_checked_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut rules = RuleTable::from_specs(&[crate::rules::RuleSpec::ssh()]).unwrap();
        rules.rules[0].slot = 32;
        let state = State {
            rules: Some(rules),
            ..State::default()
        };
        state.save(&path).unwrap();
        let err = State::read(&path).unwrap_err();
        assert!(
            err.to_string().contains("slot 32; slots are 0 to 31"),
            "{err}"
        );
    }

    #[test]
    fn pruning_drops_only_expired_entries() {
        let mut state = State::default();
        state
            .bans
            .insert("10.0.0.1/32".parse().unwrap(), entry(Some(100)));
        state
            .bans
            .insert("10.0.0.2/32".parse().unwrap(), entry(Some(300)));
        state
            .bans
            .insert("10.0.0.3/32".parse().unwrap(), entry(None));
        state.prune_expired(Timestamp::from_second(200).unwrap());
        let left: Vec<String> = state.bans.keys().map(|n| n.to_string()).collect();
        assert_eq!(left, ["10.0.0.2/32", "10.0.0.3/32"]);
    }
}
