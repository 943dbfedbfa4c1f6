//! Active-active directors behind ECMP, announced over BGP by BIRD 2 (the
//! lab: `director_tests::ecmp`): a client behind the router reaches the VIP
//! through all three directors; killing one withdraws it and its
//! connections continue on the others (same Maglev tables: same real
//! server); a drained director withdraws its route before it stops, with no
//! failed request.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{ecmp::EcmpLab, http, lab::VIP, scenario};

#[test]
fn ecmp_directors_announced_by_bird() -> Result<()> {
    let mut e = EcmpLab::start(3, 2)?;
    // Requests from behind the router spread over the three directors.
    let vip = SocketAddr::from((VIP, 80));
    let t = e
        .far
        .run(move || http::hammer(vip, 90, Duration::from_secs(3)))?;
    ensure!(t.failed == 0 && t.ok == 90, "{t:?}");
    let mut carrying = 0;
    for d in &e.lab.directors {
        let s = scenario::status(&e.lab.state_dir(&d.name)?)?;
        if s["virtual_servers"][0]["packets"].as_u64() > Some(0) {
            carrying += 1;
        }
    }
    ensure!(carrying >= 2, "ECMP used {carrying} director(s)");

    // Long-lived connections; then director3 dies: the router withdraws
    // it, and every connection - also those it carried - goes on with the
    // same real server.
    let (opened, kept) = e.kill_last_with_open_connections(12)?;
    ensure!(
        opened == 12 && kept == 12,
        "only {kept} of {opened} (of 12) connections kept their real server"
    );

    // Drain director2 under load: its route goes first, nothing fails.
    let s2 = e.lab.state_dir("director2")?;
    let ((), tally) = http::under_load(&e.far, vip, || {
        let (ok, err) = scenario::director_cli(&["drain"], &s2)?;
        ensure!(ok, "{err}");
        Ok(())
    })?;
    ensure!(
        tally.failed == 0 && tally.ok > 50,
        "drain lost requests: {tally:?}"
    );
    ensure!(e.next_hops()? == ["10.0.0.10"], "director2 still announced");
    ensure!(!e.directors[1].running(), "director2 did not stop");
    eprintln!(
        "ECMP over {carrying} directors; 12/12 connections kept across a director's death; drain under load: {tally:?}"
    );
    Ok(())
}
