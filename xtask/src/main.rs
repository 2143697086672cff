//! Project tasks: `cargo xtask setup | build | test | run`.
//!
//! Every task first makes sure the build chain is present (nightly rust-src, LLVM 22 and a
//! bpf-linker built against it) and bpffs is mounted, installing what is missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use blocker_tests::differential;
use clap::{Parser, Subcommand};

mod bench;
mod package;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever the build and the tests need and is missing; mount bpffs.
    Setup,
    /// Build everything, the eBPF object included.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the unit and integration tests (needs root).
    Test {
        /// Extra arguments for the test harness, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure blocker against xdp-filter, iptables and nftables; writes target/bench/ and,
    /// for a full run, docs/benchmarks.md.
    Bench {
        /// A reduced set that runs in about two minutes.
        #[arg(long)]
        quick: bool,
        /// Only the state database at scale (1M stored bans; 100k with --quick).
        #[arg(long, conflicts_with = "logs")]
        state: bool,
        /// Only `blocker analyze` over a generated access log (1 GB; 100 MB with --quick).
        #[arg(long, conflicts_with = "state")]
        analyze: bool,
        /// Only log scanning: `blocker scan` against `fail2ban-regex` (1M lines; 100k with
        /// --quick).
        #[arg(long)]
        logs: bool,
        /// Only the packet path: cost per class (BPF_PROG_TEST_RUN) and live-frames
        /// throughput, into target/bench/packets.md.
        #[arg(long)]
        packets: bool,
        /// Only the fleet: propagation, throughput and catch-up of bans shared through NATS
        /// JetStream between four nodes (100 / 2,000 / 10,000 bans with --quick).
        #[arg(long)]
        fleet: bool,
        /// Only the per-packet cost of the blocked-packet sample `blocker top` reads:
        /// sampling on against off, into target/bench/sampling.md.
        #[arg(long)]
        sampling: bool,
        /// Only the live sections (rule events, the dynamic blacklist's throughput), this
        /// build and the blocker binary at BUILD taking turns in the same rounds: a same-run
        /// A/B, into target/bench/compare.md (docs/benchmarks.md untouched). Without
        /// --quick: its single reading per pass and three rounds cannot separate two builds.
        #[arg(
            long,
            value_name = "BUILD",
            conflicts_with_all = ["state", "analyze", "logs", "packets", "fleet", "sampling"]
        )]
        compare_with: Option<PathBuf>,
    },
    /// Differential fuzzing: seeded random configurations and frames through the real XDP
    /// program (BPF_PROG_TEST_RUN) and the reference model; stops at the first divergence.
    Fuzz {
        #[arg(long, default_value_t = 10_000_000)]
        frames: u64,
        /// Replays a run; a fresh seed (printed) otherwise.
        #[arg(long)]
        seed: Option<u64>,
        /// Compare all counters, rule stats and the blacklist every this many frames (the
        /// verdict and its counter are compared after every frame).
        #[arg(long, default_value_t = 4096)]
        check_every: u64,
        /// Report every kind of divergence (the first of each) instead of stopping at the
        /// first; the model takes over the program's state after each.
        #[arg(long)]
        keep_going: bool,
    },
    /// Build the Debian package target/package/blocker_VERSION_ARCH.deb (binary, systemd unit,
    /// /etc/blocker/config.toml, man pages, completions).
    Package,
    /// Time `blocker import` of 100k lines in each list format (release build; needs root).
    ImportBench,
    /// Build in release mode and run `blocker run` in the foreground.
    ///
    /// Example: cargo xtask run -- --iface eth0
    Run {
        /// Arguments for `blocker run`, e.g. `--iface eth0 --keep`.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
}

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
/// Commands the integration tests drive, and the Debian packages that bring them.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("ping", "iputils-ping"),
    ("bpftool", "bpftool"),
    ("iptables", "iptables"),
    ("curl", "curl"),
    ("promtool", "prometheus"),
    // The Grafana dashboard test scrapes a daemon with a real Prometheus server.
    ("prometheus", "prometheus"),
    ("sshpass", "sshpass"),
    ("fail2ban-regex", "fail2ban"),
    // Another process on the state database, in the SQLite lock test.
    ("python3", "python3"),
    // The https feed test's CA, certificate and list server (`s_server`).
    ("openssl", "openssl"),
];
/// Programs the integration tests run that are not on PATH, and their Debian packages.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("/usr/sbin/sshd", "openssh-server"),
    // The fleet tests' NATS servers (JetStream).
    ("/usr/sbin/nats-server", "nats-server"),
    (
        "/usr/lib/systemd/systemd-journal-remote",
        "systemd-journal-remote",
    ),
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace")?;
    match cli.task {
        Task::Setup => {
            setup_build_chain()?;
            setup_test_tools()?;
        }
        Task::Build { release } => {
            setup_build_chain()?;
            cargo_build(release)?;
        }
        Task::Test { args } => {
            setup_build_chain()?;
            setup_test_tools()?;
            require_root("the integration tests create network namespaces and load XDP")?;
            cargo_build(false)?;
            let blocker = root.join("target/debug/blocker");
            let mut test = Command::new(cargo());
            // The integration tests are `#[ignore]`d for a plain `cargo test` (they need root).
            // Every test binary runs, so one failure does not hide the others.
            test.args([
                "test",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--include-ignored",
            ])
            .args(&args)
            .env("BLOCKER_BIN", &blocker);
            run(&mut test)?;
        }
        Task::Bench {
            quick,
            state,
            analyze,
            logs,
            packets,
            fleet,
            sampling,
            compare_with,
        } => {
            setup_build_chain()?;
            setup_test_tools()?;
            require_root("the benchmarks load XDP programs and create namespaces")?;
            // The sampling bench loads the object this xtask embeds: no release binary.
            if sampling {
                bench::section_alone(
                    &root,
                    bench::Plan::new(quick),
                    "sampling",
                    bench::sampling::run_alone,
                )?;
                return Ok(());
            }
            run(Command::new(cargo()).args(["build", "--release", "--package", "blocker-user"]))?;
            if state {
                bench::section_alone(
                    &root,
                    bench::Plan::new(quick),
                    "state",
                    bench::state::run_alone,
                )?;
            } else if analyze {
                bench::section_alone(
                    &root,
                    bench::Plan::new(quick),
                    "analyze",
                    bench::analyze::run_alone,
                )?;
            } else if logs {
                bench::section_alone(
                    &root,
                    bench::Plan::new(quick),
                    "logs",
                    bench::logs::run_alone,
                )?;
            } else if let Some(other) = compare_with {
                bench::run_compare(&root, bench::Plan::new(quick), &other)?;
            } else if packets {
                bench::run_packets(&root, bench::Plan::new(quick))?;
            } else if fleet {
                bench::section_alone(
                    &root,
                    bench::Plan::new(quick),
                    "fleet",
                    bench::fleet::run_alone,
                )?;
            } else {
                bench::run(&root, bench::Plan::new(quick))?;
            }
        }
        Task::Fuzz {
            frames,
            seed,
            check_every,
            keep_going,
        } => {
            setup_build_chain()?;
            require_root("the differential test loads the XDP program")?;
            fuzz(differential::Options {
                frames,
                seed: seed.unwrap_or_else(differential::fresh_seed),
                check_every,
                keep_going,
            })?;
        }
        Task::Package => {
            setup_build_chain()?;
            package::build(&root)?;
        }
        Task::ImportBench => {
            setup_build_chain()?;
            setup_test_tools()?;
            require_root("the import benchmark loads the XDP program")?;
            run(Command::new(cargo()).args(["build", "--release", "--package", "blocker-user"]))?;
            bench::formats::run(&root)?;
        }
        Task::Run { args } => {
            setup_build_chain()?;
            require_root("loading XDP programs")?;
            run(Command::new(cargo()).args(["build", "--release", "--package", "blocker-user"]))?;
            let mut blocker = Command::new(root.join("target/release/blocker"));
            blocker.arg("run").args(&args);
            run(&mut blocker)?;
        }
    }
    Ok(())
}

fn fuzz(options: differential::Options) -> Result<()> {
    let (frames, seed) = (options.frames, options.seed);
    println!(
        "fuzz: {frames} frames, seed {seed} (replay: cargo xtask fuzz --frames {frames} --seed {seed})"
    );
    let summary = differential::run(&options)?;
    println!("fuzz: {summary}");
    if !summary.divergences.is_empty() {
        bail!("the program and the model diverged (above)");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

fn on_path(program: &str) -> bool {
    succeeds("sh", &["-c", &format!("command -v {program}")])
}

fn require_root(why: &str) -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("run this as root: {why}");
    }
    Ok(())
}

fn cargo_build(release: bool) -> Result<()> {
    let mut build = Command::new(cargo());
    build.args(["build", "--workspace", "--all-targets"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)
}

/// Installs Debian packages, refreshing the package lists once per run.
fn apt_install(packages: &[&str]) -> Result<()> {
    println!("xtask: installing {}", packages.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn setup_build_chain() -> Result<()> {
    if !succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        println!("xtask: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let has_rust_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("rust-src"));
    if !has_rust_src {
        println!("xtask: adding rust-src to nightly (the eBPF target builds core from source)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !on_path("bpf-linker") {
        if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
            apt_install(LLVM_PACKAGES)?;
        }
        println!("xtask: building bpf-linker against LLVM 22 (a few minutes, once)");
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new(cargo())
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path))?;
    }
    mount_bpffs()
}

fn setup_test_tools() -> Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .chain(
            TEST_PROGRAMS
                .iter()
                .filter(|(path, _)| !std::path::Path::new(path).exists()),
        )
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|line| {
        line.split_whitespace().nth(1) == Some("/sys/fs/bpf") && line.contains(" bpf ")
    });
    if !mounted {
        println!("xtask: mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}
