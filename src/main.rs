use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use geolb::control::{self, OverrideState, Target};

#[derive(Parser)]
#[command(
    name = "geolb",
    version,
    about = "GeoDNS server and L7/L4 load balancer in one daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr or `[log] file`).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from the geolb running with the
        /// same state_dir (zero-downtime restart or upgrade); without one,
        /// start normally.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config without binding anything, like `nginx -t`.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Explain a GeoDNS decision: where the client is, each candidate data
    /// center's distance and state, and the answer.
    Lookup {
        #[arg(long, short)]
        config: PathBuf,
        /// The client (or resolver subnet) address.
        ip: std::net::IpAddr,
        /// A geo name (default: every geo name).
        #[arg(long)]
        name: Option<String>,
        /// A running daemon's admin address, for live data-center states.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// A self-contained demo on loopback, with built-in backends.
    Demo,
    /// Register a backend for a pool's discovery in etcd and keep it
    /// registered (under a lease) until SIGTERM or SIGINT, which revoke it.
    Register(geolb::register::Options),
    /// Ask the running daemon to reload its config (POST /reload). Exit 0
    /// reloaded; 1 refused (each error printed), unauthorized or unreachable.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the running daemon's /status (JSON). Exit 1 if unreachable.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set or clear a runtime override (drain, down, auto) on a data center
    /// or a backend. Exit 0 only when the daemon answers 200.
    Override {
        #[command(subcommand)]
        target: OverrideTarget,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The config kept in etcd for nodes with `[cluster] config = "etcd"`:
    /// push, history, rollback.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check FILE as `geolb check` does (joined with --config's node
    /// sections) and, if valid, write it to PREFIX config/current as a new
    /// revision. Exit 1, nothing written, if it is invalid.
    Push {
        file: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// The pushes kept (the last 20): revision, when, by whom, sha256, size.
    History {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Push the text of revision REVISION again, as a new revision
    /// (checked again first).
    Rollback {
        revision: i64,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// Where the config document is kept.
#[derive(Args)]
struct EtcdArgs {
    /// A node's local file: its [cluster] says how to reach etcd, and a
    /// pushed document is checked joined with its sections.
    #[arg(long, short, conflicts_with_all = ["etcd", "prefix"])]
    config: Option<PathBuf>,
    /// etcd endpoints (plain http://), comma-separated; the document is
    /// then checked alone.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The key prefix [default: /geolb/].
    #[arg(long)]
    prefix: Option<String>,
    /// Recorded as who pushed [default: $USER@hostname].
    #[arg(long)]
    by: Option<String>,
}

impl EtcdArgs {
    fn target(&self) -> geolb::configctl::Target {
        match &self.config {
            Some(path) => geolb::configctl::Target::Node(path.clone()),
            None => geolb::configctl::Target::Etcd {
                endpoints: self.etcd.clone(),
                prefix: self.prefix.clone().unwrap_or_else(|| "/geolb/".to_owned()),
            },
        }
    }

    fn by(&self) -> String {
        self.by.clone().unwrap_or_else(geolb::configctl::default_by)
    }
}

/// Runs a `geolb config` command: its report on stdout (exit 0), or what
/// went wrong on stderr (exit 1).
fn config_command(action: ConfigAction) -> ExitCode {
    let rt = match runtime(Some(1), false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = rt.block_on(async {
        use geolb::configctl::{history, push, rollback};
        match &action {
            ConfigAction::Push { file, etcd } => push(&etcd.target(), file, &etcd.by()).await,
            ConfigAction::History { etcd } => history(&etcd.target()).await,
            ConfigAction::Rollback { revision, etcd } => {
                rollback(&etcd.target(), *revision, &etcd.by()).await
            }
        }
    });
    match done {
        Ok(report) => {
            let _ = writeln!(std::io::stdout(), "{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("geolb config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the running daemon's admin listener is, and its token.
#[derive(Args)]
struct AdminArgs {
    /// The admin API: ADDR (plain HTTP), https://HOST:PORT or
    /// unix:/path/to/admin.sock [default with --config: its [admin] socket
    /// if set and connectable, else [admin] listen (https with [admin]
    /// tls); else 127.0.0.1:9100].
    #[arg(long, global = true)]
    admin: Option<control::Endpoint>,
    /// With https: a PEM file of the CA(s) to trust [default: the bundled
    /// webpki roots].
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// With https: do not verify the admin listener's certificate.
    #[arg(long, global = true, conflicts_with = "ca")]
    insecure: bool,
    /// A file whose first line is the bearer token [default: the config's
    /// [admin] token_file with --config].
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The daemon's config file, read for [admin] listen, tls, socket and
    /// token_file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum OverrideTarget {
    /// A data center (DNS answers): `geolb override datacenter eu-west drain`.
    Datacenter {
        /// The `[[datacenter]]` name.
        name: String,
        state: StateArg,
    },
    /// A backend, in every pool that has it or in `--pool` only.
    Backend {
        /// The backend's `addr` as configured (IP:port).
        addr: std::net::SocketAddr,
        state: StateArg,
        /// Only in this pool (POST /pools/POOL/backends/ADDR/STATE).
        #[arg(long)]
        pool: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    /// No new requests or answers; in-flight ones finish.
    Drain,
    /// As if every health check failed.
    Down,
    /// Back to the config and the health checks.
    Auto,
}

impl From<StateArg> for OverrideState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Drain => OverrideState::Drain,
            StateArg::Down => OverrideState::Down,
            StateArg::Auto => OverrideState::Auto,
        }
    }
}

/// Runs one command against the running daemon: its report on stdout
/// (exit 0) or stderr (exit 1).
fn talk<F>(command: &str, args: &AdminArgs, run: F) -> ExitCode
where
    F: AsyncFnOnce(&control::Admin) -> Result<control::Report, control::ControlError>,
{
    let tls = control::TlsOptions {
        ca: args.ca.clone(),
        insecure: args.insecure,
    };
    let admin = match control::admin(
        args.admin.clone(),
        args.token_file.as_deref(),
        args.config.as_deref(),
        &tls,
    ) {
        Ok(admin) => admin,
        Err(e) => {
            eprintln!("geolb {command}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime(Some(1), false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&admin)) {
        Ok(report) if report.ok => {
            // A closed pipe (`geolb status | head`) is not worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", report.text);
            ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!("geolb {command}: {}", report.text);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("geolb {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the logger as `[log]` says (stderr and text without a config);
/// the guard writes out queued lines when dropped, at exit.
fn init_logging(config: &geolb::config::LogConfig) -> Option<geolb::logging::Guard> {
    match geolb::logging::init(config) {
        Ok(guard) => Some(guard),
        Err(e) => {
            eprintln!("geolb: {e}");
            None
        }
    }
}

/// `huge_pages`: the main heap is marked (`huge_pages::mark_main_heap`);
/// with several workers, their arenas are marked as they start.
fn runtime(
    worker_threads: Option<usize>,
    huge_pages: bool,
) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker: a current-thread runtime runs every task on this thread
    // with no work-stealing queues or cross-thread wake-ups.
    let mut builder = if worker_threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = worker_threads {
            b.worker_threads(n);
        }
        if huge_pages {
            b.on_thread_start(geolb::huge_pages::mark_thread_arena);
        }
        b
    };
    builder.enable_all().build()
}

/// Runs a command that logs to stderr on a runtime of `worker_threads`;
/// exit 0 when it ends well.
fn command(
    name: &str,
    worker_threads: Option<usize>,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let Some(_log) = init_logging(&Default::default()) else {
        return ExitCode::FAILURE;
    };
    let rt = match runtime(worker_threads, false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geolb {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // First, before code built for a feature this CPU may lack runs.
    geolb::cpu::refuse_a_cpu_without_what_this_build_uses();
    run()
}

// Its own function: its stack set-up stays out of `main`, before the check.
#[inline(never)]
fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match geolb::app::first_config(&config) {
            Ok(first) => {
                for note in &first.notes {
                    eprintln!("{note}");
                }
                let checked = &first.checked;
                for warning in &checked.warnings {
                    eprintln!("{}: warning: {warning}", config.display());
                }
                match &first.etcd {
                    Some((etcd, document)) => println!(
                        "{}: {} (with {} at revision {})",
                        config.display(),
                        checked.summary(),
                        etcd.store.current_key(),
                        document.revision
                    ),
                    None => println!("{}: {}", config.display(), checked.summary()),
                }
                // What to give the registrar of each signed zone.
                for ds in checked.ds_records() {
                    println!("{ds}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: path,
            takeover,
        } => {
            let first = match geolb::app::first_config(&path) {
                Ok(first) => first,
                Err(e) => {
                    eprintln!("cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Set up once the config says where lines go; nothing logs before.
            let Some(_log) = init_logging(&first.checked.config.log) else {
                return ExitCode::FAILURE;
            };
            let runtime_config = &first.checked.config.runtime;
            let huge_pages = runtime_config.huge_pages
                && match geolb::huge_pages::mark_main_heap() {
                    Ok(bytes) => {
                        tracing::info!(mib = bytes >> 20, "heap on transparent huge pages");
                        true
                    }
                    Err(why) => {
                        tracing::info!("heap on 4 KiB pages: {why}");
                        false
                    }
                };
            let rt = match runtime(runtime_config.worker_threads, huge_pages) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let path = std::path::absolute(&path).unwrap_or(path);
            match rt.block_on(geolb::app::serve(path, first, None, takeover)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("geolb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Lookup {
            config,
            ip,
            name,
            admin,
        } => {
            let rt = match runtime(Some(1), false) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(geolb::lookup::run(&config, ip, name.as_deref(), admin)) {
                Ok(report) => print!("{report}"),
                Err(e) => eprintln!("geolb lookup: {e:#}"),
            }
            ExitCode::SUCCESS
        }
        Command::Config { action } => config_command(action),
        Command::Reload { admin } => talk("reload", &admin, control::reload),
        Command::Status { admin } => talk("status", &admin, control::status),
        Command::Override { target, admin } => {
            let (target, state) = match target {
                OverrideTarget::Datacenter { name, state } => (Target::Datacenter(name), state),
                OverrideTarget::Backend { addr, state, pool } => {
                    (Target::Backend { addr, pool }, state)
                }
            };
            talk("override", &admin, async |a| {
                control::set_override(a, &target, state.into()).await
            })
        }
        Command::Register(options) => {
            // One thread: a lease and a signal are all it waits on.
            command("register", Some(1), geolb::register::run(options))
        }
        Command::Demo => command("demo", None, geolb::demo::run()),
    }
}
