//! Divergences the differential test found, kept as fixed cases: a configuration, then frames
//! at given times with the verdict the specification gives. The program and the model must
//! both produce it.

use anyhow::{bail, Context, Result};
use blocker_common::{
    proto_bit, Reason, Rule, RuleAction, RuleKind, Settings, LIST_ALLOW_V4, MAX_MASKS, MAX_RULES,
};

use super::{generate::Config, unhex, Harness};

pub struct Step {
    pub clock_ms: u64,
    pub frame: &'static str,
    pub reason: Reason,
}

pub struct Regression {
    pub name: &'static str,
    /// What diverged, and where it was fixed.
    pub history: &'static str,
    pub config: fn() -> Config,
    pub steps: &'static [Step],
}

/// A configuration with `rules` in slots 0.. and settings derived as userspace derives them.
fn with_rules(rules: &[Rule]) -> Config {
    let mut all = [Rule::default(); MAX_RULES];
    all[..rules.len()].copy_from_slice(rules);
    let mut masks_v4 = [0; MAX_MASKS];
    let mut masks_v6 = [0; MAX_MASKS];
    let (mut n4, mut n6) = (0, 0);
    for rule in rules {
        if !masks_v4[..n4].contains(&rule.mask_v4) {
            masks_v4[n4] = rule.mask_v4;
            n4 += 1;
        }
        if !masks_v6[..n6].contains(&rule.mask_v6) {
            masks_v6[n6] = rule.mask_v6;
            n6 += 1;
        }
    }
    Config {
        settings: Settings {
            rule_slots: rules.len() as u32,
            lists: 0,
            rule_protos: rules.iter().fold(0, |bits, r| bits | proto_bit(r.proto)),
            masks_v4,
            masks_v6,
            reject_per_s: 1000,
            reject_burst: 50,
            ..Settings::default()
        },
        rules: all,
        allow: Default::default(),
        bans: Default::default(),
    }
}

/// The seed's SSH rule: 3 new connections in 30 s, then 2 minutes out.
#[allow(dead_code)]
fn ssh_rule(action: RuleAction) -> Rule {
    Rule {
        generation: 1,
        kind: RuleKind::Rate as u8,
        proto: 6,
        action: action as u8,
        new_only: 1,
        refresh: 1,
        mask_v4: 32,
        mask_v6: 64,
        dport_min: 22,
        dport_max: 22,
        hitcount: 3,
        window_ms: 30_000,
        blacklist_ms: 120_000,
        ..Rule::default()
    }
}

#[allow(dead_code)]
const ALLOW_BIT: u32 = LIST_ALLOW_V4;

pub const REGRESSIONS: &[Regression] = &[];

/// Runs one case through a fresh program and model.
pub fn check(case: &Regression) -> Result<()> {
    let first = case.steps.first().map_or(1, |step| step.clock_ms);
    let mut harness = Harness::new(first)?;
    harness.configure((case.config)())?;
    for (index, step) in case.steps.iter().enumerate() {
        harness.set_clock(step.clock_ms)?;
        let verdict = harness
            .frame(&unhex(step.frame))
            .with_context(|| format!("{}: step {index}", case.name))?;
        if verdict.reason != step.reason {
            bail!(
                "{}: step {index}: the model says {}, the case expects {}",
                case.name,
                verdict.reason.name(),
                step.reason.name()
            );
        }
    }
    harness.check_state().with_context(|| case.name)
}
