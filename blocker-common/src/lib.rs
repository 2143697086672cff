//! Everything the XDP program and userspace must agree on: map names, key and value layouts,
//! counter indices, limits, and the pure decision functions both sides run.
#![no_std]

pub mod bunch;
pub mod clock;
pub mod counters;
pub mod hit_memo;
pub mod maps;
pub mod reject;
pub mod rules;
pub mod samples;
pub mod verdict;

pub use clock::{tick_clock_ms, TickClock};
pub use counters::{Action, Counter, Reason};
pub use hit_memo::{HitMemo, HIT_MEMO_SLOTS};
pub use maps::*;
pub use rules::*;
pub use samples::*;
pub use verdict::ban_is_active;
