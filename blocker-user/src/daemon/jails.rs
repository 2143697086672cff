//! Log jails in the daemon: one thread per jail follows its files and journal every quarter
//! second, hands each line to its filter and counter (or to the bunch tracker), bans what they
//! decide through the store in one commit per poll, and saves where it stopped once a second
//! and at shutdown, after the bans of the lines read are committed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    lockout::Guard,
    logs::{
        access::{parse_access_line, BunchTracker},
        config::{JailConfig, JailKind},
        filter::{Filter, LineVerdict},
        follow::{FileFollower, FileStatus, JournalFollower, Line, JOURNAL_SOURCE},
        jail::{summary, Counted, Jail, JailBan, JailRules},
        positions::{Position, Positions},
    },
    offense::Escalation,
    pins::PinDir,
    state::{Entry, Origin},
    store::Store,
    Error, Result,
};

/// How often followers are polled.
const POLL: Duration = Duration::from_millis(250);
/// How often positions are saved (and at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Decisions kept for the next poll when the store cannot be written, at most.
const MAX_PENDING: usize = 10_000;

/// What `GET /v1/jails` and `blocker status` show of one jail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JailStatus {
    pub name: String,
    pub kind: String,
    pub files: Vec<FileStatus>,
    pub journal_cursor: Option<String>,
    /// Sources with failures in the current window, and those failures.
    pub sources_in_window: usize,
    pub failures_in_window: usize,
    pub lines: u64,
    pub matches: u64,
    pub bans: u64,
}

/// The running jails.
pub struct Jails {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    status: Arc<Mutex<Vec<JailStatus>>>,
}

/// What a jail looks for.
enum Detector {
    Failures {
        filter: Box<Filter>,
        jail: Jail,
    },
    Bunches {
        tracker: BunchTracker,
        rules: JailRules,
        window: SignedDuration,
    },
}

impl Detector {
    fn new(config: &JailConfig, full: &Config) -> Result<Self, String> {
        let rules = config.rules(&full.offenses);
        Ok(match config.kind {
            JailKind::Filter => {
                let name = config.filter.as_deref().unwrap_or_default();
                Detector::Failures {
                    filter: Box::new(Filter::load(name).map_err(|err| err.to_string())?),
                    jail: Jail::new(rules),
                }
            }
            JailKind::Bunch => Detector::Bunches {
                tracker: BunchTracker::new(config.bunch_settings())
                    .map_err(|err| err.to_string())?
                    .bounded(crate::logs::jail::MAX_SOURCES),
                rules,
                window: SignedDuration::try_from(config.window).unwrap_or(SignedDuration::MAX),
            },
        })
    }

    /// One line: a ban decision, if it completes one; `matched` counts failures and hits.
    fn line(&mut self, line: Line<'_>, now: Timestamp, matched: &mut u64) -> Option<JailBan> {
        match self {
            Detector::Failures { filter, jail } => match filter.check(line.text) {
                LineVerdict::Failure { addr, time } => {
                    *matched += 1;
                    match jail.failure(addr, time.or(line.time), line.text, now) {
                        Counted::Ban(ban) => Some(ban),
                        _ => None,
                    }
                }
                LineVerdict::Ignored | LineVerdict::NoMatch => None,
            },
            Detector::Bunches {
                tracker,
                rules,
                window,
            } => {
                let hit = parse_access_line(line.text)?;
                if !hit.page || rules.ignores(hit.addr) {
                    return None;
                }
                *matched += 1;
                // Requests older than the window at startup never flag.
                if now.checked_sub(*window).is_ok_and(|start| hit.time < start) {
                    return None;
                }
                // Counted per prefix, as it is banned: a client taking a new address of its
                // /64 for each request is one source.
                let prefix = rules.prefix_of(hit.addr);
                let flag = tracker.hit(prefix.addr(), hit.time)?;
                Some(JailBan {
                    prefix: rules.prefix_of(flag.addr),
                    reason: format!(
                        "jail {}: {} (last: {})",
                        rules.name,
                        flag.reason,
                        summary(line.text)
                    ),
                })
            }
        }
    }

    fn window(&mut self, now: Timestamp) -> (usize, usize) {
        match self {
            Detector::Failures { jail, .. } => {
                jail.prune(now);
                jail.window(now)
            }
            Detector::Bunches { .. } => (0, 0),
        }
    }
}

/// One jail's thread.
struct Runner {
    name: String,
    pins: PinDir,
    state_path: PathBuf,
    escalation: Escalation,
    detector: Detector,
    files: Option<FileFollower>,
    journal: Option<JournalFollower>,
    positions: Option<Positions>,
    pending: Vec<JailBan>,
    status: JailStatus,
}

impl Runner {
    fn new(
        config: &JailConfig,
        full: &Config,
        pins: &PinDir,
        state_path: &Path,
    ) -> Result<Self, String> {
        let detector = Detector::new(config, full)?;
        let positions = Positions::open(state_path)
            .map_err(|err| warn!("jail {}: positions will not be kept: {err}", config.name))
            .ok();
        let saved = positions
            .as_ref()
            .map(|positions| positions.load(&config.name))
            .transpose()
            .map_err(|err| err.to_string())?
            .unwrap_or_default();
        let journal = (!config.journal.is_empty()).then(|| {
            JournalFollower::new(
                &config.journal,
                config.journal_directory.clone(),
                saved.get(JOURNAL_SOURCE),
            )
        });
        let files = (!config.logpath.is_empty()).then(|| FileFollower::new(&config.logpath, saved));
        Ok(Self {
            name: config.name.clone(),
            pins: pins.clone(),
            state_path: state_path.to_path_buf(),
            escalation: config.escalation(&full.offenses),
            detector,
            files,
            journal,
            positions,
            pending: Vec::new(),
            status: JailStatus {
                name: config.name.clone(),
                kind: match config.kind {
                    JailKind::Filter => {
                        format!("filter {}", config.filter.as_deref().unwrap_or(""))
                    }
                    JailKind::Bunch => "bunch".into(),
                },
                ..JailStatus::default()
            },
        })
    }

    /// Reads what arrived, decides, and bans.
    fn poll(&mut self) {
        let now = Timestamp::now();
        let (detector, pending) = (&mut self.detector, &mut self.pending);
        let (mut lines, mut matches) = (0u64, 0u64);
        let mut sink = |line: Line<'_>| {
            lines += 1;
            if let Some(ban) = detector.line(line, now, &mut matches) {
                pending.push(ban);
            }
        };
        if let Some(files) = &mut self.files {
            files.poll(&mut sink);
        }
        if let Some(journal) = &mut self.journal {
            journal.poll(&mut sink);
        }
        self.status.lines += lines;
        self.status.matches += matches;
        if !self.pending.is_empty() {
            match issue(
                &self.pins,
                &self.state_path,
                &self.escalation,
                &self.pending,
            ) {
                Ok(banned) => {
                    self.status.bans += banned as u64;
                    self.pending.clear();
                }
                Err(err) => {
                    error!("jail {}: banning: {err}; trying again", self.name);
                    let excess = self.pending.len().saturating_sub(MAX_PENDING);
                    self.pending.drain(..excess);
                }
            }
        }
        let (sources, failures) = self.detector.window(now);
        self.status.sources_in_window = sources;
        self.status.failures_in_window = failures;
        if let Some(files) = &self.files {
            self.status.files = files.status();
        }
        if let Some(journal) = &self.journal {
            self.status.journal_cursor = journal.position().map(|position| match position {
                Position::Journal { cursor } => cursor,
                Position::File { .. } => String::new(),
            });
        }
    }

    /// Saves where each source stopped; bans of the lines before are committed (or pending).
    fn save(&mut self) {
        let Some(positions) = &self.positions else {
            return;
        };
        let mut all = self
            .files
            .as_ref()
            .map(FileFollower::positions)
            .unwrap_or_default();
        if let Some(position) = self.journal.as_ref().and_then(JournalFollower::position) {
            all.push((JOURNAL_SOURCE.to_string(), position));
        }
        let saved = positions.save(
            &self.name,
            all.iter()
                .map(|(source, position)| (source.as_str(), position)),
        );
        if let Err(err) = saved {
            warn!("jail {}: saving positions: {err}", self.name);
        }
    }

    fn run(mut self, stop: &AtomicBool, status: &Mutex<Vec<JailStatus>>, index: usize) {
        let mut saved_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            self.poll();
            if saved_at.elapsed() >= SAVE_EVERY {
                self.save();
                saved_at = Instant::now();
            }
            if let Some(slot) = status.lock().ok().as_mut().and_then(|s| s.get_mut(index)) {
                slot.clone_from(&self.status);
            }
            std::thread::sleep(POLL.saturating_sub(started.elapsed()));
        }
        self.poll();
        self.save();
    }
}

/// Bans the decided prefixes in one store session, each for its escalated length, but those
/// the lock-out guard refuses; returns how many it banned.
fn issue(
    pins: &PinDir,
    state_path: &Path,
    escalation: &Escalation,
    bans: &[JailBan],
) -> Result<usize> {
    let touched: Vec<IpNet> = bans.iter().map(|ban| ban.prefix).collect();
    let mut store = Store::open_scoped(pins, state_path, &touched)?;
    store.origin = Origin::local("log");
    let guard = Guard::recent()?;
    let bans = guarded(bans, &guard, &store.state.allow);
    let now = store.now.wall;
    for ban in &bans {
        let duration = store
            .state
            .offenses
            .next_ban_length(ban.prefix, escalation, now);
        let expires_at = Some(crate::clock::temporary_ban_end(now, duration));
        store.ban_at_least(ban.prefix, expires_at, &ban.reason);
        let until = expires_at.map_or("further notice".into(), |t| format!("{t:.0}"));
        info!("banned {} until {until}: {}", ban.prefix, ban.reason);
    }
    store.count_issued("log", bans.len() as u64);
    store.commit(|| {})?;
    Ok(bans.len())
}

/// The bans `guard` lets through, with the allowlist `allow`, as for offenses and `blocker
/// ban`: anyone may write a log line (`logger -t sshd`), so no jail may ban this host, the
/// operator's SSH source or a huge range. A refused ban is a warning; the others go ahead.
fn guarded<'a>(
    bans: &'a [JailBan],
    guard: &Guard,
    allow: &BTreeMap<IpNet, Entry>,
) -> Vec<&'a JailBan> {
    bans.iter()
        .filter(|ban| match guard.check(&ban.prefix, allow) {
            Ok(()) => true,
            Err(err) => {
                // The error's own advice (--force) is for the command line.
                let why = match err {
                    Error::LockOut { why, .. } => why,
                    other => other.to_string(),
                };
                warn!("not banning {}: {why} ({})", ban.prefix, ban.reason);
                false
            }
        })
        .collect()
}

impl Jails {
    /// Starts a thread for each jail of `config`; a jail that cannot start is logged and
    /// left out (the config was checked at load, so this is rare: a filter file gone since).
    pub fn start(pins: &PinDir, state_path: &Path, config: &Config) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for jail in &config.jails {
            let runner = match Runner::new(jail, config, pins, state_path) {
                Ok(runner) => runner,
                Err(err) => {
                    error!("jail {} not started: {err}", jail.name);
                    continue;
                }
            };
            let index = match status.lock() {
                Ok(mut all) => {
                    all.push(runner.status.clone());
                    all.len() - 1
                }
                Err(_) => continue,
            };
            let (stop, status) = (stop.clone(), status.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("jail-{}", jail.name))
                .spawn(move || runner.run(&stop, &status, index));
            match spawned {
                Ok(thread) => {
                    info!("jail {} started", jail.name);
                    threads.push(thread);
                }
                Err(err) => error!("jail {} not started: {err}", jail.name),
            }
        }
        Self {
            stop,
            threads,
            status,
        }
    }

    pub fn status(&self) -> Vec<JailStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops every jail; each reads what is left, bans and saves its positions first.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(jail: &str) -> Detector {
        let config = Config::parse(&format!("[[jails]]\n{jail}")).unwrap();
        Detector::new(&config.jails[0], &config).unwrap()
    }

    fn feed(detector: &mut Detector, text: &str, now: Timestamp) -> (Option<JailBan>, u64) {
        let mut matched = 0;
        let ban = detector.line(Line { text, time: None }, now, &mut matched);
        (ban, matched)
    }

    #[test]
    fn filter_jails_ban_at_maxretry_and_skip_ignoreip() {
        let mut sshd = detector(
            "name = \"sshd\"\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmaxretry = 3\n\
             ignoreip = [\"192.0.2.0/24\"]\n",
        );
        let now = Timestamp::now();
        let line =
            |addr: &str| format!("srv sshd[1]: Failed password for root from {addr} port 22 ssh2");
        assert_eq!(
            feed(&mut sshd, "srv cron[2]: nothing to see", now),
            (None, 0)
        );
        for _ in 0..5 {
            let (ban, matched) = feed(&mut sshd, &line("192.0.2.9"), now);
            assert_eq!(
                (ban, matched),
                (None, 1),
                "ignoreip is matched, never banned"
            );
        }
        assert_eq!(feed(&mut sshd, &line("203.0.113.5"), now).0, None);
        assert_eq!(feed(&mut sshd, &line("203.0.113.5"), now).0, None);
        let ban = feed(&mut sshd, &line("203.0.113.5"), now).0.expect("a ban");
        assert_eq!(ban.prefix.to_string(), "203.0.113.5/32");
        assert!(
            ban.reason
                .starts_with("jail sshd: 3 failures in 10m (last: srv sshd[1]: Failed"),
            "{}",
            ban.reason
        );
        assert_eq!(sshd.window(now), (0, 0), "the ban consumed the count");
    }

    /// Anyone may write a log line (`logger -t sshd`), so a jail must not ban what `blocker
    /// ban` refuses to: this host, the operator's SSH source, a huge range.
    #[test]
    fn jail_bans_that_would_lock_the_operator_out_are_skipped() {
        let guard = Guard {
            ssh: crate::lockout::SshSession::parse(Some("198.51.100.7 50022 192.0.2.1 22"), None),
            host_addrs: vec!["127.0.0.1".parse().unwrap(), "192.0.2.1".parse().unwrap()],
            servers: Vec::new(),
        };
        let ban = |prefix: &str| JailBan {
            prefix: prefix.parse().unwrap(),
            reason: "jail sshd: 5 failures in 10m".into(),
        };
        let bans = [
            ban("127.0.0.1/32"),
            ban("192.0.2.0/24"),
            ban("198.51.100.7/32"),
            ban("0.0.0.0/0"),
            ban("203.0.113.5/32"),
        ];
        let issued = |allow: &BTreeMap<IpNet, Entry>| -> Vec<String> {
            guarded(&bans, &guard, allow)
                .iter()
                .map(|ban| ban.prefix.to_string())
                .collect()
        };
        assert_eq!(issued(&BTreeMap::new()), ["203.0.113.5/32"]);
        // As for offenses: an allowlisted address is safe from any ban (the allowlist wins in
        // the kernel), so it does not hold back the ban of its range.
        let entry = Entry {
            reason: None,
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
        };
        let allow = BTreeMap::from([("192.0.2.1/32".parse().unwrap(), entry)]);
        assert_eq!(issued(&allow), ["192.0.2.0/24", "203.0.113.5/32"]);
    }

    #[test]
    fn bunch_jails_flag_a_bunch_of_page_requests_and_skip_old_ones() {
        let mut web = detector(
            "name = \"web\"\nkind = \"bunch\"\nlogpath = [\"/l\"]\nbunch_size = 3\nmin_bunch = 2\n",
        );
        let request = |second: i64| {
            let time = Timestamp::from_second(second).unwrap();
            format!(
                "198.51.100.7 - - [{}] \"GET /page HTTP/1.1\" 200 5",
                time.strftime("%d/%b/%Y:%H:%M:%S +0000")
            )
        };
        let now = Timestamp::now().as_second();
        // A day and a half ago: outside the window, never flags.
        for offset in 0..5 {
            assert_eq!(
                feed(&mut web, &request(now - 129_600 + offset), Timestamp::now()).0,
                None
            );
        }
        assert_eq!(feed(&mut web, &request(now - 2), Timestamp::now()).0, None);
        assert_eq!(feed(&mut web, &request(now - 1), Timestamp::now()).0, None);
        let ban = feed(&mut web, &request(now), Timestamp::now())
            .0
            .expect("a flag");
        assert_eq!(ban.prefix.to_string(), "198.51.100.7/32");
        assert!(ban.reason.starts_with("jail web: "), "{}", ban.reason);
    }

    /// Sources are counted per `mask6` prefix, as they are banned: an IPv6 client cannot
    /// escape by taking a new address of its /64 for each request.
    #[test]
    fn bunch_jails_count_an_ipv6_client_per_64() {
        let mut web = detector(
            "name = \"web\"\nkind = \"bunch\"\nlogpath = [\"/l\"]\nbunch_size = 3\nmin_bunch = 2\n",
        );
        let now = Timestamp::now().as_second();
        let request = |host: u16, second: i64| {
            let time = Timestamp::from_second(second).unwrap();
            format!(
                "2001:db8:7::{host:x} - - [{}] \"GET /page HTTP/1.1\" 200 5",
                time.strftime("%d/%b/%Y:%H:%M:%S +0000")
            )
        };
        assert_eq!(
            feed(&mut web, &request(1, now - 2), Timestamp::now()).0,
            None
        );
        assert_eq!(
            feed(&mut web, &request(2, now - 1), Timestamp::now()).0,
            None
        );
        let ban = feed(&mut web, &request(3, now), Timestamp::now())
            .0
            .expect("a flag");
        assert_eq!(ban.prefix.to_string(), "2001:db8:7::/64");
    }
}
