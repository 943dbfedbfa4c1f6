//! Fault injection against a VRRP pair of directors in the lab, with real
//! tools: kill -9 plus link down with 50 long downloads open, SIGSTOP of
//! the master for 10 s, and a restart loop under load.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, Proc, http, lab::VIP, scenario};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const FAST: &str = "version = 3\nadvert_int = 0.1";

fn pair() -> Result<(Lab, Proc, Proc)> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let (d1, d2) = scenario::vrrp_pair(&lab, FAST)?;
    Ok((lab, d1, d2))
}

/// 50 long downloads (4 MiB at 512 KiB/s: ~8 s each) are open when the
/// master dies (kill -9 and its link down, so its pinned dataplane stops
/// too). The backup takes over and, with the same Maglev tables, sends
/// every flow to the real server that already serves it: all 50 complete
/// with the right bytes.
#[test]
fn fifty_long_downloads_survive_master_death() -> Result<()> {
    const SIZE: usize = 4 << 20;
    let (lab, mut d1, _d2) = pair()?;
    lab.write_big_file(SIZE)?;
    let vip = SocketAddr::from((VIP, 80));
    let downloads = http::Downloads::start(&lab.client.ns, vip, 50, SIZE);
    std::thread::sleep(Duration::from_secs(2));
    let pid = d1.pid().context("director1 pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    lab.directors[0].ns.ip(&["link", "set", "eth0", "down"])?;
    let _ = d1.stop(Signal::SIGKILL, Duration::from_secs(5));
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    let slowest = downloads
        .all()?
        .iter()
        .map(|d| d.took)
        .max()
        .unwrap_or_default();
    eprintln!("50 downloads of {SIZE} bytes completed across the failover; slowest {slowest:?}");
    Ok(())
}

/// The master is frozen (SIGSTOP) for 10 s: the backup takes over; when the
/// master thaws, exactly one master remains within a second and only it
/// holds the VIP; clients are served throughout the end state.
#[test]
fn a_frozen_master_thaws_into_one_master() -> Result<()> {
    let (lab, d1, _d2) = pair()?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    // The client has talked to the master (it has a neighbour entry for
    // the VIP that announcements can move).
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 10)?;
    let pid = Pid::from_raw(d1.pid().context("director1 pid")? as i32);
    kill(pid, Signal::SIGSTOP)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    // The frozen master's dataplane still forwards: the backup's takeover
    // shows in the client's neighbour entry and the backup's counters.
    scenario::assert_carries(&lab, 1, VIP.into(), &s2, 20)?;
    std::thread::sleep(Duration::from_secs(10));
    kill(pid, Signal::SIGCONT)?;
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(3);
    loop {
        let states = (
            scenario::vrrp_state(&s1, "VI_1"),
            scenario::vrrp_state(&s2, "VI_1"),
        );
        let vips = (lab.directors[0].holds_vip()?, lab.directors[1].holds_vip()?);
        if states == (Some("master".into()), Some("backup".into())) && vips == (true, false) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not one master 3 s after SIGCONT: {states:?}, VIPs {vips:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("one master {:?} after SIGCONT", thawed.elapsed());
    ensure!(
        thawed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        thawed.elapsed()
    );
    // The thawed master announced itself again and carries the traffic.
    scenario::assert_carries(&lab, 0, VIP.into(), &s1, 20)?;
    Ok(())
}

fn restart(lab: &Lab, d: &mut Proc, path: &Path) -> Result<()> {
    d.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    *d = scenario::spawn_director(lab, 0, path)?;
    let s1 = lab.state_dir("director1")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))
}

/// The master restarts 20 times while a client sends requests without a
/// pause: each stop hands over gracefully (priority 0) and each start
/// preempts back; at most one request per restart may fail, and the pair
/// ends with one master.
#[test]
fn twenty_restarts_under_load_lose_almost_nothing() -> Result<()> {
    let (lab, mut d1, _d2) = pair()?;
    let path = lab.path("director1.toml");
    let vip = SocketAddr::from((VIP, 80));
    let ((), tally) = http::under_load(&lab.client.ns, vip, || {
        for _ in 0..20 {
            restart(&lab, &mut d1, &path)?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })?;
    eprintln!("restart loop: {tally:?}");
    ensure!(tally.ok > 200, "too little load: {tally:?}");
    ensure!(
        tally.failed <= 20,
        "{} requests failed in 20 restarts: {tally:?}",
        tally.failed
    );
    let s2 = lab.state_dir("director2")?;
    ensure!(scenario::vrrp_state(&s2, "VI_1").as_deref() == Some("backup"));
    ensure!(lab.directors[0].holds_vip()? && !lab.directors[1].holds_vip()?);
    Ok(())
}

fn nft(lab: &Lab, i: usize, rules: &[&str]) -> Result<()> {
    for r in rules {
        lab.directors[i].ns.exec("nft", &[r])?;
    }
    Ok(())
}

/// Three heartbeat paths (multicast on the service link, unicast on a
/// dedicated link, multicast on a second dedicated link: a `heartbeat`
/// without `unicast_peer`): VRRP dropped on the backup's service link, then
/// the unicast link down, change nothing while one path carries the
/// adverts; only when every path is silent does the backup take over.
#[test]
fn a_redundant_heartbeat_path_prevents_a_false_failover() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    // The dedicated heartbeat link between the two directors.
    let d2 = lab.directors[1].ns.name().to_string();
    for (link, net) in [("hb0", "192.168.77"), ("hb1", "192.168.78")] {
        lab.directors[0].ns.ip(&[
            "link", "add", link, "type", "veth", "peer", "name", link, "netns", &d2,
        ])?;
        for i in 0..2 {
            let a = format!("{net}.{}/24", i + 1);
            lab.directors[i].ns.ip(&["addr", "add", &a, "dev", link])?;
            lab.directors[i].ns.ip(&["link", "set", link, "up"])?;
        }
    }
    let extra = |peer: &str| {
        format!(
            "{FAST}\nheartbeat = [{{ interface = \"hb0\", unicast_peer = [\"{peer}\"] }}, {{ interface = \"hb1\" }}]"
        )
    };
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &extra("192.168.77.2"))?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, &extra("192.168.77.1"))?;
    let _d1 = scenario::spawn_director(&lab, 0, &lab.write("director1.toml", &c1)?)?;
    let _d2 = scenario::spawn_director(&lab, 1, &lab.write("director2.toml", &c2)?)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    let transitions = |s: &Path| -> Result<serde_json::Value> {
        Ok(scenario::status(s)?["vrrp"][0]["transitions"].clone())
    };
    let (t1, t2) = (transitions(&s1)?, transitions(&s2)?);

    // The service link drops VRRP on the backup: the other path carries on.
    nft(
        &lab,
        1,
        &[
            "add table inet lab",
            "add chain inet lab input { type filter hook input priority 0 ; }",
            "add rule inet lab input iifname \"eth0\" meta l4proto 112 drop",
        ],
    )?;
    let received = |s: &Path| -> Result<u64> {
        Ok(scenario::status(s)?["vrrp"][0]["adverts_received"]
            .as_u64()
            .unwrap_or(0))
    };
    let carried = |what: &str| -> Result<()> {
        // 2 s of 0.1 s adverts arrive (on what is left) and nothing moves.
        let before = received(&s2)?;
        std::thread::sleep(Duration::from_secs(2));
        ensure!(
            received(&s2)? >= before + 15,
            "{what}: adverts stopped on the paths left"
        );
        ensure!(
            scenario::vrrp_state(&s2, "VI_1").as_deref() == Some("backup")
                && scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("master"),
            "{what}: a failover happened with a path left"
        );
        ensure!(
            transitions(&s1)? == t1 && transitions(&s2)? == t2,
            "{what}: transitions moved"
        );
        ensure!(
            !lab.directors[1].holds_vip()?,
            "{what}: the backup took the VIP"
        );
        Ok(())
    };
    carried("service link dropping VRRP")?;
    // The unicast path down too: the multicast heartbeat carries on.
    lab.directors[1].ns.ip(&["link", "set", "hb0", "down"])?;
    carried("and the unicast heartbeat down")?;
    let s = scenario::status(&s1)?;
    ensure!(s["vrrp"][0]["split_brains"] == 0, "{s}");

    // Every path silent: now the backup declares the master down.
    lab.directors[1].ns.ip(&["link", "set", "hb1", "down"])?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(3))?;
    // Healed: one master again.
    lab.directors[1].ns.ip(&["link", "set", "hb0", "up"])?;
    lab.directors[1].ns.ip(&["link", "set", "hb1", "up"])?;
    lab.directors[1]
        .ns
        .exec("nft", &["delete table inet lab"])?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(3))?;
    ensure!(scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("master"));
    Ok(())
}

/// `track_gateway`: a director that cannot reach its upstream (ICMP echo
/// to it goes unanswered) goes to Fault and gives the VIP up; it returns
/// when the gateway answers again.
#[test]
fn an_isolated_director_gives_up_the_vip() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let gw = format!(
        "{FAST}\ntrack_gateway = [{{ address = \"{}\", interval = 0.2, fall = 2 }}]",
        director_tests::lab::CLIENT_IP
    );
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &gw)?;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, FAST)?;
    let _d1 = scenario::spawn_director(&lab, 0, &lab.write("director1.toml", &c1)?)?;
    let _d2 = scenario::spawn_director(&lab, 1, &lab.write("director2.toml", &c2)?)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    nft(
        &lab,
        0,
        &[
            "add table inet lab",
            "add chain inet lab output { type filter hook output priority 0 ; }",
            "add rule inet lab output icmp type echo-request drop",
        ],
    )?;
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(
        !lab.directors[0].holds_vip()? && lab.directors[1].holds_vip()?,
        "the VIP did not move"
    );
    lab.directors[0]
        .ns
        .exec("nft", &["delete table inet lab"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
    Ok(())
}

/// A VRRP config (`FAST`) with flow sync between directors 1 and 2
/// (`i`: 0 or 1; director1 at priority 150), rs3 drained by `weight = 0`
/// when `drained`.
fn synced_config(lab: &Lab, i: usize, drained: bool) -> Result<String> {
    let (name, priority, me, peer) = match i {
        0 => ("director1", 150, "10.0.0.10", "10.0.0.11"),
        _ => ("director2", 100, "10.0.0.11", "10.0.0.10"),
    };
    let global = scenario::global_config(lab, name)?;
    let sync = format!(
        "flow_sync = {{ listen = \"{me}:8848\", peers = [\"{peer}:8848\"], key = \"lab-sync-key\", interval = 0.2 }}\n"
    );
    let c = scenario::vrrp_config(lab, name, priority, FAST)?.replacen(
        &global,
        &format!("{global}{sync}"),
        1,
    );
    Ok(if drained {
        c.replacen(
            "address = \"10.0.0.22\"\n",
            "address = \"10.0.0.22\"\n  weight = 0\n",
            1,
        )
    } else {
        c
    })
}

/// Directors 1 and 2 with flow sync ([`synced_config`], nothing drained),
/// director1 master, both resolved.
fn synced_pair(lab: &Lab) -> Result<(Proc, Proc)> {
    scenario::vrrp_pair_of(
        lab,
        &synced_config(lab, 0, false)?,
        &synced_config(lab, 1, false)?,
    )
}

/// 30 downloads of `size` bytes through the VIP, begun a second ago, with
/// some on rs3 (as the master's status, `state`, counts them): the
/// downloads, and how many went to rs3.
fn downloads_some_on_rs3(lab: &Lab, size: usize, state: &Path) -> Result<(http::Downloads, u64)> {
    lab.write_big_file(size)?;
    let vip = SocketAddr::from((VIP, 80));
    let downloads = http::Downloads::start(&lab.client.ns, vip, 30, size);
    std::thread::sleep(Duration::from_secs(1));
    let on_rs3 = scenario::status(state)?["virtual_servers"][0]["real_servers"][2]["new_flows"]
        .as_u64()
        .unwrap_or(0);
    ensure!(on_rs3 > 0, "no download went to rs3");
    Ok((downloads, on_rs3))
}

/// Flow sync: connections to a real server that is being drained are no
/// longer what the Maglev tables say, so a new master could not recompute
/// them - the master shares them with the backup, and they survive the
/// master's death.
#[test]
fn synced_flows_keep_a_drained_servers_connections_across_failover() -> Result<()> {
    const SIZE: usize = 4 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let (mut d1, d2) = synced_pair(&lab)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let (downloads, on_rs3) = downloads_some_on_rs3(&lab, SIZE, &s1)?;
    // rs3 is drained on both directors: its flows are now exceptions.
    for state in [&s1, &s2] {
        scenario::drain_real_server("10.0.0.22", state)?;
    }
    // The backup takes them within a few sync rounds.
    let mut took = false;
    for _ in 0..30 {
        if d2.log().contains("flows taken from a peer director") {
            took = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(took, "the backup got no flows: {}", d2.log());
    // The master dies.
    let pid = d1.pid().context("director1 pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
    lab.directors[0].ns.ip(&["link", "set", "eth0", "down"])?;
    let _ = d1.stop(Signal::SIGKILL, Duration::from_secs(5));
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    downloads
        .all()
        .with_context(|| format!("rs3 had {on_rs3} flows"))?;
    eprintln!("30 downloads completed, {on_rs3} of them on the drained rs3");
    Ok(())
}

/// Flow sync and a director that comes back: flows placed while it was
/// away that its tables would place elsewhere (here: on a real server
/// drained by a reload meanwhile) reach it before it preempts. The master
/// sent them while the director was down (lost: nobody listened); the
/// restarted director asks for everything (a hello), holds back
/// preemption until the answer ended, and then takes the VIP: every
/// download goes on. (Before, only news was sent, everything every 20th
/// round: a director preempting within those 4 s sent the drained
/// server's connections elsewhere, which reset them.)
#[test]
fn a_restarted_director_takes_its_peers_flows_before_it_preempts() -> Result<()> {
    const SIZE: usize = 3 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let (mut d1, _d2) = synced_pair(&lab)?;
    let p1 = lab.path("director1.toml");
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    // Director1 goes away; director2 carries the traffic.
    d1.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::assert_carries(&lab, 1, VIP.into(), &s2, 5)?;
    let (downloads, on_rs3) = downloads_some_on_rs3(&lab, SIZE, &s2)?;
    // rs3 is drained by a reload on director2 (its flows are exceptions
    // now, sent to nobody), and in the config director1 comes back with.
    lab.write("director2.toml", &synced_config(&lab, 1, true)?)?;
    let (ok, err) = scenario::director_cli(&["reload"], &s2)?;
    ensure!(ok, "reload: {err}");
    lab.write("director1.toml", &synced_config(&lab, 0, true)?)?;
    std::thread::sleep(Duration::from_millis(500));
    d1 = scenario::spawn_director(&lab, 0, &p1)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    downloads
        .all()
        .with_context(|| format!("rs3 had {on_rs3} flows; director1's log: {}", d1.log()))?;
    let log = d1.log();
    let (Some(all_in), Some(master)) = (
        log.find("every peer's flows are in"),
        log.find("new=\"master\""),
    ) else {
        anyhow::bail!("no `every peer's flows are in` line before the takeover: {log}");
    };
    ensure!(
        all_in < master,
        "director1 preempted before the flows were in: {log}"
    );
    ensure!(
        scenario::status(&s1)?["flow_sync"]["awaiting_peers"]
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "director1 still awaits a peer"
    );
    eprintln!(
        "30 downloads completed across the restarted director's preemption, {on_rs3} of them on the drained rs3"
    );
    Ok(())
}

/// Drops every datagram to the flow-sync port (8848) in `ns`, in the nft
/// table `table` (`nft delete table inet TABLE` lifts it).
fn deafen_sync_port(ns: &director_tests::Netns, table: &str) -> Result<()> {
    ns.exec("nft", &[&format!("add table inet {table}")])?;
    ns.exec(
        "nft",
        &[&format!(
            "add chain inet {table} input {{ type filter hook input priority 0 ; }}"
        )],
    )?;
    ns.exec(
        "nft",
        &[&format!("add rule inet {table} input udp dport 8848 drop")],
    )?;
    Ok(())
}

/// Director1 away, downloads placed by director2 on rs3, rs3 drained by a
/// reload on director2 (its flows are exceptions now, sent to nobody);
/// director1 comes back with `extra` in its flow_sync, its sync port
/// deaf for its first 1.5 s (the peer's answer to its first hello is
/// lost), and preempts. The downloads' outcomes, and how many were on rs3.
fn return_with_lost_answers(
    lab: &Lab,
    extra: &str,
) -> Result<(Vec<Result<http::Download>>, u64, String)> {
    const SIZE: usize = 4 << 20;
    let (mut d1, _d2) = synced_pair(lab)?;
    let p1 = lab.path("director1.toml");
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    d1.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::assert_carries(lab, 1, VIP.into(), &s2, 5)?;
    let (downloads, on_rs3) = downloads_some_on_rs3(lab, SIZE, &s2)?;
    lab.write("director2.toml", &synced_config(lab, 1, true)?)?;
    let (ok, err) = scenario::director_cli(&["reload"], &s2)?;
    ensure!(ok, "reload: {err}");
    let config = synced_config(lab, 0, true)?.replacen(
        "interval = 0.2",
        &format!("interval = 0.2{extra}"),
        1,
    );
    lab.write("director1.toml", &config)?;
    let ns1 = &lab.directors[0].ns;
    deafen_sync_port(ns1, "deaf")?;
    std::thread::sleep(Duration::from_millis(500));
    d1 = scenario::spawn_director(lab, 0, &p1)?;
    std::thread::sleep(Duration::from_millis(1500));
    ns1.exec("nft", &["delete table inet deaf"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    Ok((downloads.outcomes(), on_rs3, d1.log()))
}

/// The gate when the peer's first answer is lost: the hello goes again
/// each round until answered, and the returning master preempts only with
/// the flows in (preempt_sync_timeout, the gate's bound, is 8 s here).
#[test]
fn a_returning_master_whose_first_hello_went_unanswered_still_waits_for_the_flows() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let (outcomes, on_rs3, log) = return_with_lost_answers(&lab, ", preempt_sync_timeout = 8")?;
    let broken: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    ensure!(
        broken.is_empty(),
        "{} of 30 downloads broke ({on_rs3} were on rs3): {broken:?}\n{log}",
        broken.len()
    );
    let (Some(all_in), Some(master)) = (
        log.find("every peer's flows are in"),
        log.find("new=\"master\""),
    ) else {
        anyhow::bail!("no `every peer's flows are in` line before the takeover: {log}");
    };
    ensure!(all_in < master, "preempted before the flows were in: {log}");
    Ok(())
}

/// The control: the same return without the gate (`preempt_sync_timeout
/// = 0`) preempts while the peer's flows are still missing, and the
/// downloads on the drained server break.
#[test]
fn without_the_gate_a_returning_master_breaks_the_flows_placed_while_it_was_away() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let (outcomes, on_rs3, log) = return_with_lost_answers(&lab, ", preempt_sync_timeout = 0")?;
    let broken = outcomes.iter().filter(|o| o.is_err()).count();
    ensure!(
        broken > 0,
        "no download broke without the gate ({on_rs3} were on rs3): the control shows nothing\n{log}"
    );
    eprintln!(
        "without the gate: {broken} of 30 downloads broke ({on_rs3} were on the drained rs3)"
    );
    Ok(())
}

/// Flow sync and a master that stops for good (SIGTERM: priority 0, the
/// backup takes over at once): it sends every exception once more first.
/// Here the backup lost the drained server's flows when they were news
/// (its sync port dropped them), and only every 20th round (4 s) sends
/// everything again: without that last round the backup would send those
/// connections elsewhere.
#[test]
fn a_master_that_stops_sends_every_exception_first() -> Result<()> {
    const SIZE: usize = 3 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let (mut d1, d2) = synced_pair(&lab)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let (downloads, on_rs3) = downloads_some_on_rs3(&lab, SIZE, &s1)?;
    // The backup's sync port drops everything while rs3 is drained (its
    // flows become news then), then takes datagrams again.
    let ns2 = &lab.directors[1].ns;
    deafen_sync_port(ns2, "lost")?;
    for state in [&s1, &s2] {
        scenario::drain_real_server("10.0.0.22", state)?;
    }
    std::thread::sleep(Duration::from_millis(600));
    ns2.exec("nft", &["delete table inet lost"])?;
    ensure!(
        !d2.log().contains("flows taken from a peer director"),
        "the backup got flows through the dropped port: {}",
        d2.log()
    );
    d1.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    downloads
        .all()
        .with_context(|| format!("rs3 had {on_rs3} flows; director1's log: {}", d1.log()))?;
    ensure!(
        d1.log()
            .contains("every exception sent to the peers before stopping"),
        "{}",
        d1.log()
    );
    eprintln!(
        "30 downloads completed across the master's stop, {on_rs3} of them on the drained rs3"
    );
    Ok(())
}

/// Flow sync on a dual-stack socket (`listen = "[::]:PORT"`): an IPv4
/// peer's datagrams arrive from `::ffff:a.b.c.d` and are that peer's
/// (they were all dropped, uncounted); an IPv6 peer on the same socket
/// too. The drained server's flows reach the backup; nothing is dropped.
#[test]
fn flow_sync_on_a_dual_stack_socket_takes_ipv4_and_ipv6_peers() -> Result<()> {
    const SIZE: usize = 4 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    let config = |name: &str, priority: u8, peer: u8| -> Result<String> {
        let global = scenario::global_config(&lab, name)?;
        let sync = format!(
            "flow_sync = {{ listen = \"[::]:8848\", peers = [\"10.0.0.{peer}:8848\", \"[fd00::{peer}]:8848\"], key = \"lab-sync-key\", interval = 0.2 }}\n"
        );
        Ok(scenario::vrrp_config(&lab, name, priority, FAST)?.replacen(
            &global,
            &format!("{global}{sync}"),
            1,
        ))
    };
    // Each reaches the other over both families, on one socket.
    let p1 = lab.write("director1.toml", &config("director1", 150, 11)?)?;
    let p2 = lab.write("director2.toml", &config("director2", 100, 10)?)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let d2 = scenario::spawn_director(&lab, 1, &p2)?;
    let (s1, s2) = (lab.state_dir("director1")?, lab.state_dir("director2")?);
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    scenario::wait_status(&s1, Duration::from_secs(10), scenario::all_resolved)?;
    scenario::wait_status(&s2, Duration::from_secs(10), scenario::all_resolved)?;
    lab.write_big_file(SIZE)?;
    let vip = SocketAddr::from((VIP, 80));
    let downloads = http::Downloads::start(&lab.client.ns, vip, 12, SIZE);
    std::thread::sleep(Duration::from_secs(1));
    for state in [&s1, &s2] {
        scenario::drain_real_server("10.0.0.22", state)?;
    }
    // Over both families: at least twice the flows the master sent to
    // each peer address (the two datagrams of one round arrive one after
    // the other: a status may come between them, so this is waited for).
    let s = scenario::wait_status(&s2, Duration::from_secs(5), |s| {
        s["flow_sync"]["flows_received"].as_u64() >= Some(2)
    })
    .with_context(|| {
        format!(
            "{}\n{}",
            scenario::status(&s2)
                .map(|s| s["flow_sync"].to_string())
                .unwrap_or_default(),
            d2.log()
        )
    })?;
    ensure!(
        s["flow_sync"]["dropped"]
            .as_object()
            .is_none_or(|d| d.is_empty()),
        "director2 dropped datagrams: {}",
        s["flow_sync"]
    );
    let s = scenario::status(&s1)?;
    ensure!(
        s["flow_sync"]["dropped"]
            .as_object()
            .is_none_or(|d| d.is_empty()),
        "director1 dropped datagrams: {}",
        s["flow_sync"]
    );
    downloads.all()?;
    Ok(())
}
