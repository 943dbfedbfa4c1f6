//! The checker half of `cargo xtask bench health`: runs the daemon's health
//! check engine (`director::health::Checks`, the code `director run` uses,
//! on the same multi-threaded runtime) against N real servers, and reports
//! its own CPU time and how punctual the rounds were, as one JSON line.
//!
//! Usage: bench_health --servers N --kind tcp|tcp-connect|http|http-reuse --seconds S --net A.B
//! [--floor] [--cpu C] [--warmup SECONDS] (`--cpu`: run on CPU C only, and report how busy C
//! was) (targets are A.B.x.y:80, which the harness routes to a server
//! farm). `--floor` runs the baseline instead: one thread doing the same
//! connections (and requests) with blocking calls at the same pace, the
//! least any checker must spend, most of it in the kernel's TCP stack.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use director::health::{self, CheckSpec, Kind, UrlSpec};

fn arg(args: &[String], name: &str) -> Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .with_context(|| format!("missing {name}"))
}

/// (user, system) CPU seconds of this process.
fn cpu_seconds() -> (f64, f64) {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    (t(u.ru_utime), t(u.ru_stime))
}

/// Busy and total jiffies of CPU `cpu` (/proc/stat: everything but idle
/// and iowait is busy), or of all CPUs when `None`.
fn cpu_jiffies(cpu: Option<usize>) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = cpu.map_or("cpu".to_string(), |c| format!("cpu{c}"));
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
    else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A window's share of CPU `cpu` that was busy.
struct Busy {
    cpu: Option<usize>,
    at: (u64, u64),
}

impl Busy {
    fn start(cpu: Option<usize>) -> Busy {
        Busy {
            cpu,
            at: cpu_jiffies(cpu),
        }
    }
    fn fraction(&self) -> f64 {
        let (busy, total) = cpu_jiffies(self.cpu);
        let (b, t) = (busy - self.at.0, total - self.at.1);
        if t == 0 {
            f64::NAN
        } else {
            b as f64 / t as f64
        }
    }
}

/// Runs this process (and the threads it starts from now on) on `cpu` (as
/// bench_xdp pins its measuring thread).
fn pin_to(cpu: usize) -> Result<()> {
    use nix::{
        sched::{CpuSet, sched_setaffinity},
        unistd::Pid,
    };
    let mut one = CpuSet::new();
    one.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &one)?;
    Ok(())
}

#[derive(Default, Clone, Copy)]
struct Totals {
    rounds: u64,
    late: u64,
}

fn totals(board: &health::Board) -> Totals {
    let b = board.lock().expect("board");
    b.values().fold(Totals::default(), |t, p| Totals {
        rounds: t.rounds + p.rounds,
        late: t.late + p.late_rounds,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The baseline: blocking connects (and HTTP requests) from one thread,
/// spread evenly over each interval, for `seconds` (after a 1 s warm-up).
fn run_floor(
    targets: &[SocketAddr],
    kind: &str,
    seconds: f64,
    interval: Duration,
    cpu: Option<usize>,
) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let step = interval / targets.len().max(1) as u32;
    let mut next = Instant::now();
    let mut measured = None;
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut failed = 0u64;
    'outer: loop {
        for t in targets {
            if measured.is_none() && started.elapsed() >= Duration::from_secs(1) {
                measured = Some((Instant::now(), cpu_seconds(), rounds, Busy::start(cpu)));
            }
            if let Some((t0, _, _, _)) = measured
                && t0.elapsed().as_secs_f64() >= seconds
            {
                break 'outer;
            }
            next += step;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            rounds += 1;
            let ok = match std::net::TcpStream::connect_timeout(t, Duration::from_secs(2)) {
                Ok(mut s) if kind.starts_with("http") => {
                    let mut raw = Vec::new();
                    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .and_then(|_| s.read_to_end(&mut raw))
                        .is_ok()
                        && raw.starts_with(b"HTTP/1.1 200")
                }
                Ok(_) => true,
                Err(_) => false,
            };
            failed += u64::from(!ok);
        }
    }
    let (t0, c0, r0, busy) = measured.context("the run was too short")?;
    let (wall, c1, busy) = (t0.elapsed().as_secs_f64(), cpu_seconds(), busy.fraction());
    let (user, system) = (c1.0 - c0.0, c1.1 - c0.1);
    print_report(&Report {
        servers: targets.len(),
        kind: &format!("{kind} floor"),
        wall,
        cpu: (user, system),
        rounds: rounds - r0,
        expected_per_second: targets.len() as f64 / interval.as_secs_f64(),
        late_rounds: 0,
        max_late: &[],
        latency: &[],
        unhealthy: failed,
        cpu_busy: busy,
    });
    Ok(())
}

/// One run's figures.
struct Report<'a> {
    servers: usize,
    kind: &'a str,
    wall: f64,
    /// (user, system) CPU seconds.
    cpu: (f64, f64),
    rounds: u64,
    expected_per_second: f64,
    late_rounds: u64,
    /// Sorted.
    max_late: &'a [f64],
    /// Sorted.
    latency: &'a [f64],
    unhealthy: u64,
    /// The share of the pinned CPU (all CPUs unpinned) that was busy.
    cpu_busy: f64,
}

/// Prints a run as one JSON line (what the harness reads).
fn print_report(r: &Report) {
    let (user, system) = r.cpu;
    println!(
        "{}",
        serde_json::json!({
            "servers": r.servers,
            "kind": r.kind,
            "seconds": r.wall,
            "cpu_core_fraction": (user + system) / r.wall,
            "user_fraction": user / r.wall,
            "system_fraction": system / r.wall,
            "rounds": r.rounds,
            "rounds_per_second": r.rounds as f64 / r.wall,
            "expected_per_second": r.expected_per_second,
            "late_rounds": r.late_rounds,
            "max_late_p50": percentile(r.max_late, 0.5),
            "max_late_max": percentile(r.max_late, 1.0),
            "latency_p50": percentile(r.latency, 0.5),
            "latency_p99": percentile(r.latency, 0.99),
            "latency_max": percentile(r.latency, 1.0),
            "unhealthy": r.unhealthy,
            "cpu_busy_fraction": r.cpu_busy,
        })
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let servers: u32 = arg(&args, "--servers")?.parse()?;
    let seconds: f64 = arg(&args, "--seconds")?.parse()?;
    let kind = arg(&args, "--kind")?;
    let net: Vec<u8> = arg(&args, "--net")?
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [a, b] = net[..] else {
        bail!("--net wants A.B");
    };
    let delay_loop = Duration::from_secs(1);
    let floor = args.iter().any(|a| a == "--floor");
    // Before measuring: every probe has started (random start within the
    // delay loop) and run a round or two.
    let warmup = match arg(&args, "--warmup") {
        Ok(w) => Duration::from_secs_f64(w.parse()?),
        Err(_) => Duration::from_secs(3),
    };
    let cpu: Option<usize> = match arg(&args, "--cpu") {
        Ok(c) => Some(c.parse()?),
        Err(_) => None,
    };
    if let Some(c) = cpu {
        pin_to(c)?;
    }
    // As the daemon does at start: kept connections need a descriptor each.
    director::manage::limits::raise_nofile();
    let targets: Vec<SocketAddr> = (0..servers)
        .map(|i| {
            let ip = Ipv4Addr::new(a, b, (i / 250) as u8, (i % 250 + 1) as u8);
            SocketAddr::new(IpAddr::V4(ip), 80)
        })
        .collect();
    if floor {
        return run_floor(&targets, &kind, seconds, delay_loop, cpu);
    }
    let specs: HashSet<health::ProbeKey> = targets
        .iter()
        .map(|target| {
            let kind = match kind.as_str() {
                "http" | "http-reuse" => Kind::Http {
                    urls: vec![UrlSpec {
                        path: "/".into(),
                        ranges: vec![(200, 299)],
                        digest: None,
                        regex: None,
                    }],
                    host: None,
                    tls: None,
                    reuse: kind == "http-reuse",
                },
                "tcp-connect" => Kind::Tcp { half_open: false },
                _ => Kind::Tcp { half_open: true },
            };
            let spec = CheckSpec {
                kind,
                target: *target,
                bindto: None,
                timeout: Duration::from_secs(2),
                retry: 0,
                delay_before_retry: Duration::from_secs(1),
                delay_loop,
                rise: 1,
                fall: 1,
                warmup: delay_loop,
                alpha: false,
            };
            health::ProbeKey::new(spec)
        })
        .collect();
    // The daemon's runtime; pinned to one CPU, with one worker on it (more
    // would only take turns there).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cpu.is_some() {
        runtime.worker_threads(1);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let mut checks = health::Checks::new(tx);
        checks.update(&specs);
        let board = checks.board();
        // Warm-up: every probe has started (random start within 1 s) and
        // run a few rounds.
        tokio::time::sleep(warmup).await;
        let (t0, c0, r0, busy) = (
            Instant::now(),
            cpu_seconds(),
            totals(&board),
            Busy::start(cpu),
        );
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let (wall, c1, r1, busy) = (
            t0.elapsed().as_secs_f64(),
            cpu_seconds(),
            totals(&board),
            busy.fraction(),
        );
        let (user, system) = (c1.0 - c0.0, c1.1 - c0.1);
        let b = board.lock().expect("board").clone();
        let mut latency: Vec<f64> = b.values().filter_map(|p| p.latency).collect();
        latency.sort_by(f64::total_cmp);
        let mut max_late: Vec<f64> = b.values().map(|p| p.max_late).collect();
        max_late.sort_by(f64::total_cmp);
        print_report(&Report {
            servers: servers as usize,
            kind: &kind,
            wall,
            cpu: (user, system),
            rounds: r1.rounds - r0.rounds,
            expected_per_second: f64::from(servers) / delay_loop.as_secs_f64(),
            late_rounds: r1.late - r0.late,
            max_late: &max_late,
            latency: &latency,
            unhealthy: b.values().filter(|p| !p.healthy).count() as u64,
            cpu_busy: busy,
        });
        drop(checks);
    });
    Ok(())
}
