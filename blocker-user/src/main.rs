//! `blocker`: load the XDP blocker onto interfaces and manage its bans and allowlist.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use blocker::{
    addr::parse_net,
    clock::{expiry_after, parse_duration, Now},
    config::Config,
    daemon::{record_offense, report_via_socket, Daemon, Listen, OffenseReport},
    dynamic,
    error::{is_broken_pipe, one_line},
    events,
    loader::{self, ModeChoice},
    lockout::{self, Guard},
    offense::{Level, Severity},
    pins::{require_root, PinDir, DEFAULT_PIN_DIR},
    rules::{self, PortRange, RuleSpec},
    state::{Listed, State},
    status,
    store::Store,
    text::{self, escape},
    Error,
};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use jiff::Timestamp;
use serde::Serialize;
use tracing::{info, warn};

mod cli;

/// Drops unwanted traffic at the NIC driver with XDP: manual bans of addresses and CIDR ranges
/// (permanent or temporary, with a reason) and an allowlist that always wins.
///
/// Bans are kept in maps pinned in bpffs, so every command works whether or not a daemon runs,
/// and blocking continues after the command exits. They are also written to a state file, from
/// which `blocker load` restores them after a reboot.
///
/// Examples:
///   blocker load --iface eth0
///   blocker ban 203.0.113.7 198.51.100.0/24 --for 24h --reason "ssh brute force"
///   blocker allow 192.0.2.10 --reason "monitoring"
///   blocker list --json
///   blocker status
#[derive(Parser)]
#[command(name = "blocker", version, verbatim_doc_comment)]
struct Cli {
    /// Directory in bpffs holding the pinned maps and links.
    #[arg(long, global = true, env = "BLOCKER_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// State database with every ban and allowlist entry, restored by `load` [default:
    /// /var/lib/blocker/state.db]. Once loaded, every command uses the database `load` used.
    #[arg(long, global = true, env = "BLOCKER_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it to an interface and pin it, then restore saved bans.
    ///
    /// Example: blocker load --iface eth0 --mode native
    Load(LoadArgs),
    /// Load and attach like `load`, stay in the foreground, and detach on Ctrl-C.
    ///
    /// Example: blocker run --iface eth0
    Run {
        #[command(flatten)]
        load: LoadArgs,
        /// Leave the program attached and pinned when stopping.
        #[arg(long)]
        keep: bool,
        /// The daemon's HTTP address [default: 127.0.0.1:9977].
        #[arg(long)]
        listen: Option<String>,
        /// The daemon's Unix socket [default: /run/blocker/blocker.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The TCP API's token file [default: api.token beside the state file].
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Detach from an interface (or all) and remove the pins; the state file is kept.
    ///
    /// Example: blocker unload --iface eth0
    Unload {
        #[arg(long)]
        iface: Option<String>,
    },
    /// Show attached interfaces, map usage against capacity and the packet counters.
    Status {
        #[arg(long)]
        json: bool,
        /// The daemon's Unix socket, asked for its jails [default: /run/blocker/blocker.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Ban addresses or CIDR ranges; permanent unless --for is given.
    ///
    /// Example: blocker ban 203.0.113.7 2001:db8:bad::/48 --for 7d --reason "scanner"
    Ban {
        #[arg(required = true, value_name = "ADDR_OR_CIDR")]
        addrs: Vec<String>,
        /// How long the ban lasts: 90s, 10m, 24h, 7d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Ban even what would lock you out: a range wider than /8 (IPv4) or /16 (IPv6), the
        /// source of your SSH session, or an address of this host.
        #[arg(long)]
        force: bool,
    },
    /// Lift bans, manual and dynamic (a dynamic entry that overlaps the prefix goes too).
    ///
    /// Example: blocker unban 203.0.113.7
    Unban {
        #[arg(required = true, value_name = "ADDR_OR_CIDR")]
        addrs: Vec<String>,
    },
    /// Add addresses or ranges to the allowlist, which wins over every ban.
    ///
    /// Example: blocker allow 192.0.2.0/24 --reason office; blocker allow --remove 192.0.2.0/24
    Allow {
        #[arg(required = true, value_name = "ADDR_OR_CIDR")]
        addrs: Vec<String>,
        #[arg(long, conflicts_with = "remove")]
        reason: Option<String>,
        /// Remove the entries instead of adding them.
        #[arg(long)]
        remove: bool,
        /// Add even an entry wider than a /8 (IPv4) or /16 (IPv6), which lifts every ban
        /// there; with --remove, remove even an entry that keeps your SSH session's source
        /// or an address of this host clear of a ban.
        #[arg(long)]
        force: bool,
    },
    /// List bans and allowlist entries.
    ///
    /// Example: blocker list bans --json
    List {
        #[arg(value_enum)]
        which: Option<ListWhich>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: ListFilter,
    },
    /// Show every ban, unban, expiry and allowlist change of an address or range, and of the
    /// ranges that cover it, oldest first.
    ///
    /// Example: blocker history 203.0.113.7 --json
    History {
        addr: String,
        #[arg(long)]
        json: bool,
    },
    Import(cli::import::ImportArgs),
    /// Print the bans in the format `import` reads, or another tool's (`--format`).
    Export(cli::export::ExportArgs),
    Feeds(cli::feeds::FeedsArgs),
    /// Manage rate and burst rules; changes apply to the next packet.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Empty the dynamic blacklist.
    ///
    /// Example: blocker flush blacklist
    Flush {
        #[arg(value_enum)]
        what: FlushWhat,
    },
    Analyze(cli::analyze::AnalyzeArgs),
    /// Follow events: sources blacklisted by rules, entries expired or removed. Ctrl-C stops.
    Events {
        #[arg(long)]
        json: bool,
    },
    /// Serve the offense API, the ban list and Prometheus metrics, and expire bans.
    ///
    /// Examples:
    ///   blocker daemon --config /etc/blocker/blocker.toml
    ///   blocker daemon --check-config /etc/blocker/blocker.toml
    #[command(verbatim_doc_comment)]
    Daemon(DaemonArgs),
    /// Run a filter over log files (plain or .gz), like fail2ban-regex: lines, matches,
    /// ignored lines and each source's failures.
    ///
    /// Examples:
    ///   blocker scan /var/log/auth.log --filter sshd
    ///   blocker scan /var/log/auth.log.2.gz --filter /etc/fail2ban/filter.d/sshd.conf --json
    #[command(verbatim_doc_comment)]
    Scan(cli::scan::ScanArgs),
    /// Report an offense by a client (through the daemon when it runs, directly otherwise).
    ///
    /// Example: blocker report 203.0.113.7 --severity minor --reason "wrong password" --key alice
    Report {
        addr: String,
        #[arg(long, value_enum, conflicts_with = "weight")]
        severity: Option<Level>,
        /// A weight instead of a named severity.
        #[arg(long)]
        weight: Option<f64>,
        #[arg(long, default_value = "")]
        reason: String,
        /// Score per (address, key), e.g. a user name; see the README.
        #[arg(long)]
        key: Option<String>,
        /// The daemon's socket.
        #[arg(long, default_value = "/run/blocker/blocker.sock")]
        socket: PathBuf,
        /// Config for direct mode (scoring settings).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A live view from the pinned maps: rates per verdict and reason, rules, blacklisted
    /// sources, map fill; b/u/a ban, unban or allow the selected source.
    ///
    /// Examples:
    ///   blocker top
    ///   blocker top --once --json
    #[command(verbatim_doc_comment)]
    Top(cli::top::TopArgs),
    /// Check what blocking depends on, one line each with a fix; exit 1 if a check fails.
    ///
    /// Example: blocker doctor --iface eth0
    Doctor(cli::doctor::DoctorArgs),
    /// Print a shell completion script to stdout.
    ///
    /// Example: blocker completions bash > /etc/bash_completion.d/blocker
    Completions(cli::completions::CompletionsArgs),
    /// Write one man page per command into a directory.
    ///
    /// Example: blocker man --out /usr/share/man/man1
    Man(cli::man::ManArgs),
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// TOML config (rules, offenses, listeners, notifications).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP address for the offense and read APIs and /metrics [default: 127.0.0.1:9977].
    #[arg(long)]
    listen: Option<String>,
    /// Unix socket serving the same API [default: /run/blocker/blocker.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The TCP API's bearer token, created (mode 0600) if missing [default: api.token beside
    /// the state file].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Validate a config file and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RuleCommand {
    /// Add a rule, or replace the rule of the same name (its counts start over).
    ///
    /// Examples:
    ///   blocker rule add ssh --proto tcp --dport 22 --hitcount 3 --seconds 30 --blacklist-for 120s
    ///   blocker rule add web --proto tcp --dport 80-443 --burst --gap 2s --bunch-size 10 --action reject
    #[command(verbatim_doc_comment)]
    Add(Box<RuleArgs>),
    /// List rules in evaluation order with their counters.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a rule; the others keep their counts.
    Remove { name: String },
}

/// `blocker rule add` options; anything left out takes the default shown.
#[derive(clap::Args)]
struct RuleArgs {
    name: String,
    /// [default: any]
    #[arg(long, value_enum)]
    proto: Option<rules::Proto>,
    /// A port or a range like 6000-6010 (tcp and udp).
    #[arg(long)]
    dport: Option<PortRange>,
    /// What counts: new TCP connections (SYN) or every packet. [default: new for tcp and
    /// any, all for the rest]
    #[arg(long, value_enum)]
    events: Option<rules::Events>,
    /// Events within --seconds after which the next one blacklists. [default: 3]
    #[arg(long)]
    hitcount: Option<u32>,
    /// [default: 30]
    #[arg(long)]
    seconds: Option<u32>,
    /// [default: 120s]
    #[arg(long, value_parser = duration_arg)]
    blacklist_for: Option<Duration>,
    /// Let a blacklisted source's entry expire on schedule instead of refreshing it.
    #[arg(long)]
    no_refresh: bool,
    /// [default: drop]
    #[arg(long, value_enum)]
    action: Option<rules::Action>,
    /// IPv4 prefix length sources are counted by. [default: 32]
    #[arg(long)]
    mask: Option<u8>,
    /// IPv6 prefix length sources are counted by. [default: 64]
    #[arg(long)]
    mask6: Option<u8>,
    /// Count events only with the TTL first seen from the source.
    #[arg(long)]
    ttl_match: bool,
    /// A burst rule (bunch analysis) instead of a rate rule.
    #[arg(long)]
    burst: bool,
    /// Burst: largest gap inside a bunch. [default: 2s]
    #[arg(long, value_parser = duration_arg)]
    gap: Option<Duration>,
    /// Burst: one bunch this long blacklists. [default: 10]
    #[arg(long)]
    bunch_size: Option<u32>,
    /// Burst: this many bunches of --min-bunch within --window blacklist. [default: 10]
    #[arg(long)]
    bunch_count: Option<u32>,
    /// [default: 4]
    #[arg(long)]
    min_bunch: Option<u32>,
    /// [default: 24h]
    #[arg(long, value_parser = duration_arg)]
    window: Option<Duration>,
}

impl RuleArgs {
    fn spec(&self) -> RuleSpec {
        let mut spec = RuleSpec::named(&self.name);
        spec.kind = if self.burst {
            rules::Kind::Burst
        } else {
            rules::Kind::Rate
        };
        spec.dport = self.dport;
        spec.refresh = !self.no_refresh;
        spec.ttl_match = self.ttl_match;
        spec.events = self.events;
        macro_rules! given {
            ($($field:ident),*) => { $(if let Some(value) = self.$field { spec.$field = value; })* };
        }
        given!(
            proto,
            hitcount,
            seconds,
            blacklist_for,
            action,
            mask,
            mask6,
            gap,
            bunch_size,
            bunch_count,
            min_bunch,
            window
        );
        spec
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|err| err.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FlushWhat {
    Blacklist,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Network interface to attach to.
    #[arg(long)]
    iface: String,
    #[arg(long, value_enum, default_value_t)]
    mode: ModeChoice,
    /// TOML config file; built-in defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// `blocker list` filters of the stored bans.
#[derive(clap::Args)]
struct ListFilter {
    /// Only bans of this kind: permanent or temporary.
    #[arg(long)]
    kind: Option<String>,
    /// Only bans from this source: cli, import, offense, load...
    #[arg(long)]
    source: Option<String>,
    /// Only bans whose reason contains TEXT.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Only bans created at or after this time (RFC 3339) or this long ago (`1h`).
    #[arg(long, value_name = "TIME_OR_DURATION")]
    since: Option<String>,
    /// At most N bans.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

impl ListFilter {
    fn given(&self) -> bool {
        self.kind.is_some()
            || self.source.is_some()
            || self.reason.is_some()
            || self.since.is_some()
            || self.limit.is_some()
    }

    fn to_filter(&self, now: Timestamp) -> Result<blocker::listing::BanFilter, Error> {
        let since = self
            .since
            .as_deref()
            .map(|text| blocker::listing::parse_since(text, now))
            .transpose()?;
        Ok(blocker::listing::BanFilter {
            kind: self.kind.clone(),
            source: self.source.clone(),
            reason: self.reason.clone(),
            since,
            limit: self.limit,
            after: None,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListWhich {
    Bans,
    Allow,
    /// The dynamic blacklist filled by rules.
    Blacklist,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let foreground = matches!(cli.command, Command::Run { .. });
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    if foreground {
        subscriber.init();
    } else {
        subscriber.without_time().init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`blocker list | head`): it has what it wanted.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            let bad_input = err.downcast_ref::<Error>().is_some_and(Error::is_bad_input);
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Packaging runs these as any user on any machine: they touch neither pins nor state.
    match &cli.command {
        Command::Completions(args) => {
            return Ok(cli::completions::run(
                args,
                Cli::command(),
                &mut std::io::stdout().lock(),
            )?)
        }
        Command::Man(args) => {
            return cli::man::run(args, Cli::command(), &mut std::io::stdout().lock())
        }
        _ => {}
    }
    let pins = PinDir::new(&cli.pin_dir);
    let explicit_state = cli.state.as_deref();
    let state_path = &pins.state_path(explicit_state)?;
    match cli.command {
        Command::Load(args) => {
            let config = Config::load_or_default(args.config.as_deref())?;
            let state_path = pins.state_path(explicit_state.or(config.daemon.state.as_deref()))?;
            load(&pins, &state_path, &args, &config)?;
        }
        Command::Run {
            load: args,
            keep,
            listen,
            socket,
            token_file,
        } => run_foreground(
            &pins,
            explicit_state,
            &args,
            keep,
            (listen, socket, token_file),
        )?,
        Command::Unload { iface } => {
            for attachment in loader::unload(&pins, iface.as_deref())? {
                info!("detached from {}", attachment.iface);
            }
        }
        Command::Status { json, socket } => print_status(&pins, json, socket)?,
        Command::Ban {
            addrs,
            duration,
            reason,
            force,
        } => {
            let nets = parse_all(&addrs)?;
            let duration = duration.as_deref().map(parse_duration).transpose()?;
            reason.as_deref().map(text::check_reason).transpose()?;
            require_root()?;
            let mut store = Store::open_scoped(&pins, state_path, &nets)?;
            if !force {
                let guard = Guard::detect()?;
                for net in &nets {
                    guard.check(net, &store.state.allow)?;
                }
            }
            let expires_at = expiry_after(store.now.wall, duration)?;
            store.ban(&nets, expires_at, reason.as_deref());
            store.count_issued("cli", nets.len() as u64);
            store.commit(|| {})?;
            for net in &nets {
                match expires_at {
                    Some(at) => info!("banned {net} until {at:.0}"),
                    None => info!("banned {net} permanently"),
                }
            }
        }
        Command::Unban { addrs } => {
            let nets = parse_all(&addrs)?;
            require_root()?;
            let mut store = Store::open_scoped(&pins, state_path, &nets)?;
            let missing = store.unban(&nets);
            let dynamic = store.commit_unban(&nets)?;
            for net in &dynamic {
                info!("removed {net} from the dynamic blacklist");
            }
            let missing: Vec<IpNet> = missing
                .into_iter()
                .filter(|net| !dynamic.iter().any(|d| d.contains(net) || net.contains(d)))
                .collect();
            report_removed(&nets, &missing, "banned");
        }
        Command::Allow {
            addrs,
            reason,
            remove,
            force,
        } => {
            let nets = parse_all(&addrs)?;
            reason.as_deref().map(text::check_reason).transpose()?;
            require_root()?;
            let mut store = Store::open_scoped(&pins, state_path, &nets)?;
            if remove {
                let missing = store.disallow(&nets);
                if !force {
                    let guard = Guard::detect()?;
                    for net in &nets {
                        let (bans, allow) = (&store.state.bans, &store.state.allow);
                        guard.check_allow_removal(net, bans, allow, store.now.wall)?;
                    }
                }
                store.commit(|| {})?;
                report_removed(&nets, &missing, "on the allowlist");
            } else {
                if !force {
                    nets.iter().try_for_each(lockout::check_allow)?;
                }
                store.allow(&nets, reason.as_deref());
                store.commit(|| {})?;
                for net in &nets {
                    info!("allowed {net}");
                }
            }
        }
        Command::List {
            which,
            json,
            filter,
        } => list(&pins, state_path, which, json, &filter)?,
        Command::History { addr, json } => {
            let changes = blocker::history::of(state_path, &addr)?;
            blocker::history::print(&changes, json, &mut std::io::stdout().lock())?;
        }
        Command::Rule(command) => rule_command(&pins, state_path, command)?,
        Command::Flush {
            what: FlushWhat::Blacklist,
        } => {
            require_root()?;
            pins.require_loaded()?;
            let _lock = pins.lock()?;
            let removed = dynamic::remove_blacklisted(&pins, dynamic::Doomed::All)?;
            info!("flushed {} dynamic blacklist entries", removed.len());
        }
        Command::Analyze(args) => cli::analyze::run(&pins, state_path, args)?,
        Command::Events { json } => follow_events(&pins, state_path, json)?,
        Command::Scan(args) => cli::scan::scan(&args)?,
        Command::Top(args) => cli::top::run(&args, &pins, state_path)?,
        Command::Doctor(args) => {
            cli::doctor::run(&args, &pins, state_path, &mut std::io::stdout().lock())?
        }
        // Served before the pin directory is looked at, above.
        Command::Completions(_) | Command::Man(_) => {}
        Command::Daemon(args) => {
            if let Some(path) = &args.check_config {
                Config::load(path)?;
                writeln!(std::io::stdout(), "{}: ok", path.display())?;
                return Ok(());
            }
            let config = Config::load_or_default(args.config.as_deref())?;
            let state_path = pins.state_path(explicit_state.or(config.daemon.state.as_deref()))?;
            pins.require_loaded()?;
            serve_daemon(&pins, &state_path, &args, config, None)?;
        }
        Command::Report {
            addr,
            severity,
            weight,
            reason,
            key,
            socket,
            config,
        } => report(
            &pins,
            state_path,
            (addr, severity, weight, reason, key),
            &socket,
            config,
        )?,
        Command::Import(args) => cli::import::run(&pins, state_path, args)?,
        Command::Export(args) => cli::export::run(state_path, args)?,
        Command::Feeds(args) => cli::feeds::run(&pins, state_path, args)?,
    }
    Ok(())
}

fn load(
    pins: &PinDir,
    state_path: &Path,
    args: &LoadArgs,
    config: &Config,
) -> anyhow::Result<loader::Loaded> {
    let loaded = loader::load(pins, state_path, &args.iface, args.mode, config)?;
    info!(
        "attached to {} in {} mode; pins in {}",
        loaded.attachment.iface,
        loaded.attachment.mode.name(),
        pins.path.display()
    );
    if let Some(restored) = loaded.restored {
        info!("restored {restored} entries from {}", state_path.display());
    }
    lockout::warn_if_ssh_exposed(state_path);
    Ok(loaded)
}

/// Loads, then runs the daemon in the foreground until Ctrl-C or SIGTERM.
fn run_foreground(
    pins: &PinDir,
    explicit_state: Option<&Path>,
    args: &LoadArgs,
    keep: bool,
    (listen, socket, token_file): (Option<String>, Option<PathBuf>, Option<PathBuf>),
) -> anyhow::Result<()> {
    let config = Config::load_or_default(args.config.as_deref())?;
    let state_path = &pins.state_path(explicit_state.or(config.daemon.state.as_deref()))?;
    let mut loaded = load(pins, state_path, args, &config)?;
    let daemon_args = DaemonArgs {
        config: args.config.clone(),
        listen,
        socket,
        token_file,
        check_config: None,
    };
    let result = serve_daemon(
        pins,
        state_path,
        &daemon_args,
        config,
        Some(&mut loaded.ebpf),
    );
    if keep {
        info!("leaving the program attached (--keep)");
    } else {
        loader::unload(pins, Some(&args.iface))?;
        info!("detached from {}", args.iface);
    }
    result
}

/// Runs the daemon until Ctrl-C or SIGTERM; SIGHUP reloads the config file. With `ebpf`, the
/// program's own log messages are relayed too.
fn serve_daemon(
    pins: &PinDir,
    state_path: &Path,
    args: &DaemonArgs,
    config: Config,
    ebpf: Option<&mut aya::Ebpf>,
) -> anyhow::Result<()> {
    let listen: std::net::SocketAddr = args
        .listen
        .clone()
        .unwrap_or_else(|| config.daemon.listen.clone())
        .parse()
        .map_err(|_| Error::InvalidConfig {
            path: "--listen".into(),
            message: "use ADDR:PORT".into(),
        })?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.socket.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let daemon = Daemon::new(pins.clone(), state_path.to_path_buf(), config);
    let config_path = args.config.clone();
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut logger = ebpf
            .and_then(|ebpf| aya_log::EbpfLogger::init(ebpf).ok())
            // SAFETY: the AsyncFd owns the logger, so the fd outlives its registration.
            .and_then(|logger| unsafe { tokio::io::unix::AsyncFd::register(logger) }.ok());
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let stop = async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = terminate.recv() => break,
                    _ = hangup.recv() => match &config_path {
                        Some(path) => match Config::load(path) {
                            Ok(config) => { let _ = reload_tx.send(config).await; }
                            Err(err) => warn!("not reloading: {err}"),
                        },
                        None => info!("SIGHUP: no config file to reload"),
                    },
                    ready = async { logger.as_mut()?.readable_mut().await.ok() }, if logger.is_some() => {
                        if let Some(mut guard) = ready {
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    }
                }
            }
        };
        info!("running; Ctrl-C to stop");
        let listen = Listen {
            tcp: listen,
            socket,
            token_file: args.token_file.clone(),
        };
        daemon.serve(listen, reload_rx, stop).await
    })
}

/// Parses every argument before anything changes, warning about normalized ones.
fn parse_all(addrs: &[String]) -> Result<Vec<IpNet>, Error> {
    addrs
        .iter()
        .map(|text| {
            let parsed = parse_net(text)?;
            if let Some(given) = parsed.normalized_from {
                warn!("{given} has host bits set; using {}", parsed.net);
            }
            Ok(parsed.net)
        })
        .collect()
}

fn report_removed(nets: &[IpNet], missing: &[IpNet], what: &str) {
    for net in nets {
        if missing.contains(net) {
            warn!("{net} was not {what}");
        } else {
            info!("removed {net}");
        }
    }
}

fn print_status(pins: &PinDir, json: bool, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let status = status::read(pins)?;
    let socket = socket.unwrap_or_else(|| blocker::config::DaemonConfig::default().socket);
    let (jails, fleet) = cli::status_jails::fetch(&socket).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if json {
        let mut value = serde_json::to_value(&status)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("jails".into(), serde_json::to_value(&jails)?);
            object.insert("fleet".into(), serde_json::to_value(&fleet)?);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        status::write_table(&status, &mut out)?;
        cli::status_jails::write_table(&jails, &mut out)?;
        if let Some(fleet) = &fleet {
            fleet.write_table(&mut out)?;
        }
    }
    Ok(())
}

/// Lists entries one at a time: the stored bans stream from the database (filtered), then the
/// allowlist and the dynamic blacklist, unless the filter names bans only.
fn list(
    pins: &PinDir,
    state_path: &Path,
    which: Option<ListWhich>,
    json: bool,
    filter: &ListFilter,
) -> anyhow::Result<()> {
    let now = Now::read();
    let ban_filter = filter.to_filter(now.wall)?;
    ban_filter.check()?;
    // The allowlist, rules and counters, without the bans.
    let state = State::read_scope(state_path, &[])?.unwrap_or_default();
    let wants = |kind: ListWhich| {
        which.is_none_or(|which| which == kind) && (kind == ListWhich::Bans || !filter.given())
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let mut emit = |row: Listed| -> Result<(), Error> {
        let io = |source| Error::Io {
            context: "writing the list".into(),
            source,
        };
        if json {
            let separator: &[u8] = if first { b"[\n  " } else { b",\n  " };
            out.write_all(separator).map_err(io)?;
            serde_json::to_writer(&mut out, &row)
                .map_err(std::io::Error::from)
                .map_err(io)?;
        } else {
            if first {
                writeln!(
                    out,
                    "{:<43} {:<10} {:<21} {:<21} reason",
                    "addr", "kind", "expires", "created"
                )
                .map_err(io)?;
            }
            let time = |t: Option<Timestamp>, none: &str| {
                t.map_or(none.to_string(), |t| format!("{t:.0}"))
            };
            let reason = match (&row.rule, row.hits) {
                (Some(rule), Some(hits)) => format!("rule {rule}, {hits} hits"),
                _ => row.reason.clone().unwrap_or_default(),
            };
            writeln!(
                out,
                "{:<43} {:<10} {:<21} {:<21} {}",
                row.addr,
                row.kind,
                time(row.expires_at, "never"),
                time(row.created_at, "-"),
                escape(&reason),
            )
            .map_err(io)?;
        }
        first = false;
        Ok(())
    };
    if wants(ListWhich::Bans) {
        blocker::listing::bans(state_path, &ban_filter, now.wall, &mut emit)?;
    }
    if wants(ListWhich::Allow) {
        state.listed_allow().into_iter().try_for_each(&mut emit)?;
    }
    // The dynamic blacklist lives only in the kernel: listed when loaded.
    if wants(ListWhich::Blacklist) && (which.is_some() || pins.maps_pinned()) {
        pins.require_loaded()?;
        dynamic::blacklist(pins, state.rules.as_ref(), &now)?
            .into_iter()
            .try_for_each(&mut emit)?;
    }
    let empty = first;
    if json {
        out.write_all(if empty { b"[]\n" } else { b"\n]\n" })?;
    } else if empty {
        writeln!(
            out,
            "{:<43} {:<10} {:<21} {:<21} reason",
            "addr", "kind", "expires", "created"
        )?;
    }
    out.flush()?;
    Ok(())
}

fn rule_command(pins: &PinDir, state_path: &Path, command: RuleCommand) -> anyhow::Result<()> {
    match command {
        RuleCommand::Add(args) => {
            let spec = args.spec();
            spec.compile(0).map_err(Error::InvalidRule)?;
            require_root()?;
            let mut store = Store::open(pins, state_path)?;
            let slot = store.upsert_rule(spec)?;
            store.commit(|| {})?;
            info!("rule {} in slot {slot}", args.name);
            lockout::warn_if_ssh_exposed(state_path);
        }
        RuleCommand::Remove { name } => {
            require_root()?;
            let mut store = Store::open(pins, state_path)?;
            store.remove_rule(&name)?;
            store.commit(|| {})?;
            info!("removed rule {name}");
        }
        RuleCommand::List { json } => {
            pins.require_loaded()?;
            let table = State::load(state_path)?.rules.unwrap_or_default();
            let stats = dynamic::rule_stats(pins)?;
            #[derive(Serialize)]
            struct Row<'a> {
                slot: u32,
                #[serde(flatten)]
                spec: &'a RuleSpec,
                events_seen: u64,
                sources_blacklisted: u64,
                packets_dropped: u64,
                packets_rejected: u64,
            }
            let rows: Vec<Row> = table
                .rules
                .iter()
                .map(|placed| {
                    let counts = stats.get(placed.slot as usize).copied().unwrap_or_default();
                    Row {
                        slot: placed.slot,
                        spec: &placed.spec,
                        events_seen: counts.events,
                        sources_blacklisted: counts.blacklisted,
                        packets_dropped: counts.dropped,
                        packets_rejected: counts.rejected,
                    }
                })
                .collect();
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(
                    out,
                    "{:<4} {:<16} {:>9} {:>11} {:>9} {:>9}  definition",
                    "slot", "name", "events", "blacklisted", "dropped", "rejected"
                )?;
                for row in rows {
                    writeln!(
                        out,
                        "{:<4} {:<16} {:>9} {:>11} {:>9} {:>9}  {}",
                        row.slot,
                        escape(&row.spec.name),
                        row.events_seen,
                        row.sources_blacklisted,
                        row.packets_dropped,
                        row.packets_rejected,
                        escape(&row.spec.summary())
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// `blocker report`: through the daemon's socket when it answers, directly otherwise.
fn report(
    pins: &PinDir,
    state_path: &Path,
    (addr, severity, weight, reason, key): (
        String,
        Option<Level>,
        Option<f64>,
        String,
        Option<String>,
    ),
    socket: &Path,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let severity = match (severity, weight) {
        (_, Some(weight)) => Severity::Weight(weight),
        (Some(level), None) => Severity::Named(level),
        (None, None) => Severity::Named(Level::Minor),
    };
    parse_net(&addr)?;
    let body =
        serde_json::json!({ "addr": addr, "severity": severity, "reason": reason, "key": key });
    if socket.exists() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        if let Ok((status, text)) = runtime.block_on(report_via_socket(socket, &body)) {
            if status >= 400 {
                let bad = status < 500;
                let err = anyhow::anyhow!("daemon answered {status}: {}", text.trim());
                return Err(if bad {
                    Error::InvalidOffense(text.trim().to_string()).into()
                } else {
                    err
                });
            }
            writeln!(std::io::stdout(), "{}", text.trim())?;
            return Ok(());
        }
        warn!(
            "no daemon answered on {}; scoring directly",
            socket.display()
        );
    }
    require_root()?;
    let config = Config::load_or_default(config.as_deref())?;
    let report = OffenseReport {
        addr,
        severity,
        reason,
        key,
    };
    let answer = record_offense(pins, state_path, &config, &report)?;
    writeln!(std::io::stdout(), "{}", serde_json::to_string(&answer)?)?;
    Ok(())
}

fn follow_events(pins: &PinDir, state_path: &Path, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        tokio::select! {
            result = events::print(pins, state_path, json, std::io::stdout()) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
