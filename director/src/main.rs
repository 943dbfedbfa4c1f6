//! `director`: an XDP-accelerated LVS-DR load balancer with VRRP.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use director::{
    config::{Config, DEFAULT_STATE_DIR},
    control::{self, Request, Response},
    daemon, status,
};

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/director/director.toml";

#[derive(Parser)]
#[command(
    name = "director",
    version,
    about = "XDP-accelerated LVS-DR load balancer with VRRP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM. The XDP
    /// dataplane is pinned and keeps forwarding after the daemon exits; the
    /// next `director run` adopts it without a gap.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Instead of running: remove the pinned dataplane (detaching the
        /// XDP program and freeing its maps and flows), then exit.
        #[arg(long)]
        flush: bool,
    },
    /// Validate a configuration file; on error print FILE:LINE:COL: problem.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the running daemon's virtual servers, real servers and counters.
    Status {
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
        /// State directory of the daemon (where its control socket is).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Take the state directory from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove the pinned dataplane of a state directory (same as `run --flush`).
    Flush {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { config } => {
            // The error already reads FILE:LINE:COL: problem; print it as is.
            if let Err(e) = check_config(&config) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            Ok(())
        }
        Command::Run { config, flush } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if flush {
                flush_state(&config.global.state_dir)
            } else {
                init_logging();
                run(config).inspect_err(|e| tracing::error!("{e:#}"))
            }
        }
        Command::Status {
            json,
            state_dir,
            config,
        } => state_dir_of(state_dir, config).and_then(|dir| show_status(&dir, json)),
        Command::Flush { state_dir, config } => {
            state_dir_of(state_dir, config).and_then(|dir| flush_state(&dir))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("director: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path) -> Result<(), director::config::ConfigError> {
    let c = Config::load(path)?;
    let real: usize = c.virtual_server.iter().map(|v| v.real_server.len()).sum();
    println!(
        "{}: ok ({} virtual servers, {} real servers)",
        path.display(),
        c.virtual_server.len(),
        real
    );
    Ok(())
}

fn state_dir_of(state_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = state_dir {
        return Ok(dir);
    }
    if let Some(path) = config {
        return Ok(Config::load(&path)?.global.state_dir);
    }
    Ok(PathBuf::from(DEFAULT_STATE_DIR))
}

fn show_status(state_dir: &Path, json: bool) -> anyhow::Result<()> {
    match control::request(state_dir, &Request::Status)? {
        Response::Status(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
            Ok(())
        }
        Response::Error { error } => bail!("the daemon answered: {error}"),
    }
}

fn flush_state(state_dir: &Path) -> anyhow::Result<()> {
    let removed = daemon::flush(state_dir)?;
    if removed.is_empty() {
        println!("nothing pinned under {}", state_dir.display());
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(())
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(config))?;
    Ok(())
}

/// Logs go to stderr; `DIRECTOR_LOG` (tracing's env-filter syntax) sets the
/// level, `info` by default. `log` records (aya, the XDP program) join in.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIRECTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
