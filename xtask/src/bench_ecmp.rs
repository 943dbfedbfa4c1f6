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

use anyhow::Result;
use director_tests::{ecmp::EcmpLab, http, lab::VIP, scenario};

pub fn run() -> Result<()> {
    println!("ecmp: directors behind a BIRD router (BGP, ECMP by 5-tuple), 4 client threads, 5 s");
    println!(
        "  {:<10} {:>12} {:>8}   share per director",
        "directors", "requests/s", "failed"
    );
    let vip = SocketAddr::from((VIP, 80));
    let mut base = None;
    for n in 1..=3usize {
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
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, 0);
        for t in threads {
            if let Ok(Ok(tally)) = t.join() {
                ok += tally.ok;
                failed += tally.failed;
            }
        }
        let after = packets(&e)?;
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: u64 = delta.iter().sum::<u64>().max(1);
        let shares: Vec<String> = delta
            .iter()
            .map(|d| format!("{:.0}%", 100.0 * *d as f64 / total as f64))
            .collect();
        let rps = ok as f64 / 5.0;
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
            lost_on_kill(e)?;
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

fn lost_on_kill(mut e: EcmpLab) -> Result<()> {
    let (opened, kept) = e.kill_last_with_open_connections(60)?;
    println!(
        "  one of 3 directors killed: {} of {opened} open connections lost ({} kept, same real server)",
        opened - kept,
        kept
    );
    Ok(())
}
