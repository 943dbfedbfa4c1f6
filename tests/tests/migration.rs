//! The operations guide's "Migrating from keepalived" (docs/operations.md), followed step by step
//! under continuous requests: a keepalived pair (keepalived driving VRRP,
//! director's dataplane beside it, as where IPVS is absent) becomes a
//! director pair one node at a time, with no failed request and no split
//! brain at any step; then `flow_sync` is turned on (step 4's last words)
//! and established connections to a drained real server survive a
//! failover.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, director_bin, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/keepalived")
        .join(name)
}

/// Step 1 of the guide: `director import-keepalived`, then the lines an
/// operator adds (the state directory of this lab node).
fn imported(file: &str, state_dir: &Path) -> Result<toml::Table> {
    let out = Command::new(director_bin()?)
        .arg("import-keepalived")
        .arg("--strict")
        .arg(corpus(file))
        .output()?;
    ensure!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut t: toml::Table = toml::from_str(&String::from_utf8(out.stdout)?)?;
    t.get_mut("global")
        .and_then(toml::Value::as_table_mut)
        .context("no [global]")?
        .insert(
            "state_dir".into(),
            toml::Value::String(state_dir.display().to_string()),
        );
    Ok(t)
}

/// The dataplane that runs beside keepalived before the switch: the same
/// import without its VRRP instances (keepalived holds the VIP).
fn beside(mut t: toml::Table) -> toml::Table {
    t.remove("vrrp_instance");
    t
}

#[test]
fn a_keepalived_pair_becomes_a_director_pair_without_a_failed_request() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let full_a = imported("migration-a.conf", &s1)?;
    let full_b = imported("migration-b.conf", &s2)?;
    let dp_a = lab.write("beside-a.toml", &toml::to_string(&beside(full_a.clone()))?)?;
    let dp_b = lab.write("beside-b.toml", &toml::to_string(&beside(full_b.clone()))?)?;
    let conf_a = lab.write("director-a.toml", &toml::to_string(&full_a)?)?;
    let conf_b = lab.write("director-b.toml", &toml::to_string(&full_b)?)?;
    // Step 4's last words: flow_sync on both (what the operator adds).
    let synced = |mut t: toml::Table, me: &str, peer: &str| -> Result<String> {
        let sync: toml::Table = toml::from_str(&format!(
            "listen = \"{me}:7100\"\npeers = [\"{peer}:7100\"]\nkey = \"migration-sync-key\"\ninterval = 0.2\n"
        ))?;
        t.get_mut("global")
            .and_then(toml::Value::as_table_mut)
            .context("no [global]")?
            .insert("flow_sync".into(), toml::Value::Table(sync));
        Ok(toml::to_string(&t)?)
    };
    let (ip_a, ip_b) = (
        lab.directors[0].ip.to_string(),
        lab.directors[1].ip.to_string(),
    );
    let synced_a = synced(full_a.clone(), &ip_a, &ip_b)?;
    let synced_b = synced(full_b.clone(), &ip_b, &ip_a)?;
    let ka_conf = |f: &str| std::fs::read_to_string(corpus(f));

    // Production today: keepalived (VRRP) on both nodes, the dataplane
    // beside it.
    let mut ka = scenario::spawn_keepalived_with(&lab, 0, &ka_conf("migration-a.conf")?, &["-P"])?;
    let mut kb = scenario::spawn_keepalived_with(&lab, 1, &ka_conf("migration-b.conf")?, &["-P"])?;
    let mut da = scenario::spawn_director(&lab, 0, &dp_a)?;
    let mut db = scenario::spawn_director(&lab, 1, &dp_b)?;
    for s in [&s1, &s2] {
        scenario::wait_status(s, Duration::from_secs(15), scenario::all_resolved)?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lab.directors[0].holds_vip()? {
        ensure!(
            std::time::Instant::now() < deadline,
            "keepalived A never took the VIP"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let addr = std::net::SocketAddr::new(VIP.into(), 80);
    let (steps, tally) = http::under_load(&lab.client.ns, addr, || {
        let mut steps = Vec::new();
        // Step 2: node B (the backup) becomes a director: keepalived and
        // the beside-dataplane stop, the director starts with the import
        // (same state directory: it adopts the running dataplane).
        kb.proc.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        db.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        let db_full = scenario::spawn_director(&lab, 1, &conf_b)?;
        scenario::wait_vrrp_state(&s2, "VI_WEB", "backup", Duration::from_secs(10))?;
        // It hears keepalived A's adverts, password and all.
        let st = scenario::wait_status(&s2, Duration::from_secs(10), |s| {
            s["vrrp"][0]["adverts_received"].as_u64().unwrap_or(0) >= 2
        })?;
        ensure!(
            st["vrrp"][0]["rejected"]
                .as_object()
                .is_none_or(|r| r.is_empty()),
            "{st}"
        );
        steps.push("B is a director, backup of keepalived A");

        // Step 3: fail over to B (keepalived A stops: a priority-0 advert).
        ka.proc.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        scenario::wait_vrrp_state(&s2, "VI_WEB", "master", Duration::from_secs(5))?;
        ensure!(lab.directors[1].holds_vip()?, "B does not hold the VIP");
        std::thread::sleep(Duration::from_secs(2));
        steps.push("B is master");

        // Step 4: node A becomes a director; it preempts (priority 150).
        da.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        let da_full = scenario::spawn_director(&lab, 0, &conf_a)?;
        scenario::wait_vrrp_state(&s1, "VI_WEB", "master", Duration::from_secs(10))?;
        scenario::wait_vrrp_state(&s2, "VI_WEB", "backup", Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_secs(2));
        steps.push("A is a director and master again");
        for s in [&s1, &s2] {
            let st = scenario::status(s)?;
            ensure!(st["vrrp"][0]["split_brains"] == 0, "a split brain: {st}");
        }

        // flow_sync on both: the file edited, `director restart` (a
        // restart moves no VIP), then the flows it exists for. Connections
        // to rs1 are open through A when rs1 is drained on both (their
        // flows are now exceptions to the Maglev tables: synced to B); A
        // stops and B, now master, keeps them on rs1.
        std::fs::write(&conf_a, &synced_a)?;
        std::fs::write(&conf_b, &synced_b)?;
        for s in [&s2, &s1] {
            let (ok, err) = scenario::director_cli(&["restart"], s)?;
            ensure!(ok, "director restart: {err}");
            scenario::wait_status(s, Duration::from_secs(10), |st| {
                st["flow_sync"]["peers"] == 1 && scenario::all_resolved(st)
            })?;
        }
        ensure!(
            scenario::vrrp_state(&s1, "VI_WEB").as_deref() == Some("master"),
            "A's restart moved the VIP"
        );
        let mut kept = Vec::new();
        for _ in 0..20 {
            let mut c = lab
                .client
                .run(move || http::KeepAlive::connect(addr, Duration::from_secs(2)))??;
            if c.get("/")?.body.starts_with("rs1") {
                kept.push(c);
            }
        }
        ensure!(!kept.is_empty(), "no connection to rs1");
        let rs1 = lab.real_servers[0].ip.to_string();
        for s in [&s1, &s2] {
            scenario::drain_real_server(&rs1, s)?;
        }
        scenario::wait_status(&s2, Duration::from_secs(5), |st| {
            st["flow_sync"]["flows_imported"].as_u64() >= Some(kept.len() as u64)
        })?;
        let mut da_full = da_full;
        da_full.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        scenario::wait_vrrp_state(&s2, "VI_WEB", "master", Duration::from_secs(5))?;
        for c in &mut kept {
            let r = c.get("/")?;
            ensure!(
                r.body.starts_with("rs1"),
                "an established connection moved at the failover: {:?}",
                r.body
            );
        }
        steps.push("flow sync on: established flows kept across a failover");
        Ok((steps, da_full, db_full))
    })?;
    let (steps, _da_full, _db_full) = steps;
    eprintln!("{steps:?}: {tally:?}");
    ensure!(steps.len() == 4, "{steps:?}");
    ensure!(
        tally.failed == 0,
        "failed requests during the migration: {tally:?}"
    );
    ensure!(
        tally.ok > 100,
        "too few requests to mean anything: {tally:?}"
    );
    ensure!(
        tally.by_body.len() == 2,
        "both real servers served: {tally:?}"
    );
    Ok(())
}
