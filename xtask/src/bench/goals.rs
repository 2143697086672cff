//! Issue 11's goals table: each goal beside what this run measured, met or not.

use serde::Serialize;

use super::{
    costs::PacketCosts,
    lab::{GOAL_ALLOWS, GOAL_BANS},
    throughput::{self, rule_events, BlockerRuleRatios},
};

/// One goal of issue 11 and this run's figure for it.
#[derive(Serialize)]
pub(super) struct Goal {
    class: &'static str,
    measured: String,
    goal: &'static str,
    /// None when this run did not measure it.
    met: Option<bool>,
}

/// How a goal bounds its figure.
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn met(&self, value: f64) -> bool {
        match *self {
            Bound::AtMost(limit) => value <= limit,
            Bound::AtLeast(limit) => value >= limit,
        }
    }
}

fn goal_row(
    class: &'static str,
    goal: &'static str,
    value: Option<f64>,
    bound: Bound,
    shown: &dyn Fn(f64) -> String,
) -> Goal {
    Goal {
        class,
        measured: value.map_or("not measured".into(), shown),
        goal,
        met: value.map(|v| bound.met(v)),
    }
}

/// The goals from the cost table, the live rule events and the live throughput (each when
/// the run measured it).
pub(super) fn goals(
    packets: &PacketCosts,
    rule_event_rows: Option<&[rule_events::Row]>,
    live: Option<&[throughput::Row]>,
) -> Vec<Goal> {
    let cost = |class: &str| packets.costs.iter().find(|c| c.class == class);
    let mut goals = Vec::new();
    let ratio = |class: &str| cost(class).and_then(|c| c.ratio_to_xdp_filter);
    let times = |v: f64| format!("{v:.2}× xdp-filter");
    for (class, cost_class, goal, limit) in [
        (
            "dynamic blacklist hit, IPv4",
            "dynamic blacklist hit",
            "≤ 1.0×",
            1.0,
        ),
        (
            "manual ban hit, IPv4 host entry",
            "manual ban IPv4 /32",
            "≤ 1.0×",
            1.0,
        ),
        (
            "manual ban hit, CIDR",
            "manual ban IPv4 CIDR",
            "≤ 1.5×",
            1.5,
        ),
        ("unmatched IPv4", "unmatched IPv4", "≤ 1.5×", 1.5),
        ("unmatched IPv6", "unmatched IPv6", "≤ 1.5×", 1.5),
    ] {
        goals.push(goal_row(
            class,
            goal,
            ratio(cost_class),
            Bound::AtMost(limit),
            &times,
        ));
    }
    // Frames blocker passes without a decision: an absolute margin over xdp-filter's cost.
    for (class, cost_class) in [("non-IP", "non-IP frame"), ("malformed", "malformed frame")] {
        let pair = cost(cost_class).and_then(|c| Some((c.above_floor, c.xdp_filter_above_floor?)));
        goals.push(Goal {
            class,
            measured: pair.map_or("not measured".into(), |(own, peer)| {
                format!("{own:.1} ns (xdp-filter {peer:.1} ns)")
            }),
            goal: "≤ xdp-filter + 5 ns",
            met: pair.map(|(own, peer)| own <= peer + 5.0),
        });
    }
    let ns = |v: f64| format!("{v:.0} ns");
    for (class, live_class, goal, limit) in [
        (
            "rule event, known source (ssh rule)",
            rule_events::KNOWN_SOURCE,
            "≤ 200 ns",
            200.0,
        ),
        (
            "rule event, new source (LRU insert)",
            rule_events::NEW_SOURCE,
            "≤ 400 ns",
            400.0,
        ),
    ] {
        let value = rule_event_rows
            .and_then(|rows| rows.iter().find(|row| row.class == live_class))
            .map(|row| row.above_floor);
        goals.push(goal_row(class, goal, value, Bound::AtMost(limit), &ns));
    }
    goals.push(goal_row(
        "kernel memory per tracked source, ssh rule",
        "≤ 64 B",
        Some(packets.tracked_source_bytes),
        Bound::AtMost(64.0),
        &|v| format!("{v:.0} B"),
    ));
    let live = live.map(throughput::blocker_rule_ratios);
    let of_drop = |v: f64| format!("{v:.2} of drop-only");
    type Pick = fn(&BlockerRuleRatios) -> Option<f64>;
    let live_goals: [(_, _, Pick, _, &dyn Fn(f64) -> String); 3] = [
        (
            "live frames: one blacklisted source",
            "≥ 0.8 of drop-only",
            |l| l.one_source_of_drop_only,
            0.8,
            &of_drop,
        ),
        (
            "live frames: one blacklisted source, against xdp-filter",
            "≥ 1.0× xdp-filter",
            |l| l.one_source_of_xdp_filter,
            1.0,
            &times,
        ),
        (
            "live frames: spoofed 65k-source SYN flood on the ssh port",
            "≥ 0.5 of drop-only",
            |l| l.flood_of_drop_only,
            0.5,
            &of_drop,
        ),
    ];
    for (class, goal, pick, limit, shown) in live_goals {
        let value = live.as_ref().and_then(pick);
        goals.push(goal_row(class, goal, value, Bound::AtLeast(limit), shown));
    }
    goals
}

/// The goals section.
pub(super) fn markdown(goals: &[Goal], xdp_filter_entries: usize) -> String {
    let mut out = format!(
        "\n## Issue 11 goals\n\nFrom the cost table above (and the throughput table below, when \
         measured in the same run). blocker is loaded with {GOAL_BANS} manual bans (80% IPv4 \
         hosts, 10% IPv4 ranges /20 to /28, the rest IPv6 hosts and /64s), {GOAL_ALLOWS} \
         allowlist entries and its ssh and burst rules, all through `blocker import` / \
         `blocker allow`, for every class of the cost table. The rule-event goals read the live rows of the \
         rule-event section (blocker with its ssh rule alone, a stream of distinct sources). \
         xdp-filter's source list holds {xdp_filter_entries} \
         entries (its capacity is 10,000 per list, so it cannot hold 100k); it has no rules, \
         so the rule-event and memory rows have no peer. Memory per tracked source: the rule \
         history map's memlock divided by its capacity. The cost table repeats one frame, so \
         its dynamic-blacklist hit is the one a CPU remembers within a clock tick (the hit \
         memory, README); a source not remembered pays the hash lookup, as every frame of the \
         spoofed flood does.\n\n\
         | class | measured | goal | met |\n| --- | ---: | ---: | --- |\n"
    );
    for goal in goals {
        let met = match goal.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        out += &format!(
            "| {} | {} | {} | {met} |\n",
            goal.class, goal.measured, goal.goal
        );
    }
    out
}
