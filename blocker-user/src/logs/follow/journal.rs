//! The journal, read through `journalctl --follow --output=json` (the journal's own reader:
//! it knows every file format and rotation). A thread reads its output and queues entries; a
//! `journalctl` that exits is started again after the last cursor seen, so nothing is skipped.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, TryRecvError},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use serde_json::Value;

use super::{Line, Warnings, MAX_LINE};
use crate::logs::positions::Position;

/// Entries queued between the reader thread and the poller.
const QUEUE: usize = 65_536;
/// How long to wait before starting `journalctl` again.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// The source name positions are saved under.
pub const JOURNAL_SOURCE: &str = "journal";

/// One journal entry as a jail sees it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// `HOST IDENT[PID]: MESSAGE`, as syslog would have written it (what filters expect).
    text: String,
    time: Option<Timestamp>,
    cursor: String,
}

/// The journal entries matching a jail's expressions.
pub struct JournalFollower {
    matches: Vec<String>,
    directory: Option<PathBuf>,
    cursor: Option<String>,
    /// Without a cursor, entries from this time on (the follower's start, so a `journalctl`
    /// started again before any entry misses none).
    since: Timestamp,
    running: Option<(Child, Receiver<Entry>)>,
    stopped_at: Option<Instant>,
    warnings: Warnings,
}

impl JournalFollower {
    /// Follows entries matching `matches` (journalctl syntax) in the system journal or in
    /// `directory`, after `saved`'s cursor, or from now on when there is none.
    pub fn new(matches: &[String], directory: Option<PathBuf>, saved: Option<&Position>) -> Self {
        let cursor = match saved {
            Some(Position::Journal { cursor }) => Some(cursor.clone()),
            _ => None,
        };
        Self {
            matches: matches.to_vec(),
            directory,
            cursor,
            since: Timestamp::now(),
            running: None,
            stopped_at: None,
            warnings: Warnings::default(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("journalctl");
        if let Some(directory) = &self.directory {
            command.arg("--directory").arg(directory);
        }
        command.args(["--follow", "--output=json", "--no-pager", "--all"]);
        match &self.cursor {
            Some(cursor) => command.arg(format!("--after-cursor={cursor}")),
            None => command.arg(since_arg(self.since)),
        };
        command.arg("--lines=all").args(&self.matches);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        command
    }

    fn start(&mut self) {
        if self
            .stopped_at
            .is_some_and(|at| at.elapsed() < RESTART_AFTER)
        {
            return;
        }
        let mut child = match self.command().spawn() {
            Ok(child) => child,
            Err(err) => {
                self.stopped_at = Some(Instant::now());
                self.warnings
                    .warn(|| format!("starting journalctl: {err}; trying again"));
                return;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("blocker-journal".into())
            .spawn(move || {
                forward_entries(&mut BufReader::new(stdout), |entry| {
                    sender.send(entry).is_ok()
                })
            });
        if let Err(err) = spawned {
            self.warnings
                .warn(|| format!("starting the journal reader: {err}"));
            let _ = child.kill();
            let _ = child.wait();
            self.stopped_at = Some(Instant::now());
            return;
        }
        self.running = Some((child, receiver));
    }

    /// Hands over the entries that arrived since the last poll.
    pub fn poll(&mut self, sink: &mut dyn FnMut(Line<'_>)) {
        if self.running.is_none() {
            self.start();
        }
        let Some((_, receiver)) = &self.running else {
            return;
        };
        loop {
            match receiver.try_recv() {
                Ok(entry) => {
                    sink(Line {
                        text: &entry.text,
                        time: entry.time,
                    });
                    self.cursor = Some(entry.cursor);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        // journalctl exited: start it again after the last cursor, a little later.
        self.stop();
        self.stopped_at = Some(Instant::now());
        self.warnings
            .warn(|| "journalctl stopped; starting it again".to_string());
    }

    /// The cursor of the last entry handed over.
    pub fn position(&self) -> Option<Position> {
        self.cursor
            .clone()
            .map(|cursor| Position::Journal { cursor })
    }

    fn stop(&mut self) {
        if let Some((mut child, _)) = self.running.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for JournalFollower {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A field's text: the journal sends binary values as arrays of bytes.
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|byte| byte.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}

/// `journalctl`'s `--since` for entries from `at` on, to the microsecond: whole seconds would
/// take in up to a second of entries written before the follower started.
fn since_arg(at: Timestamp) -> String {
    format!("--since=@{}.{:06}", at.as_second(), at.subsec_microsecond())
}

/// Parses each line `reader` gives into an entry for `send`, until the end, a read error or
/// `send` refusing. A line over [`MAX_LINE`] (an entry as large as a journal takes) is read
/// past, never held whole.
fn forward_entries(reader: &mut dyn BufRead, mut send: impl FnMut(Entry) -> bool) {
    let mut line = Vec::new();
    loop {
        line.clear();
        // The limit is the entry's, without its newline.
        match crate::logs::lines::read_bounded_line(reader, &mut line, MAX_LINE + 1) {
            Ok((0, _)) | Err(_) => return,
            Ok((_, false)) => continue,
            Ok((_, true)) => {}
        }
        let json = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some(entry) = parse_entry(json) {
            if !send(entry) {
                return;
            }
        }
    }
}

/// One line of `journalctl --output=json`.
fn parse_entry(line: &[u8]) -> Option<Entry> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let cursor = value.get("__CURSOR")?.as_str()?.to_string();
    let message = value
        .get("MESSAGE")
        .and_then(field_text)
        .unwrap_or_default();
    let field = |name: &str| value.get(name).and_then(field_text);
    let time = field("_SOURCE_REALTIME_TIMESTAMP")
        .or_else(|| field("__REALTIME_TIMESTAMP"))
        .and_then(|micros| micros.parse::<i64>().ok())
        .and_then(|micros| Timestamp::from_microsecond(micros).ok());
    let mut text = String::new();
    if let Some(host) = field("_HOSTNAME") {
        text.push_str(&host);
        text.push(' ');
    }
    if let Some(ident) = field("SYSLOG_IDENTIFIER").or_else(|| field("_COMM")) {
        text.push_str(&ident);
        if let Some(pid) = field("SYSLOG_PID").or_else(|| field("_PID")) {
            text.push_str(&format!("[{pid}]"));
        }
        text.push_str(": ");
    }
    text.push_str(message.trim_end_matches('\n'));
    Some(Entry { text, time, cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_over_the_line_limit_is_read_past_and_the_next_one_forwarded() {
        use std::io::Read as _;
        let next = br#"{"__CURSOR":"c2","MESSAGE":"next"}"#;
        let huge = std::io::repeat(b'x').take(8 * MAX_LINE as u64);
        let mut reader = BufReader::new(huge.chain(&b"\n"[..]).chain(&next[..]).chain(&b"\n"[..]));
        let mut forwarded = Vec::new();
        forward_entries(&mut reader, |entry| {
            forwarded.push(entry.cursor);
            true
        });
        assert_eq!(forwarded, ["c2"]);
    }

    #[test]
    fn entries_read_as_syslog_lines_with_their_time_and_cursor() {
        let line = br#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1800000000000000","_SOURCE_REALTIME_TIMESTAMP":"1799999999000000","_HOSTNAME":"srv","SYSLOG_IDENTIFIER":"sshd","_PID":"77","MESSAGE":"Failed password for root from 192.0.2.1 port 22 ssh2"}"#;
        let entry = parse_entry(line).unwrap();
        assert_eq!(
            entry.text,
            "srv sshd[77]: Failed password for root from 192.0.2.1 port 22 ssh2"
        );
        assert_eq!(entry.time.unwrap().as_second(), 1_799_999_999);
        assert_eq!(entry.cursor, "s=1;i=2");
        // A binary message is an array of bytes; no identifier, no prefix.
        let binary = br#"{"__CURSOR":"c","MESSAGE":[104,105,255]}"#;
        let entry = parse_entry(binary).unwrap();
        assert_eq!(entry.text, "hi\u{fffd}");
        assert_eq!(entry.time, None);
        assert!(parse_entry(b"not json").is_none());
        assert!(parse_entry(br#"{"MESSAGE":"no cursor"}"#).is_none());
    }

    #[test]
    fn the_command_resumes_after_the_cursor_or_starts_now() {
        let saved = Position::Journal {
            cursor: "s=abc".into(),
        };
        let follower = JournalFollower::new(
            &["_SYSTEMD_UNIT=ssh.service".into()],
            Some("/tmp/j".into()),
            Some(&saved),
        );
        let command = follower.command();
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
        assert!(args.contains(&"--after-cursor=s=abc".into()), "{args:?}");
        assert!(args.contains(&"/tmp/j".into()));
        assert_eq!(args.last().unwrap(), "_SYSTEMD_UNIT=ssh.service");
        let fresh = JournalFollower::new(&[], None, None);
        let args: Vec<_> = fresh
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&since_arg(fresh.since)), "{args:?}");
    }

    #[test]
    fn a_fresh_follower_starts_at_the_microsecond_not_the_second() {
        let at = Timestamp::from_microsecond(1_700_000_000_250_000).unwrap();
        assert_eq!(since_arg(at), "--since=@1700000000.250000");
    }
}
