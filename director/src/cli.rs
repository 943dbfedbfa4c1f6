//! The command line (clap): the `director` binary parses it, and
//! `cargo xtask package` renders its man pages and shell completions from
//! it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/director/director.toml";

#[derive(Parser)]
#[command(
    name = "director",
    version,
    about = "XDP-accelerated LVS-DR load balancer with VRRP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Restart the running daemon in place without moving any VIP: it hands
    /// its VRRP state over and executes its binary again (the file at the
    /// path it was started from: a binary upgrade). Waits until the new
    /// process answers. `systemctl restart director` does the same.
    Restart {
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
        #[command(flatten)]
        change: crate::manage::control::RealServerChange,
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
        /// keepalived's config id (its `-i`): conditional lines `@ID ...`
        /// apply for this id (default: the host name up to the first dot,
        /// as keepalived).
        #[arg(long)]
        config_id: Option<String>,
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
    /// Write the man pages (director(8), one per subcommand) into DIR
    /// (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Which real server a flow goes to now and why: the flow table, the
    /// client's persistence, the Maglev slot and the pool it was built
    /// from, the sorry server. Reads the pinned XDP dataplane (its daemon
    /// running or stopped).
    Explain {
        /// The client: ADDR, or ADDR:PORT ([ADDR]:PORT for IPv6) to look
        /// its flow up in the flow table.
        client: String,
        /// The service: VIP:PORT, optionally /tcp (default) or /udp.
        service: String,
        /// Print one JSON object (`real_server`, `reason`, ...).
        #[arg(long)]
        json: bool,
        /// Explain a new connection's first packet (a SYN) rather than the
        /// flow's next packet.
        #[arg(long)]
        syn: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check every real server's direct-routing setup from the director:
    /// ARP for its address, the VIP answered on its MAC (or through its
    /// tunnel), no ARP answer for the VIP; and the XDP attach mode. Each
    /// problem names the real server and the fix; exit status 1 when any
    /// is found.
    Doctor {
        /// Only the services of this VIP.
        #[arg(long)]
        vip: Option<std::net::IpAddr>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove the pinned dataplane of a state directory (same as `run --flush`).
    Flush {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Writes `director.8` and `director-SUBCOMMAND.8` into `dir`; returns the
/// files written.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command().name("director");
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.8"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    page(cmd.clone(), "director".into())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("director-{}", sub.get_name());
        // (clap names are &'static str without its "string" feature; this
        // runs once, at packaging.)
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        page(sub.clone().name(leaked), name)?;
    }
    Ok(written)
}

/// `ADDR`, `ADDR:PORT` or `[ADDR]:PORT` (IPv6); with `port_required`, a
/// port must be there.
pub fn parse_endpoint(
    text: &str,
    port_required: bool,
) -> Result<(std::net::IpAddr, Option<u16>), String> {
    if let Ok(a) = text.parse::<std::net::IpAddr>() {
        if port_required {
            return Err("a port is needed".into());
        }
        return Ok((a, None));
    }
    let s: std::net::SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an address"))?;
    Ok((s.ip(), Some(s.port())))
}

/// `VIP:PORT`, `VIP:PORT/tcp`, `[VIP6]:PORT/udp`.
pub fn parse_service(text: &str) -> Result<crate::config::ServiceAddr, String> {
    let (endpoint, protocol) = match text.rsplit_once('/') {
        Some((e, "tcp")) => (e, crate::config::Protocol::Tcp),
        Some((e, "udp")) => (e, crate::config::Protocol::Udp),
        Some((_, other)) => return Err(format!("protocol `{other}`: tcp or udp")),
        None => (text, crate::config::Protocol::Tcp),
    };
    let (address, port) = parse_endpoint(endpoint, true)?;
    Ok(crate::config::ServiceAddr {
        address,
        port: port.unwrap_or(0),
        protocol,
    })
}
