//! `cargo xtask bench ecmp`: active-active directors behind a BIRD router
//! with ECMP (`director_tests::ecmp`). Aggregate requests per second (new
//! connection per request, 4 client threads behind the router, 5 s) and
//! each director's share, with 1, 2 and 3 directors; then, with 3
//! directors, how many of 60 open keep-alive connections are lost when one
//! director dies (link down + kill). On this 2-core VM the client, router,
//! directors and real servers share the CPUs: the aggregate rate is bound
//! by the machine, the shares show ECMP spreading.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, ensure};
use director_tests::{ecmp::EcmpLab, http, lab::VIP, scenario};

pub fn run(short: bool) -> Result<()> {
    // Short: 1 and 3 directors for 1 s, 12 connections through the kill.
    let (counts, seconds, conns): (&[usize], u64, usize) = if short {
        (&[1, 3], 1, 12)
    } else {
        (&[1, 2, 3], 5, 60)
    };
    println!(
        "ecmp: directors behind a BIRD router (BGP, ECMP by 5-tuple), 4 client threads, {seconds} s"
    );
    println!(
        "  {:<10} {:>12} {:>8}   share per director",
        "directors", "requests/s", "failed"
    );
    let vip = SocketAddr::from((VIP, 80));
    let mut base = None;
    for &n in counts {
        let e = EcmpLab::start(n, 2)?;
        let before: Vec<u64> = packets(&e)?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                e.far
                    .spawn_thread(move || http::hammer_until(vip, stop, Duration::from_secs(2)))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, 0);
        for t in threads {
            match t.join() {
                Ok(Ok(tally)) => {
                    ok += tally.ok;
                    failed += tally.failed;
                }
                // A client thread that died counts as failures.
                _ => failed += 1,
            }
        }
        let after = packets(&e)?;
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: u64 = delta.iter().sum::<u64>().max(1);
        let shares: Vec<String> = delta
            .iter()
            .map(|d| format!("{:.0}%", 100.0 * *d as f64 / total as f64))
            .collect();
        ensure!(
            failed == 0 && ok > 0,
            "{n} director(s): {failed} failed requests, {ok} ok"
        );
        ensure!(
            delta.iter().all(|d| *d > 0),
            "{n} director(s): not every director carried traffic: {delta:?}"
        );
        if short {
            println!(
                "ok  ecmp, {n} director(s): {ok} requests, none failed, every director carried traffic"
            );
            if n == 3 {
                lost_on_kill(e, conns, short)?;
                withdrawal(short)?;
            }
            continue;
        }
        let rps = ok as f64 / seconds as f64;
        let ratio = base.map_or(1.0, |b: f64| rps / b);
        base.get_or_insert(rps);
        println!(
            "  {:<10} {:>12.0} {:>8}   {}  ({ratio:.2}x one director)",
            n,
            rps,
            failed,
            shares.join(" / ")
        );
        if n == 3 {
            lost_on_kill(e, conns, short)?;
            withdrawal(short)?;
        }
    }
    Ok(())
}

/// Packets each director forwarded for the VIP (from its status).
fn packets(e: &EcmpLab) -> Result<Vec<u64>> {
    e.lab
        .directors
        .iter()
        .map(|d| {
            let s = scenario::status(&e.lab.state_dir(&d.name)?)?;
            Ok(s["virtual_servers"][0]["packets"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// How long the router takes to withdraw a dead director (link down,
/// process killed): with BFD (BIRD on both sides, 10 ms x 3) and without
/// (the BGP hold time, 3 s in the lab), in the same run.
fn withdrawal(short: bool) -> Result<()> {
    use director_tests::ecmp::EcmpOptions;
    let runs = if short { 1 } else { 5 };
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..runs {
        for bfd in [true, false] {
            if short && !bfd {
                continue;
            }
            let mut e = EcmpLab::start_with(
                2,
                2,
                &EcmpOptions {
                    bfd,
                    ..Default::default()
                },
            )?;
            let took = e.withdrawal_of_a_dead_director()?;
            if bfd { &mut with } else { &mut without }.push(took);
        }
    }
    with.sort();
    without.sort();
    if short {
        ensure!(
            with[0] < Duration::from_secs(1),
            "BFD: the dead director withdrawn after {:?}",
            with[0]
        );
        println!("ok  ecmp: a dead director withdrawn by BFD before the hold time");
        return Ok(());
    }
    let ms = |v: &[Duration]| v[v.len() / 2].as_secs_f64() * 1000.0;
    println!(
        "  a dead director withdrawn by the router (median of {runs}): BFD 10 ms x 3 {:.0} ms, BGP hold time 3 s {:.0} ms ({:.3}x)",
        ms(&with),
        ms(&without),
        ms(&with) / ms(&without)
    );
    Ok(())
}

fn lost_on_kill(mut e: EcmpLab, conns: usize, short: bool) -> Result<()> {
    let (opened, kept) = e.kill_last_with_open_connections(conns)?;
    if short {
        ensure!(
            opened == conns && kept == opened,
            "one of 3 directors killed: {kept} of {opened} connections kept"
        );
        println!("ok  ecmp: one of 3 directors killed, every open connection kept");
        return Ok(());
    }
    println!(
        "  one of 3 directors killed: {} of {opened} open connections lost ({} kept, same real server)",
        opened - kept,
        kept
    );
    Ok(())
}
