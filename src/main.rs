use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run the daemon in the foreground (logs to stderr).
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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GEOLB_LOG").unwrap_or_else(|_| {
        // hickory logs every query at info and every bad OPT at warn.
        tracing_subscriber::EnvFilter::new("info,hickory_server=warn,hickory_proto=error")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker: a current-thread runtime runs every task on this thread
    // with no work-stealing queues or cross-thread wake-ups.
    let mut builder = if worker_threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = worker_threads {
            b.worker_threads(n);
        }
        b
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match geolb::reload::check(&config, None) {
            Ok(checked) => {
                let c = &checked.config;
                let backends: usize = c.pools.iter().map(|p| p.backends.len()).sum();
                println!(
                    "{}: ok: {} listener(s), {} pool(s) with {} backend(s), {} data center(s), {} zone(s)",
                    config.display(),
                    c.listeners.len(),
                    c.pools.len(),
                    backends,
                    c.datacenters.len(),
                    c.dns.as_ref().map_or(0, |d| d.zones.len()),
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!(
                    "{}: invalid, {} error(s):",
                    config.display(),
                    errors.0.len()
                );
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: path,
            takeover,
        } => {
            init_logging();
            let checked = match geolb::reload::check(&path, None) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!(
                        "{}: cannot start, {} error(s):",
                        path.display(),
                        errors.0.len()
                    );
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let rt = match runtime(checked.config.runtime.worker_threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let path = std::path::absolute(&path).unwrap_or(path);
            match rt.block_on(geolb::app::serve(path, checked, None, takeover)) {
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
            let rt = match runtime(Some(1)) {
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
        Command::Demo => {
            init_logging();
            let rt = match runtime(None) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(geolb::demo::run()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("geolb demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
