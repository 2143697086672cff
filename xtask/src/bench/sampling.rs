//! What the sample of blocked packets costs per packet: the program as loaded (sampling on)
//! beside the same object loaded with its `SAMPLE_DROPS` switch off, which the verifier
//! prunes as dead code; BPF_PROG_TEST_RUN, the two alternating round by round in one run.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};
use blocker_common::{BanValue, Settings, FAMILY_V4, FAMILY_V6, LIST_BAN_V4, LIST_BAN_V6};
use blocker_tests::{
    bpf::{self, test_run},
    differential::kernel::Kernel,
    frames::udp,
    model::Prefix,
};
use serde::Serialize;

use super::{
    lab::{v4_frame, v6, v6_frame, BANNED_V4, UDP, UNMATCHED_V4},
    median, progsize, verdict_name, Plan,
};

/// One class, with sampling and without.
#[derive(Serialize)]
struct SampleCost {
    class: &'static str,
    verdict: &'static str,
    /// Median ns per packet above the empty program, sampling on.
    with_sampling: f64,
    without_sampling: f64,
}

#[derive(Serialize)]
struct SamplingBench {
    floor_ns: f64,
    /// Translated instructions of the program with sampling on, and off.
    insns: (u64, u64),
    repeat: u32,
    rounds: usize,
    classes: Vec<SampleCost>,
}

/// A program holding the bench's two manual bans.
fn loaded(sample_drops: bool) -> Result<Kernel> {
    let mut kernel = Kernel::load_sampling(sample_drops)?;
    kernel.set_settings(&Settings {
        lists: LIST_BAN_V4 | LIST_BAN_V6,
        ..Settings::default()
    })?;
    let permanent = BanValue::default();
    let mut v4 = [0; 16];
    v4[..4].copy_from_slice(&BANNED_V4);
    for prefix in [
        Prefix {
            family: FAMILY_V4,
            addr: v4,
            len: 32,
        },
        Prefix {
            family: FAMILY_V6,
            addr: v6("2001:db8:bad::"),
            len: 64,
        },
    ] {
        kernel.set_ban(&prefix, Some(&permanent))?;
    }
    Ok(kernel)
}

fn run(plan: Plan) -> Result<SamplingBench> {
    let on = loaded(true)?;
    let off = loaded(false)?;
    let empty = bpf::empty_program()?;
    let dns = || udp(53, 32);
    let classes = [
        ("manual ban IPv4 /32", v4_frame(BANNED_V4, dns(), UDP)),
        (
            "manual ban IPv6 /64",
            v6_frame(v6("2001:db8:bad::1"), dns(), UDP),
        ),
        (
            "unmatched IPv4 (passed)",
            v4_frame(UNMATCHED_V4, dns(), UDP),
        ),
    ];
    // More rounds than the cost table: the difference sought is a few ns.
    let rounds = plan.rounds * 3;
    let mut floor = Vec::new();
    let mut measured = Vec::new();
    for (class, frame) in &classes {
        let (mut with, mut without, mut verdict) = (Vec::new(), Vec::new(), 0);
        for _ in 0..rounds {
            // Each repetition counts a packet, so one in SAMPLE_EVERY of them is sampled:
            // the average is the real mix of sampled and not-sampled packets.
            let run = test_run(on.program(), frame, plan.repeat, None)?;
            with.push(f64::from(run.duration_ns));
            verdict = run.retval;
            let run = test_run(off.program(), frame, plan.repeat, None)?;
            without.push(f64::from(run.duration_ns));
            floor.push(f64::from(
                test_run(&empty, frame, plan.repeat, None)?.duration_ns,
            ));
        }
        measured.push((*class, verdict, median(with), median(without)));
    }
    let floor = median(floor);
    Ok(SamplingBench {
        floor_ns: floor,
        insns: (
            progsize::xlated_insns(prog_id(on.program())?)?,
            progsize::xlated_insns(prog_id(off.program())?)?,
        ),
        repeat: plan.repeat,
        rounds,
        classes: measured
            .into_iter()
            .map(|(class, verdict, with, without)| SampleCost {
                class,
                verdict: verdict_name(verdict),
                with_sampling: with - floor,
                without_sampling: without - floor,
            })
            .collect(),
    })
}

/// The id of the program behind `fd`, from the kernel's fdinfo.
fn prog_id(fd: &OwnedFd) -> Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("prog_id:"))
        .context("no prog_id in the program's fdinfo")?
        .trim()
        .parse()
        .context("reading the program's id")
}

fn markdown(bench: &SamplingBench) -> String {
    let mut out = String::from("## Cost of the blocked-packet sample (`blocker top`)\n\n");
    out += &format!(
        "Median ns per packet above an empty XDP program ({:.1} ns), BPF_PROG_TEST_RUN \
         repeating one frame {} times, {} rounds; the program as loaded (sampling on: one \
         blocked packet in {} per reason and CPU writes a 32-byte slot) beside the same \
         object loaded with the sampling switched off, alternating round by round in this \
         run. The kernel reports whole ns per run. Translated instructions: {} with sampling, \
         {} without.\n\n",
        bench.floor_ns,
        bench.repeat,
        bench.rounds,
        blocker_common::SAMPLE_EVERY,
        bench.insns.0,
        bench.insns.1,
    );
    out += "| class | verdict | sampling on | sampling off | on − off | on ÷ off |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: |\n";
    for class in &bench.classes {
        let ratio = if class.without_sampling >= 1.0 {
            format!("{:.2}", class.with_sampling / class.without_sampling)
        } else {
            String::new()
        };
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {:+.1} | {} |\n",
            class.class,
            class.verdict,
            class.with_sampling,
            class.without_sampling,
            class.with_sampling - class.without_sampling,
            ratio,
        );
    }
    out
}

/// `cargo xtask bench --sampling`: only this part, written to target/bench/sampling.md.
pub fn run_alone(root: &Path, plan: Plan) -> Result<()> {
    let bench = run(plan)?;
    let markdown = markdown(&bench);
    super::report::write_files(root, "sampling", &bench, &markdown)
}
