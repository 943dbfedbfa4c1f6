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
        /// Refresh every SECONDS (default 1) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// State directory of the daemon (where its control socket is).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Take the state directory from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Reload the running daemon's configuration (like SIGHUP): the new file
    /// is validated first; on error nothing changes and the error is printed.
    Reload {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the VRRP adverts seen on an interface, grouped by virtual
    /// router; flags two masters for one VRID as a split brain.
    WatchVrrp {
        /// Interface to watch.
        interface: String,
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long)]
        duration: Option<f64>,
        /// Print the final picture as JSON (with --duration).
        #[arg(long)]
        json: bool,
    },
    /// Change a real server of the running daemon without editing the file
    /// (a reload reads the file again): add, remove, weight, drain, enable.
    RealServer {
        /// add, remove, weight, drain (weight 0, remembering the weight) or
        /// enable (back to the remembered weight).
        #[arg(value_parser = ["add", "remove", "weight", "drain", "enable"])]
        action: String,
        /// The virtual server's address.
        #[arg(long)]
        vip: std::net::IpAddr,
        /// The virtual server's port.
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// The real server's address.
        #[arg(long)]
        address: std::net::IpAddr,
        /// For add and weight.
        #[arg(long)]
        weight: Option<u32>,
        /// Also write the change into the daemon's config file (comments
        /// and layout kept), so a reload or restart keeps it.
        #[arg(long)]
        persist: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Translate a keepalived.conf (and its includes) into director's TOML,
    /// printed on stdout. Every directive that cannot be translated is
    /// listed on stderr as FILE:LINE (and as a comment in the output).
    ImportKeepalived {
        /// The keepalived configuration file.
        file: PathBuf,
        /// Exit with status 1 when anything was not translated.
        #[arg(long)]
        strict: bool,
    },
    /// Drain this director: withdraw every BGP route, wait `withdraw_wait`,
    /// then stop the daemon (returns once it has stopped).
    Drain {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
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
            let path = config.clone();
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if flush {
                flush_state(&Target::of(&config))
            } else {
                init_logging();
                run(config, path).inspect_err(|e| tracing::error!("{}", report(e)))
            }
        }
        Command::Status {
            json,
            watch,
            state_dir,
            config,
        } => state_dir_of(state_dir, config).and_then(|dir| match watch {
            None => show_status(&dir, json),
            Some(every) => loop {
                // Clear the screen and home the cursor, like watch(1).
                print!("\x1b[2J\x1b[H");
                show_status(&dir, json)?;
                std::thread::sleep(std::time::Duration::from_secs_f64(every.clamp(0.1, 3600.0)));
            },
        }),
        Command::Flush { state_dir, config } => {
            target_of(state_dir, config).and_then(|t| flush_state(&t))
        }
        Command::Reload { state_dir, config } => {
            state_dir_of(state_dir, config).and_then(|dir| reload(&dir))
        }
        Command::WatchVrrp {
            interface,
            duration,
            json,
        } => watch_vrrp(&interface, duration, json),
        Command::RealServer {
            action,
            vip,
            port,
            protocol,
            address,
            weight,
            persist,
            state_dir,
            config,
        } => state_dir_of(state_dir, config).and_then(|dir| {
            let change = control::RealServerChange {
                action,
                vip,
                port,
                protocol,
                address,
                weight,
                persist,
            };
            command(&dir, &Request::RealServer(change))?;
            println!("done");
            Ok(())
        }),
        Command::Drain { state_dir, config } => state_dir_of(state_dir, config).and_then(|dir| {
            command(&dir, &Request::Drain)?;
            println!("routes withdrawn; waiting for the daemon to stop");
            let socket = dir.join(control::SOCKET);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
            while socket.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            println!("drained");
            Ok(())
        }),
        Command::ImportKeepalived { file, strict } => match director::import::import(&file) {
            Ok(imp) => {
                print!("{}", imp.toml);
                for w in &imp.warnings {
                    eprintln!("{w}");
                }
                if !imp.warnings.is_empty() {
                    eprintln!(
                        "{} directive(s) not translated (listed above and as comments in the output)",
                        imp.warnings.len()
                    );
                    if strict {
                        return ExitCode::FAILURE;
                    }
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "director",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("director: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: our errors' messages already
/// carry their source's text, which anyhow's chain would repeat.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
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

/// The daemon a command talks to: its state directory (control socket)
/// and where its dataplane is pinned.
struct Target {
    state_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Target {
    fn of(config: &Config) -> Target {
        Target {
            state_dir: config.global.state_dir.clone(),
            pin_dir: config.global.pin_dir(),
        }
    }
}

/// `--state-dir DIR`, else `--config FILE`'s, else the default config's
/// when that file exists, else the default state directory.
fn target_of(state_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<Target> {
    if let Some(dir) = state_dir {
        return Ok(Target {
            pin_dir: director::dataplane::bpffs::default_pin_dir(&dir),
            state_dir: dir,
        });
    }
    match config {
        Some(path) => Ok(Target::of(&Config::load(&path)?)),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            Ok(Target::of(&Config::load(Path::new(DEFAULT_CONFIG))?))
        }
        None => {
            let dir = PathBuf::from(DEFAULT_STATE_DIR);
            Ok(Target {
                pin_dir: director::dataplane::bpffs::default_pin_dir(&dir),
                state_dir: dir,
            })
        }
    }
}

fn state_dir_of(state_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(target_of(state_dir, config)?.state_dir)
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
        Response::Ok { .. } => bail!("unexpected answer from the daemon"),
    }
}

fn watch_vrrp(interface: &str, duration: Option<f64>, json: bool) -> anyhow::Result<()> {
    use director::vrrp::watch;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let link = director::neighbor::Neighbors::open(interface).await?.link();
        let w = watch::watch(
            interface,
            link.index,
            duration.map(|d| std::time::Duration::from_secs_f64(d.clamp(0.1, 86_400.0))),
            |w| {
                if !json {
                    print!("\x1b[2J\x1b[H{}", watch::render(&w.routers()));
                }
            },
        )
        .await?;
        let routers = w.routers();
        if json {
            println!("{}", serde_json::to_string_pretty(&routers)?);
        } else {
            print!("{}", watch::render(&routers));
        }
        anyhow::Ok(())
    })
}

/// Sends a command that answers ok or an error; the error is the result.
fn command(state_dir: &Path, request: &Request) -> anyhow::Result<()> {
    match control::request(state_dir, request)? {
        Response::Ok { .. } => Ok(()),
        Response::Error { error } => bail!("{error}"),
        Response::Status(_) => bail!("unexpected answer from the daemon"),
    }
}

fn reload(state_dir: &Path) -> anyhow::Result<()> {
    match command(state_dir, &Request::Reload) {
        Ok(()) => {
            println!("reloaded");
            Ok(())
        }
        Err(e) => {
            // The daemon's error already names FILE:LINE:COL.
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn flush_state(target: &Target) -> anyhow::Result<()> {
    let removed = daemon::flush(&target.state_dir, &target.pin_dir)?;
    if removed.is_empty() {
        println!(
            "nothing to flush (no pins under {}, no IPVS services of {})",
            target.pin_dir.display(),
            target.state_dir.display()
        );
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(())
}

fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(config, path))?;
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
