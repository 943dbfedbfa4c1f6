//! `cargo xtask bench soak [--minutes N] [--short]`: two directors (VRRP
//! v3, 100 ms, flow sync) and three real servers under continuous traffic - new
//! connections back to back and long downloads, one after another - while
//! both daemons are reloaded every 5 s (a weight toggles), a real server
//! flaps every 7 s (it stops accepting connections: its checks take it out,
//! then back; what it serves goes on), the
//! master is killed (kill -9) and restarted every minute (a failover, then
//! a preemption), and every three minutes it is restarted gracefully
//! instead (SIGTERM: priority 0, then a preemption). The backup daemon runs
//! throughout. Reported: failed requests, broken downloads, false
//! failovers (backup transitions beyond the planned ones), and the backup
//! daemon's RSS, open fds and CPU after the first minute and at the end
//! (flat is the goal).
//! `--short`: one minute with the same events every few seconds, checked
//! (no request failed beyond the kill window, no download broke), no
//! figures.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

/// The daemon's resources, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kb: u64,
    fds: u64,
    cpu_ticks: u64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu_ticks = stat
        .rsplit(')')
        .next()
        .map(|rest| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat, 12 and 13 here.
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .unwrap_or(0);
    Usage {
        rss_kb,
        fds,
        cpu_ticks,
    }
}

fn config(lab: &Lab, name: &str, priority: u8, heavy: bool) -> Result<String> {
    let mut c = scenario::global_config(lab, name)?;
    // Flows the tables would place elsewhere now (placed before a reload
    // or a health change) reach the peer before it needs them.
    let (me, peer) = if name == "director1" {
        ("10.0.0.10", "10.0.0.11")
    } else {
        ("10.0.0.11", "10.0.0.10")
    };
    c.push_str(&format!(
        "flow_sync = {{ listen = \"{me}:8848\", peers = [\"{peer}:8848\"], key = \"soak-sync-key\", interval = 0.2 }}\n"
    ));
    c.push_str(&format!(
        "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = {priority}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP}/32\"]\n"
    ));
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 1\n"
    ));
    for (j, rs) in lab.real_servers.iter().enumerate() {
        let weight = if heavy && j == 0 { 2 } else { 1 };
        c.push_str(&format!(
            "\n  [[virtual_server.real_server]]\n  address = \"{}\"\n  weight = {weight}\n  [virtual_server.real_server.tcp_check]\n  connect_timeout = 1\n  retry = 0\n",
            rs.ip
        ));
    }
    Ok(c)
}

fn transitions(state: &Path) -> Result<u64> {
    scenario::status(state)?["vrrp"][0]["transitions"]
        .as_u64()
        .context("transitions")
}

pub fn run(minutes: u64, short: bool) -> Result<()> {
    const SIZE: usize = 2 << 20;
    let total = if short {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(60 * minutes.max(1))
    };
    // Event periods: compressed in short mode.
    let (reload_every, flap_every, failover_every, restart_every) = if short {
        (3, 5, 20, 30)
    } else {
        (5, 7, 60, 180)
    };
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    lab.write_big_file(SIZE)?;
    let p1 = lab.write("director1.toml", &config(&lab, "director1", 150, false)?)?;
    let p2 = lab.write("director2.toml", &config(&lab, "director2", 100, false)?)?;
    let mut d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let d2 = scenario::spawn_director(&lab, 1, &p2)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    println!(
        "soak: {} min, 2 directors, 3 real servers; reload every {reload_every} s, a real server flaps every {flap_every} s, master killed and restarted every {failover_every} s, restarted gracefully every {restart_every} s",
        total.as_secs() / 60
    );

    // Traffic: requests back to back, and downloads one after another.
    // Times in the soak's logs count from here.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let vip = SocketAddr::from((VIP, 80));
    // Requests back to back; each failure's start time is kept (on the
    // event log's clock) to check it falls in an event's window.
    let requests = {
        let stop = stop.clone();
        lab.client.ns.spawn_thread(move || {
            let (mut ok, mut failed) = (0u64, Vec::<f64>::new());
            while !stop.load(Ordering::Relaxed) {
                let at = started.elapsed().as_secs_f64();
                match http::get(vip, "/", Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => {
                        failed.push(at);
                        // Do not spin on an immediate refusal.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            (ok, failed)
        })
    };
    let (downloads_ok, downloads_broken) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let downloads = {
        let (stop, ok, broken) = (stop.clone(), downloads_ok.clone(), downloads_broken.clone());
        lab.client.ns.spawn_thread(move || {
            while !stop.load(Ordering::Relaxed) {
                let began = started.elapsed();
                match http::download_big(vip, SIZE) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        // Which event broke it: the same clock as the
                        // event log below.
                        eprintln!(
                            "soak: download begun at {:.1} s broke at {:.1} s: {e:#}",
                            began.as_secs_f64(),
                            started.elapsed().as_secs_f64()
                        );
                        broken.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    // The backup's own start (init -> backup) is its first transition.
    let mut planned = transitions(&s2)?;
    let d2_pid = d2.pid().context("pid")?;
    let start_usage = usage(d2_pid);
    let mut first_minute = None;
    let mut heavy = false;
    let mut tick = 0u64;
    // What happened when: printed if a download broke, on the download
    // thread's clock; the times of the events a request may fail in.
    let mut events: Vec<String> = Vec::new();
    let mut windows: Vec<f64> = Vec::new();
    let mut event = |what: &str| {
        let t = started.elapsed().as_secs_f64();
        events.push(format!("{t:.1} s: {what}"));
        if matches!(
            what,
            "master killed" | "master stopped (SIGTERM)" | "rs3 drops SYNs"
        ) {
            windows.push(t);
        }
    };
    while started.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        tick += 1;
        if tick.is_multiple_of(reload_every) {
            heavy = !heavy;
            event("reload");
            std::fs::write(&p1, config(&lab, "director1", 150, heavy)?)?;
            std::fs::write(&p2, config(&lab, "director2", 100, heavy)?)?;
            for s in [&s1, &s2] {
                let (ok, err) = scenario::director_cli(&["reload"], s)?;
                ensure!(ok, "reload: {err}");
            }
        }
        if tick.is_multiple_of(flap_every) {
            // rs3 stops accepting connections (its checks fail, it leaves
            // the pool; connections it serves go on), then accepts again.
            let rs3 = &lab.real_servers[2].ns;
            if tick / flap_every % 2 == 1 {
                event("rs3 drops SYNs");
                rs3.exec("nft", &["add table inet soak"])?;
                rs3.exec(
                    "nft",
                    &["add chain inet soak input { type filter hook input priority 0 ; }"],
                )?;
                rs3.exec(
                    "nft",
                    &["add rule inet soak input tcp dport 80 tcp flags syn drop"],
                )?;
            } else {
                event("rs3 accepts again");
                rs3.exec("nft", &["delete table inet soak"])?;
            }
        }
        // The master goes (killed, or every restart_every gracefully), the
        // backup takes over, the master returns and preempts.
        let graceful = tick.is_multiple_of(restart_every);
        if graceful || tick.is_multiple_of(failover_every) {
            let signal = if graceful {
                Signal::SIGTERM
            } else {
                Signal::SIGKILL
            };
            event(if graceful {
                "master stopped (SIGTERM)"
            } else {
                "master killed"
            });
            d1.stop(signal, Duration::from_secs(10)).ok();
            // The stopped daemon's log, kept (the next one starts afresh).
            let _ = std::fs::copy(
                lab.path("director1.log"),
                lab.path(&format!("director1-until-{tick}s.log")),
            );
            scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
            event("backup is master; master restarted");
            d1 = scenario::spawn_director(&lab, 0, &p1)?;
            scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
            scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(5))?;
            event("master preempted");
            planned += 2;
        }
        if first_minute.is_none() && started.elapsed() >= Duration::from_secs(60) {
            first_minute = Some(usage(d2_pid));
        }
    }
    let end_usage = usage(d2_pid);
    stop.store(true, Ordering::Relaxed);
    let (requests_ok, failures) = requests
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))??;
    // A request may fail only in an event's window: begun up to its 2 s
    // timeout before the master went or rs3 began dropping SYNs, and up to
    // 4 s after (the takeover; rs3's checks, 1 s apart with a 1 s timeout,
    // then a request's own 2 s).
    let outside: Vec<f64> = failures
        .iter()
        .copied()
        .filter(|f| !windows.iter().any(|w| *f >= w - 2.5 && *f <= w + 4.0))
        .collect();
    let tally = http::Tally {
        ok: requests_ok as usize,
        failed: failures.len(),
        ..Default::default()
    };
    downloads
        .join()
        .map_err(|_| anyhow::anyhow!("download thread panicked"))??;
    let seen = transitions(&s2)?;
    let false_failovers = seen.saturating_sub(planned).div_ceil(2);
    let (ok, broken) = (
        downloads_ok.load(Ordering::Relaxed),
        downloads_broken.load(Ordering::Relaxed),
    );
    drop(d1);
    drop(d2);
    if broken > 0 || false_failovers > 0 {
        for e in &events {
            eprintln!("soak: {e}");
        }
    }
    if short {
        ensure!(tally.ok > 100, "too few requests: {tally:?}");
        if !outside.is_empty() {
            for e in &events {
                eprintln!("soak: {e}");
            }
        }
        ensure!(
            outside.is_empty(),
            "{} requests failed outside every kill or flap window (begun at {outside:?} s)",
            outside.len()
        );
        ensure!(ok > 0, "no download completed");
        ensure!(broken == 0, "{broken} downloads broke");
        ensure!(false_failovers == 0, "{false_failovers} false failovers");
        println!(
            "ok  soak (short): {} requests, {} failed, {ok} downloads, {broken} broken (no figures in short mode)",
            tally.ok, tally.failed
        );
        return Ok(());
    }
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu =
        |a: Usage, b: Usage, secs: f64| 100.0 * (b.cpu_ticks - a.cpu_ticks) as f64 / ticks / secs;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "soak: {:.0} min: {} requests, {} failed ({:.3}%; {} outside every kill or flap window); {ok} downloads, {broken} broken; false failovers {false_failovers} (backup transitions {seen}, planned {planned})",
        elapsed / 60.0,
        tally.ok,
        tally.failed,
        100.0 * tally.failed as f64 / (tally.ok + tally.failed).max(1) as f64,
        outside.len()
    );
    let first = first_minute.unwrap_or(start_usage);
    println!(
        "soak: backup daemon (never restarted): RSS {} KiB after 1 min -> {} KiB at the end; open fds {} -> {}; CPU {:.1}% of a core over the first minute, {:.1}% over the rest",
        first.rss_kb,
        end_usage.rss_kb,
        first.fds,
        end_usage.fds,
        cpu(start_usage, first, 60.0),
        cpu(first, end_usage, (elapsed - 60.0).max(1.0))
    );
    if !tally.errors.is_empty() {
        println!("soak: first errors: {:?}", tally.errors);
    }
    drop(lab);
    Ok(())
}
