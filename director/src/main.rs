//! `director`: an XDP-accelerated LVS-DR load balancer with VRRP.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use director::config::Config;

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
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file; on error print FILE:LINE:COL: problem.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                let real: usize = c.virtual_server.iter().map(|v| v.real_server.len()).sum();
                println!(
                    "{}: ok ({} virtual servers, {} real servers)",
                    config.display(),
                    c.virtual_server.len(),
                    real
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("director: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(director::daemon::run(config))?;
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
