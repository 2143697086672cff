//! Differential test of the XDP program against the reference model: seeded random
//! configurations and frames go through the real program (BPF_PROG_TEST_RUN) and through
//! [`crate::model`]; every verdict, every counter, every rule's stats and every blacklist
//! entry must agree. The first divergence stops the run with a readable description.

pub mod generate;
pub mod kernel;
pub mod regressions;

use std::{
    collections::VecDeque,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use blocker_common::{next_lists_generation, Action, Reason, RuleKind, Settings, MAX_RULES};

use crate::model::{self, addr_text, parse::parse, reply, Model, Verdict};
use generate::{Config, Pool, Rng};
use kernel::Kernel;

/// XDP return codes.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The environment variable that replays a run: `BLOCKER_FUZZ_SEED=S`.
pub const SEED_VAR: &str = "BLOCKER_FUZZ_SEED";

pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// Compare every counter, rule stats and the blacklist every this many frames.
    pub check_every: u64,
    /// Report each divergence, take the program's state over into the model and go on,
    /// instead of stopping at the first one.
    pub keep_going: bool,
}

pub struct Summary {
    pub frames: u64,
    /// With `keep_going`: the divergences, one per kind (the first of each).
    pub divergences: Vec<String>,
    pub elapsed: Duration,
    /// Frames per reason, to show what the run exercised.
    pub reasons: Vec<(Reason, u64)>,
    pub configurations: u64,
}

impl Summary {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames, {} configurations, {} in {:.1} s ({:.0} frames/s)\n  by reason:",
            self.frames,
            self.configurations,
            match self.divergences.len() {
                0 => "no divergence".to_string(),
                n => format!("{n} kinds of divergence"),
            },
            self.elapsed.as_secs_f64(),
            self.frames_per_second()
        )?;
        for (reason, count) in &self.reasons {
            write!(f, " {} {count},", reason.name())?;
        }
        Ok(())
    }
}

/// A seed from the clock, for runs that explore.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ u64::from(std::process::id())).next_u64()
}

/// Per-CPU state (counters, the reject token bucket) is only comparable when every run
/// happens on one CPU: BPF_PROG_TEST_RUN runs the program on the calling thread's CPU.
/// Returns that CPU.
fn pin_to_one_cpu() -> Result<usize> {
    // SAFETY: no preconditions.
    let cpu = unsafe { nix::libc::sched_getcpu() }.max(0) as usize;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("pinning the test thread to one CPU")?;
    Ok(cpu)
}

/// One frame of the recent past, for the divergence report.
struct Record {
    index: u64,
    clock_ms: u64,
    frame: Vec<u8>,
    reason: Reason,
}

const RECENT: usize = 256;

/// The program and the model side by side, configured alike.
pub struct Harness {
    pub kernel: Kernel,
    pub model: Model,
    config: Config,
    recent: VecDeque<Record>,
    frames: u64,
    out: Vec<u8>,
    cpu: usize,
}

fn action_code(action: Action) -> u32 {
    match action {
        Action::Pass => XDP_PASS,
        Action::Drop => XDP_DROP,
        Action::Tx => XDP_TX,
    }
}

fn action_name(code: u32) -> String {
    match code {
        XDP_DROP => "drop".into(),
        XDP_PASS => "pass".into(),
        XDP_TX => "tx".into(),
        other => format!("action {other}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    let text: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0))
        .collect()
}

impl Harness {
    pub fn new(clock_ms: u64) -> Result<Self> {
        let cpu = pin_to_one_cpu()?;
        let mut harness = Self {
            cpu,
            kernel: Kernel::load()?,
            model: Model::default(),
            config: Config {
                settings: Settings::default(),
                rules: Default::default(),
                allow: Default::default(),
                bans: Default::default(),
            },
            recent: VecDeque::with_capacity(RECENT),
            frames: 0,
            out: vec![0; 4096],
        };
        harness.set_clock(clock_ms)?;
        Ok(harness)
    }

    pub fn clock_ms(&self) -> u64 {
        self.model.settings.clock_override_ms
    }

    pub fn set_clock(&mut self, clock_ms: u64) -> Result<()> {
        if clock_ms < self.model.settings.clock_override_ms {
            // Back in time an expired ban is in force again: as after a new ban, no
            // blacklist stamp may skip the ban check.
            self.model.settings.lists_generation =
                next_lists_generation(self.model.settings.lists_generation);
        }
        self.model.settings.clock_override_ms = clock_ms;
        self.kernel.set_settings(&self.model.settings)
    }

    /// Writes `config` into the program's maps and the model, changing only what differs.
    pub fn configure(&mut self, mut config: Config) -> Result<()> {
        for slot in 0..MAX_RULES {
            if config.rules[slot] != self.config.rules[slot] {
                self.kernel.set_rule(slot, &config.rules[slot])?;
            }
        }
        for prefix in self.config.allow.entries.keys() {
            if !config.allow.entries.contains_key(prefix) {
                self.kernel.set_allow(prefix, false)?;
            }
        }
        for prefix in config.allow.entries.keys() {
            self.kernel.set_allow(prefix, true)?;
        }
        for prefix in self.config.bans.entries.keys() {
            if !config.bans.entries.contains_key(prefix) {
                self.kernel.set_ban(prefix, None)?;
            }
        }
        for (prefix, ban) in &config.bans.entries {
            self.kernel.set_ban(prefix, Some(ban))?;
        }
        config.settings.clock_override_ms = self.clock_ms();
        // The lists were written: as blocker's writers do, a new generation.
        config.settings.lists_generation =
            next_lists_generation(self.model.settings.lists_generation);
        self.kernel.set_settings(&config.settings)?;
        self.model.settings = config.settings;
        self.model.rules = config.rules;
        self.model.allow = config.allow.clone();
        self.model.bans = config.bans.clone();
        self.config = config;
        Ok(())
    }

    pub fn clear_dynamic(&mut self) -> Result<()> {
        self.kernel.clear_dynamic()?;
        self.model.blacklist.clear();
        self.model.history.clear();
        // As blocker's removers do: no CPU may recall a hit of a removed entry.
        self.model.settings.lists_generation =
            next_lists_generation(self.model.settings.lists_generation);
        self.kernel.set_settings(&self.model.settings)
    }

    /// One frame through both; a description of the divergence if they disagree.
    pub fn frame(&mut self, frame: &[u8]) -> Result<Verdict> {
        self.frames += 1;
        let expected = self.model.run(frame);
        let (action, out) = self.kernel.run(frame, &mut self.out)?;
        let out = out.to_vec();
        let want = action_code(expected.reason.action());
        let mut problem = None;
        if action != want {
            problem = Some(format!(
                "verdict: program {}, model {} ({})",
                action_name(action),
                action_name(want),
                expected.reason.name()
            ));
        } else {
            let counted = self.kernel.packets(expected.reason)?;
            let modelled = self.model.counters[expected.reason as usize].packets;
            if counted != modelled {
                let got = self.counted_reason()?;
                problem = Some(format!(
                    "reason: program counted {}, model {} (both {})",
                    got,
                    expected.reason.name(),
                    action_name(action)
                ));
            } else if let Some(ip) = &expected.answered {
                if let Err(error) = reply::check(frame, ip, &out) {
                    problem = Some(format!("reject answer: {error}\nanswer: {}", hex(&out)));
                }
            }
        }
        if let Some(problem) = problem {
            bail!("{}", self.describe(frame, &expected, &problem));
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Record {
            index: self.frames,
            clock_ms: self.clock_ms(),
            frame: frame.to_vec(),
            reason: expected.reason,
        });
        Ok(expected)
    }

    /// The reasons whose counters differ from the model's, after a frame went elsewhere.
    fn counted_reason(&self) -> Result<String> {
        let counters = self.kernel.counters()?;
        let differing: Vec<String> = Reason::ALL
            .iter()
            .zip(&counters)
            .filter(|(reason, counter)| {
                counter.packets != self.model.counters[**reason as usize].packets
            })
            .map(|(reason, counter)| {
                format!(
                    "{} ({} vs model {})",
                    reason.name(),
                    counter.packets,
                    self.model.counters[*reason as usize].packets
                )
            })
            .collect();
        Ok(differing.join(", "))
    }

    /// Takes the program's state over into the model, after a divergence, so a run can go
    /// on looking for others.
    pub fn resync(&mut self) -> Result<()> {
        for (index, counter) in self.kernel.counters()?.into_iter().enumerate() {
            self.model.counters[index] = counter;
        }
        for (slot, stats) in self.kernel.rule_stats()?.into_iter().enumerate() {
            self.model.rule_stats[slot] = stats;
        }
        self.model.blacklist = self.kernel.blacklist_entries()?.into_iter().collect();
        self.model.history = self.kernel.histories()?;
        self.model.bucket = self.kernel.reject_tokens(self.cpu)?;
        Ok(())
    }

    /// Compares every counter, every rule's stats, the reject bucket, the whole blacklist and
    /// every history.
    pub fn check_state(&self) -> Result<()> {
        let mut problems = Vec::new();
        for (reason, counter) in Reason::ALL.iter().zip(self.kernel.counters()?) {
            let modelled = self.model.counters[*reason as usize];
            if counter != modelled {
                problems.push(format!(
                    "counter {}: program {counter:?}, model {modelled:?}",
                    reason.name()
                ));
            }
        }
        for (slot, stats) in self.kernel.rule_stats()?.iter().enumerate() {
            if *stats != self.model.rule_stats[slot] {
                problems.push(format!(
                    "rule {slot} stats: program {stats:?}, model {:?}",
                    self.model.rule_stats[slot]
                ));
            }
        }
        let bucket = self.kernel.reject_tokens(self.cpu)?;
        if bucket != self.model.bucket {
            problems.push(format!(
                "reject bucket: program {bucket:?}, model {:?}",
                self.model.bucket
            ));
        }
        let kernel_entries = self.kernel.blacklist_entries()?;
        for (key, entry) in &kernel_entries {
            match self.model.blacklist.get(key) {
                Some(modelled) if modelled == entry => {}
                modelled => problems.push(format!(
                    "blacklist {}/{}: program {entry:?}, model {modelled:?}",
                    addr_text(key.family, key.addr),
                    key.prefix_len
                )),
            }
        }
        if kernel_entries.len() != self.model.blacklist.len() {
            for (key, entry) in &self.model.blacklist {
                if !kernel_entries.iter().any(|(k, _)| k == key) {
                    problems.push(format!(
                        "blacklist {}/{}: missing from the program, model {entry:?}",
                        addr_text(key.family, key.addr),
                        key.prefix_len
                    ));
                }
            }
        }
        let histories = self.kernel.histories()?.views();
        let modelled_histories = self.model.history.views();
        for ((short, key), view) in &histories {
            let modelled = modelled_histories.get(&(*short, *key));
            if modelled != Some(view) {
                problems.push(format!(
                    "history{} slot {} gen {} {}/{}: program {:?}, model {:?}",
                    if *short { "" } else { " (long)" },
                    key.slot,
                    key.generation,
                    addr_text(key.source.family, key.source.addr),
                    key.source.prefix_len,
                    view,
                    modelled
                ));
            }
        }
        if histories.len() != modelled_histories.len() {
            problems.push(format!(
                "histories: program {}, model {}",
                histories.len(),
                modelled_histories.len()
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let last = self.recent.back().map_or(String::new(), |record| {
            format!(
                "last frame #{} -> {}: {}\n",
                record.index,
                record.reason.name(),
                hex(&record.frame)
            )
        });
        bail!(
            "state diverged after frame {} (within the last checks' frames; replay with \
             --check-every 1 to find the frame)\n{}\n{last}{}",
            self.frames,
            problems.join("\n"),
            self.describe_config()
        )
    }

    fn describe_config(&self) -> String {
        let mut text = String::new();
        let s = &self.model.settings;
        let _ = writeln!(
            text,
            "config: clock {} ms, rule_slots {}, lists {:#x}, rule_protos {:#x}, masks v4 {:?} v6 {:?}, rejects {}/s burst {}",
            s.clock_override_ms, s.rule_slots, s.lists, s.rule_protos, s.masks_v4, s.masks_v6,
            s.reject_per_s, s.reject_burst
        );
        for prefix in self.model.allow.entries.keys() {
            let _ = writeln!(text, "  allow {prefix}");
        }
        for (prefix, ban) in &self.model.bans.entries {
            let _ = writeln!(text, "  ban {prefix} expires_at_s {}", ban.expires_at_s);
        }
        for (slot, rule) in self.model.rules.iter().enumerate() {
            if rule.kind != RuleKind::Empty as u8 {
                let _ = writeln!(text, "  rule {slot}: {rule:?}");
            }
        }
        text
    }

    fn describe(&self, frame: &[u8], expected: &Verdict, problem: &str) -> String {
        let mut text = format!("DIVERGENCE at frame {}: {problem}\n", self.frames);
        let _ = writeln!(text, "frame ({} bytes): {}", frame.len(), hex(frame));
        let parsed = parse(frame);
        let _ = writeln!(text, "model parse: {parsed:?}");
        let _ = writeln!(text, "model verdict: {expected:?}");
        if let Ok(bucket) = self.kernel.reject_tokens(self.cpu) {
            let _ = writeln!(
                text,
                "reject bucket after the frame: program {bucket:?}, model {:?}",
                self.model.bucket
            );
        }
        text.push_str(&self.describe_config());
        if let Ok(ip) = parsed {
            let related = |key: &blocker_common::SourceKey| {
                model::Prefix::new(key.family, key.addr, key.prefix_len)
                    .contains(ip.family, ip.source)
                    && key.family == ip.family
            };
            for (key, entry) in self.model.blacklist.iter().filter(|(k, _)| related(k)) {
                let _ = writeln!(
                    text,
                    "  model blacklist {}/{}: {entry:?}",
                    addr_text(key.family, key.addr),
                    key.prefix_len
                );
            }
            for ((_, key), (ring, recorded, bunch_len, ttl, last_ms)) in self
                .model
                .history
                .views()
                .into_iter()
                .filter(|((_, k), _)| related(&k.source))
            {
                let _ = writeln!(
                    text,
                    "  model history slot {} gen {} {}/{}: recorded {recorded} ttl {ttl} bunch {bunch_len} last {last_ms} ring newest first {ring:?}",
                    key.slot,
                    key.generation,
                    addr_text(key.source.family, key.source.addr),
                    key.source.prefix_len,
                );
            }
            let _ = writeln!(text, "earlier frames from the same source:");
            for record in self
                .recent
                .iter()
                .filter(|r| {
                    parse(&r.frame)
                        .is_ok_and(|other| other.family == ip.family && other.source == ip.source)
                })
                .rev()
                .take(12)
            {
                let _ = writeln!(
                    text,
                    "  #{} at {} ms -> {}: {}",
                    record.index,
                    record.clock_ms,
                    record.reason.name(),
                    hex(&record.frame)
                );
            }
        }
        text
    }
}

/// What kind of divergence a report describes: its problem lines without numbers, and what
/// the model parsed, so one kind is reported once however often it recurs.
fn divergence_kind(report: &str) -> String {
    let without_digits = |line: &str| -> String {
        line.split(": ")
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(": ")
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect()
    };
    let mut kind: Vec<String> = Vec::new();
    for line in report.lines() {
        if line.starts_with("DIVERGENCE") {
            kind.push(without_digits(line));
        } else if let Some(parsed) = line.strip_prefix("model parse: ") {
            // The parse result's class: Err(..) or the L4 variant.
            let class = parsed
                .split("l4: ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .unwrap_or(parsed);
            kind.push(class.to_string());
        } else if line.starts_with("counter ")
            || line.starts_with("reject bucket:")
            || line.starts_with("histor")
            || line.starts_with("rule ")
            || line.starts_with("blacklist ")
        {
            let subject = line.split(':').next().unwrap_or_default();
            let subject: String = subject.chars().filter(|c| !c.is_ascii_digit()).collect();
            kind.push(subject);
        }
    }
    kind.dedup();
    kind.join(" / ")
}

/// Whether a frame's divergence needs the run's history: the same frame, configuration and
/// clock on a freshly loaded program and an empty model. Said first in the report, since a
/// divergence that reproduces alone is already minimal.
fn reproduces_alone(harness: &Harness, frame: &[u8]) -> String {
    let outcome = Harness::new(harness.clock_ms())
        .and_then(|mut fresh| {
            fresh.configure(harness.config.clone())?;
            fresh.frame(frame)
        })
        .map(drop);
    match outcome {
        Err(error) if format!("{error:#}").contains("DIVERGENCE") => {
            "reproduces alone: this frame, this configuration, a fresh program".into()
        }
        Err(error) => format!("could not check alone: {error:#}"),
        Ok(()) => "needs the earlier frames: alone, this frame agrees".into(),
    }
}

/// A whole seeded run.
pub fn run(options: &Options) -> Result<Summary> {
    let mut rng = Rng::new(options.seed);
    let start_clock = rng.range(1 << 20, 1 << 42);
    let mut harness = Harness::new(start_clock)?;
    let mut pool = Pool::new(&mut rng);
    let empty = harness.config.clone();
    harness.configure(generate::config(&mut rng, &pool, &empty, start_clock))?;
    let mut configurations = 1;
    let mut next_config = rng.range(200, 5_000);
    let mut next_reset = 20_000;
    let started = Instant::now();
    let check_every = options.check_every.max(1);
    let mut divergences: Vec<String> = Vec::new();
    let mut kinds: Vec<String> = Vec::new();
    let replay = format!("seed {} (replay: --seed {0})", options.seed);
    // Stops at a divergence, or with `keep_going` prints the first of each kind and goes on.
    let mut diverged =
        |harness: &mut Harness, error: anyhow::Error, frame: Option<&[u8]>| -> Result<()> {
            let kind = divergence_kind(&format!("{error:#}"));
            let new_kind = !kinds.contains(&kind);
            // Checked once per kind: it loads the program again.
            let error = match frame {
                Some(frame) if new_kind || !options.keep_going => {
                    error.context(reproduces_alone(harness, frame))
                }
                _ => error,
            };
            if !options.keep_going {
                return Err(error.context(replay.clone()));
            }
            let text = format!("{error:#}");
            if new_kind {
                eprintln!("{text}\n");
                kinds.push(kind);
                divergences.push(text);
            }
            harness.resync()
        };
    for index in 1..=options.frames {
        if index == next_reset {
            if let Err(error) = harness.check_state() {
                diverged(&mut harness, error, None)?;
            }
            harness.clear_dynamic()?;
            pool = Pool::new(&mut rng);
            next_reset += 20_000;
        }
        if index == next_config {
            let config = generate::config(&mut rng, &pool, &harness.config, harness.clock_ms());
            harness.configure(config)?;
            configurations += 1;
            next_config += rng.range(200, 5_000);
        }
        let step = generate::clock_step(&mut rng);
        if step != 0 {
            harness.set_clock(harness.clock_ms() + step)?;
        }
        let frame = generate::frame(&mut rng, &pool);
        if let Err(error) = harness.frame(&frame) {
            diverged(&mut harness, error, Some(&frame))?;
        }
        if index % check_every == 0 {
            if let Err(error) = harness.check_state() {
                diverged(&mut harness, error, None)?;
            }
        }
    }
    if let Err(error) = harness.check_state() {
        diverged(&mut harness, error, None)?;
    }
    let elapsed = started.elapsed();
    let reasons = Reason::ALL
        .iter()
        .map(|r| (*r, harness.model.counters[*r as usize].packets))
        .collect();
    Ok(Summary {
        frames: options.frames,
        divergences,
        elapsed,
        reasons,
        configurations,
    })
}
