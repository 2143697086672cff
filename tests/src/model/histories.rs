//! The source histories as the program keeps them: one map per history class, the class
//! picked by the rule's hitcount ([`uses_short_history`]).

use std::collections::HashMap;

use blocker_common::{
    on_event, uses_short_history, History, HistoryKey, Outcome, Rule, ShortHistory,
};

/// What of a history means something: the ring's times newest first as far as they are
/// held (the rest is whatever the memory held), the count recorded, the bunch length, the
/// TTL and the last time.
pub type HistoryView = (Vec<u32>, u32, u32, u32, u64);

#[derive(Clone, Debug, Default)]
pub struct Histories {
    pub short: HashMap<HistoryKey, ShortHistory>,
    pub long: HashMap<HistoryKey, History>,
}

impl Histories {
    pub fn clear(&mut self) {
        self.short.clear();
        self.long.clear();
    }

    /// One event at `now` of the source in `key` under `rule`, as the program runs it: a
    /// missing or stale history starts fresh.
    pub fn event(&mut self, rule: &Rule, key: HistoryKey, now: u64, ttl: u8) -> Outcome {
        if uses_short_history(rule) {
            event_in(&mut self.short, rule, key, now, ttl)
        } else {
            event_in(&mut self.long, rule, key, now, ttl)
        }
    }

    /// Every history's view, keyed by its class (true: short) and key.
    pub fn views(&self) -> HashMap<(bool, HistoryKey), HistoryView> {
        let short = self.short.iter().map(|(key, h)| ((true, *key), view(h)));
        let long = self.long.iter().map(|(key, h)| ((false, *key), view(h)));
        short.chain(long).collect()
    }
}

fn event_in<const RING: usize>(
    histories: &mut HashMap<HistoryKey, History<RING>>,
    rule: &Rule,
    key: HistoryKey,
    now: u64,
    ttl: u8,
) -> Outcome {
    let history = histories.entry(key).or_insert_with(|| History::new(ttl));
    // Idle longer than any window: nothing in it can count again.
    if history.is_stale(now) {
        *history = History::new(ttl);
    }
    on_event(rule, history, now, ttl)
}

fn view<const RING: usize>(history: &History<RING>) -> HistoryView {
    let ring = (1..=history.kept())
        .map(|back| history.newest(back))
        .collect();
    (
        ring,
        u32::from(history.recorded),
        history.bunch_len,
        u32::from(history.ttl),
        history.last_ms,
    )
}
