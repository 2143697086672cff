//! The XDP program against the reference model (`blocker_tests::model`): a seeded random run
//! (replay another seed with BLOCKER_FUZZ_SEED=S; `cargo xtask fuzz` runs longer ones), and
//! every divergence found so far as a fixed case.

use blocker_tests::{
    differential::{
        self,
        regressions::{self, REGRESSIONS},
        Options, SEED_VAR,
    },
    require_root,
};

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn the_program_agrees_with_the_model_on_random_frames() {
    require_root();
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x0b10_c4e2);
    eprintln!("seed {seed} (replay: {SEED_VAR}={seed})");
    let summary = differential::run(&Options {
        frames: 100_000,
        seed,
        check_every: 1_000,
        keep_going: false,
    })
    .unwrap_or_else(|divergence| panic!("{divergence:#}"));
    eprintln!("{summary}");
    assert_eq!(summary.frames, 100_000);
}

#[test]
#[ignore = "needs root: cargo xtask test runs it"]
fn regression_cases_pass() {
    require_root();
    let failures: Vec<String> = REGRESSIONS
        .iter()
        .filter_map(|case| {
            regressions::check(case)
                .err()
                .map(|divergence| format!("{}\n{divergence:#}", case.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
