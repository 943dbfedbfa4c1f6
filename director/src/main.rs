//! `director`: an XDP-accelerated LVS-DR load balancer with VRRP.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::Parser as _;

use director::{
    cli::{Cli, Command, DEFAULT_CONFIG},
    config::{Config, DEFAULT_STATE_DIR},
    daemon, logging,
    manage::control::{self, Request, Response},
    manage::status,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A command-line tool whose reader went away (`director status |
        // grep -q master`) ends quietly, as Unix tools do, instead of
        // panicking on the write. Not the daemon: its sockets handle EPIPE.
        // SAFETY: set before any thread exists; SIG_DFL is a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
                    say_error(&e.to_string());
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
        Command::Explain {
            client,
            service,
            json,
            syn,
            state_dir,
            config,
        } => explain(&client, &service, json, syn, state_dir, config),
        Command::Doctor { vip, json, config } => match doctor(&config, vip, json) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Flush { state_dir, config } => {
            target_of(state_dir, config).and_then(|t| flush_state(&t))
        }
        Command::Reload { state_dir, config } => {
            state_dir_of(state_dir, config).and_then(|dir| reload(&dir))
        }
        Command::Restart { state_dir, config } => {
            state_dir_of(state_dir, config).and_then(|dir| restart(&dir))
        }
        Command::WatchVrrp {
            interface,
            duration,
            json,
        } => watch_vrrp(&interface, duration, json),
        Command::RealServer {
            change,
            state_dir,
            config,
        } => state_dir_of(state_dir, config).and_then(|dir| {
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
        Command::ImportKeepalived {
            file,
            strict,
            config_id,
        } => match match config_id {
            Some(id) => director::import::import_for(&director::import::Disk, &file, &id),
            None => director::import::import(&file),
        } {
            Ok(imp) => {
                // --strict with anything left out prints no config: nothing
                // half-imported lands where the output was redirected.
                let refused = strict && !imp.warnings.is_empty();
                if !refused {
                    print!("{}", imp.toml);
                }
                for n in &imp.notes {
                    eprintln!("{n}");
                }
                for w in &imp.warnings {
                    eprintln!("{w}");
                }
                if !imp.warnings.is_empty() {
                    if refused {
                        eprintln!(
                            "{} directive(s) not translated (listed above): --strict prints no config",
                            imp.warnings.len()
                        );
                        return ExitCode::FAILURE;
                    }
                    eprintln!(
                        "{} directive(s) not translated (listed above and as comments in the output)",
                        imp.warnings.len()
                    );
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Man { dir } => director::cli::write_man_pages(&dir)
            .map(|files| {
                for f in files {
                    println!("{}", f.display());
                }
            })
            .map_err(Into::into),
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
            say_error(&format!("director: {}", report(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Prints an error that ends the command on stderr; under systemd each of
/// its lines is an error in the journal (`journalctl -p err`).
fn say_error(said: &str) {
    if logging::stderr_is_journal() {
        for line in said.lines() {
            eprintln!("<{}>{line}", logging::priority(tracing::Level::ERROR));
        }
    } else {
        eprintln!("{said}");
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
        let link = director::net::neighbor::Neighbors::open(interface)
            .await?
            .link();
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
            eprintln!("reload refused, the running configuration is unchanged: {e}");
            std::process::exit(1);
        }
    }
}

/// `director restart`: asks the daemon to hand over and execute itself
/// again, then waits (up to 30 s) for the new process to answer.
fn restart(state_dir: &Path) -> anyhow::Result<()> {
    let started = |r| match r {
        Ok(Response::Status(s)) => Some(s.started_at),
        _ => None,
    };
    let before = started(control::request(state_dir, &Request::Status));
    command(state_dir, &Request::Restart)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The old process removes its socket as it goes; the new one binds it.
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Ok(Response::Status(s)) = control::request(state_dir, &Request::Status)
            && Some(s.started_at) != before
        {
            println!("restarted (pid {})", s.pid);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the daemon of {} did not come back within 30 s: see its log (journalctl -u director)",
                state_dir.display()
            );
        }
    }
}

/// `director doctor`: whether every check passed.
fn doctor(config: &Path, vip: Option<std::net::IpAddr>, json: bool) -> anyhow::Result<bool> {
    use director::manage::doctor;
    let config = Config::load(config)?;
    if let Some(v) = vip
        && !config
            .virtual_server
            .iter()
            .any(|vs| vs.members.iter().any(|m| m.addresses().contains(&v)))
    {
        bail!("no virtual server of {v} in the configuration");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let findings = runtime.block_on(doctor::check(&config, vip))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", doctor::render(&findings));
    }
    Ok(findings.iter().all(|f| f.level != "fail"))
}

/// `director explain CLIENT[:PORT] VIP:PORT[/PROTO]`.
fn explain(
    client: &str,
    service: &str,
    json: bool,
    syn: bool,
    state_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use director::dataplane::xdp::explain::{self, Explainer, Query};
    let (client, client_port) = director::cli::parse_endpoint(client, false).map_err(|e| {
        anyhow::anyhow!("client `{client}`: {e} (ADDR or ADDR:PORT, [ADDR]:PORT for IPv6)")
    })?;
    let service = director::cli::parse_service(service).map_err(|e| {
        anyhow::anyhow!("service `{service}`: {e} (VIP:PORT, optionally /tcp or /udp)")
    })?;
    // The sorry server, when the configuration can be read.
    let loaded = match (&state_dir, &config) {
        (None, Some(path)) => Some(Config::load(path)?),
        (None, None) if Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG)).ok()
        }
        _ => None,
    };
    let sorry = loaded.as_ref().and_then(|c| {
        c.virtual_server
            .iter()
            .find(|vs| {
                vs.protocol == service.protocol
                    && vs.members.iter().any(|m| {
                        m.addresses().contains(&service.address)
                            && (m.ports == (0, 0)
                                || (m.ports.0..=m.ports.1).contains(&service.port))
                    })
            })
            .and_then(|vs| vs.sorry_server)
    });
    let target = target_of(state_dir, config)?;
    let pins = director::dataplane::bpffs::prepare(
        &target.pin_dir,
        director::dataplane::bpffs::Purpose::Find,
    )?
    .filter(|p| p.path.join(director_common::MAP_SERVICES).exists())
    .with_context(|| {
        format!(
            "no pinned XDP dataplane under {} (explain reads the XDP dataplane; with dataplane = \"ipvs\" see ipvsadm -Lnc)",
            target.pin_dir.display()
        )
    })?;
    let explainer = Explainer::from_pins(&pins.path)?;
    let q = Query {
        client,
        client_port,
        service,
        syn,
    };
    let e = explainer.explain(&q, explain::coarse_now(), sorry);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", explain::render(&e));
    }
    Ok(())
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
    // The binary as started: after an upgrade replaced the file, this
    // path names the new binary (/proc/self/exe would name the old one).
    let exe = std::env::current_exe().context("finding our own binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let stopped = runtime.block_on(daemon::run(config, path))?;
    drop(runtime);
    if stopped == daemon::Stopped::Reexec {
        use std::os::unix::process::CommandExt as _;
        tracing::info!(binary = %exe.display(), "executing the binary again");
        let e = std::process::Command::new(&exe).args(&args).exec();
        bail!("cannot execute {} again: {e}", exe.display());
    }
    Ok(())
}

/// Logs go to stderr; `DIRECTOR_LOG` (tracing's env-filter syntax) sets the
/// level, `info` by default. `log` records (aya, the XDP program) join in.
/// A `DIRECTOR_LOG` that does not parse is said once, and `info` applies.
/// `DIRECTOR_LOG_FORMAT=json` writes one JSON object per line (`timestamp`,
/// `level`, `message`, `target` and the event's fields at the top level);
/// `text` (the default) the usual lines. When stderr is journald's stream
/// (systemd's `JOURNAL_STREAM` names it), every line starts with its
/// syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug),
/// which journald takes off and records: `journalctl -p warning -u
/// director` shows the warnings and errors.
fn init_logging() {
    let (filter, refused) = match std::env::var("DIRECTOR_LOG") {
        Ok(v) if !v.trim().is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new("info"),
                Some((v, e.to_string())),
            ),
        },
        _ => (tracing_subscriber::EnvFilter::new("info"), None),
    };
    let format = std::env::var("DIRECTOR_LOG_FORMAT").unwrap_or_default();
    let json = format.trim().eq_ignore_ascii_case("json");
    let journal = logging::stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if json {
        let f = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        builder
            .event_format(logging::Priority::new(f, journal))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .init();
    } else {
        let f = tracing_subscriber::fmt::format();
        builder
            .event_format(logging::Priority::new(f, journal))
            .init();
    }
    if let Some((value, error)) = refused {
        tracing::warn!(%value, %error, "DIRECTOR_LOG does not parse as a tracing filter: logging at info");
    }
    if !json && !format.trim().is_empty() && !format.trim().eq_ignore_ascii_case("text") {
        tracing::warn!(value = %format, "DIRECTOR_LOG_FORMAT is neither text nor json: logging as text");
    }
}
