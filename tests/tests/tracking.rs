//! What a VRRP instance tracks besides scripts: `[[track_file]]`,
//! `[[track_process]]` and per-instance weights (`{ name, weight }`), as
//! keepalived's `vrrp_track_file`, `vrrp_track_process` and `NAME weight W`.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use director_tests::{Lab, LabSpec, scenario};

const FAST: &str = "version = 3\nadvert_int = 0.1";

/// Kills the tracked process when the test ends, failed or not.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start(tag: &str) -> Result<Sleeper> {
        Ok(Sleeper(Command::new("sleep").arg(tag).spawn()?))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn effective(s: &Path) -> Result<i64> {
    scenario::status(s)?["vrrp"][0]["effective_priority"]
        .as_i64()
        .context("no effective_priority")
}

fn wait_effective(s: &Path, want: i64) -> Result<()> {
    scenario::wait_status(s, Duration::from_secs(5), |st| {
        st["vrrp"][0]["effective_priority"] == want
    })
    .map(|_| ())
}

/// Director 1 (priority 150) tracks an interface with weight -60, a file
/// with weight -1 (created by `init_file`), another file with the
/// instance's weight 0 (non-zero means Fault) and a process (weight 0: gone
/// means Fault). Each in turn hands the VIP to director 2 (priority 100)
/// and, restored, takes it back.
#[test]
fn files_processes_and_weighted_interfaces_move_the_vip() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let d1 = &lab.directors[0];
    d1.ns.ip(&[
        "link", "add", "trk0", "type", "veth", "peer", "name", "trk1",
    ])?;
    d1.ns.ip(&["link", "set", "trk0", "up"])?;
    d1.ns.ip(&["link", "set", "trk1", "up"])?;
    // A process no one else runs: `sleep` with a unique argument.
    let tag = format!("{}{}", 7_000_000 + std::process::id(), 17);
    let mut sleeper = Some(Sleeper::start(&tag)?);
    let maint = lab.path("state/maint");
    let drain = lab.path("drain");
    std::fs::write(&drain, "0\n")?;
    let tracking = format!(
        "{FAST}\ntrack_interface = [{{ name = \"trk0\", weight = -60 }}]\n\
         track_file = [\"maint\", {{ name = \"drain\", weight = 0 }}]\n\
         track_process = [\"sleeper\"]"
    );
    let tables = format!(
        "\n[[track_file]]\nname = \"maint\"\nfile = \"{}\"\nweight = -1\ninit_file = 0\n\
         \n[[track_file]]\nname = \"drain\"\nfile = \"{}\"\nweight = 5\n\
         \n[[track_process]]\nname = \"sleeper\"\nprocess = \"sleep\"\nparameters = \"{tag}\"\nterminate_delay = 0.3\n",
        maint.display(),
        drain.display()
    );
    let c1 = scenario::vrrp_config(&lab, "director1", 150, &tracking)? + &tables;
    let c2 = scenario::vrrp_config(&lab, "director2", 100, FAST)?;
    let p1 = lab.write("director1.toml", &c1)?;
    let p2 = lab.write("director2.toml", &c2)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;
    // init_file created the file (and its directory) with 0.
    ensure!(std::fs::read_to_string(&maint)?.trim() == "0");
    ensure!(effective(&s1)? == 150);
    let back = || -> Result<()> {
        scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
        scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(5))?;
        wait_effective(&s1, 150)
    };

    // The interface down costs 60: 90 < 100, director 2 preempts.
    d1.ns.ip(&["link", "set", "trk0", "down"])?;
    wait_effective(&s1, 90)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(5))?;
    ensure!(!d1.holds_vip()?, "a backup kept the VIP");
    d1.ns.ip(&["link", "set", "trk0", "up"])?;
    back()?;

    // The file's value times its weight: 30 x -1.
    std::fs::write(&maint, "30\n")?;
    wait_effective(&s1, 120)?;
    ensure!(scenario::vrrp_state(&s1, "VI_1").as_deref() == Some("master"));
    std::fs::write(&maint, "60\n")?;
    wait_effective(&s1, 90)?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    // An adjustment of -254 or less is Fault.
    std::fs::write(&maint, "300\n")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(5))?;
    std::fs::write(&maint, "0\n")?;
    back()?;

    // The instance's weight 0 overrides the file's 5: non-zero is Fault.
    std::fs::write(&drain, "1\n")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(!d1.holds_vip()?, "a faulted router kept the VIP");
    std::fs::write(&drain, "0\n")?;
    back()?;

    // The tracked process ends: Fault (after terminate_delay); it runs
    // again: master again.
    drop(sleeper.take());
    scenario::wait_vrrp_state(&s1, "VI_1", "fault", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    sleeper.replace(Sleeper::start(&tag)?);
    back()?;
    drop(sleeper);
    for s in [&s1, &s2] {
        let st = scenario::status(s)?;
        ensure!(st["vrrp"][0]["split_brains"] == 0, "{st}");
    }
    Ok(())
}

/// A process that only blips (gone for less than `terminate_delay`) does
/// not move the VIP; `quorum` counts processes.
#[test]
fn process_quorum_and_terminate_delay() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let tag = format!("{}{}", 7_000_000 + std::process::id(), 29);
    let mut a = Some(Sleeper::start(&tag)?);
    let _b = Sleeper::start(&tag)?;
    let tables = format!(
        "\n[[track_process]]\nname = \"pair\"\nprocess = \"sleep\"\nparameters = \"{tag}\"\nquorum = 2\nweight = -50\nterminate_delay = 1.5\n"
    );
    let c = scenario::vrrp_config(
        &lab,
        "director1",
        150,
        &format!("{FAST}\nstandalone = true\ntrack_process = [\"pair\"]"),
    )? + &tables;
    let p = lab.write("director1.toml", &c)?;
    let _d = scenario::spawn_director(&lab, 0, &p)?;
    let s = lab.state_dir("director1")?;
    scenario::wait_vrrp_state(&s, "VI_1", "master", Duration::from_secs(10))?;
    wait_effective(&s, 150)?;
    // One of two gone, back within the delay: no change.
    drop(a.take());
    std::thread::sleep(Duration::from_millis(500));
    a.replace(Sleeper::start(&tag)?);
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        effective(&s)? == 150,
        "a blip shorter than terminate_delay counted"
    );
    // Gone for good: below quorum after the delay.
    drop(a.take());
    wait_effective(&s, 100)?;
    Ok(())
}

/// `virtual_routes` and `virtual_rules` (IPv4 and IPv6) are on the master
/// only: added on becoming master, removed on leaving it (the backup takes
/// them), and a reload that changes them while master swaps them without a
/// transition.
#[test]
fn virtual_routes_and_rules_follow_the_master() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let drain = lab.path("drain");
    std::fs::write(&drain, "0\n")?;
    let v4 = "virtual_routes = [\"198.51.100.0/24 dev eth0 table 100\", \"blackhole 192.0.2.0/24\", \"default via 10.0.0.254 table 101 metric 7\"]\n\
              virtual_rules = [\"from 10.0.0.100 table 100 priority 1000\", \"to 203.0.113.0/24 fwmark 0x10/0xff prohibit priority 1001\"]";
    let v6 = "\n[[vrrp_instance]]\nname = \"VI_6\"\nvirtual_router_id = 61\nversion = 3\nadvert_int = 0.1\n\
              virtual_ipaddress = [\"fd00::100/128\"]\n\
              virtual_routes = [\"2001:db8:5::/48 dev eth0 table 100\", \"default via fd00::254 table 101\"]\n\
              virtual_rules = [\"from fd00::100 table 100 priority 1000\"]\n";
    let config = |router: &str, priority: u8, track: &str| -> Result<String> {
        let c = scenario::vrrp_config(&lab, router, priority, &format!("{FAST}\n{track}{v4}"))?;
        let file = if track.is_empty() {
            String::new()
        } else {
            format!(
                "\n[[track_file]]\nname = \"drain\"\nfile = \"{}\"\nweight = 0\n",
                drain.display()
            )
        };
        let six = v6.replace(
            "advert_int",
            &format!("priority = {priority}\n{track}advert_int"),
        );
        Ok(c + &six + &file)
    };
    let track = "track_file = [\"drain\"]\n";
    let p1 = lab.write("director1.toml", &config("director1", 150, track)?)?;
    let p2 = lab.write("director2.toml", &config("director2", 100, "")?)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let both = |s: &Path, state: &str| -> Result<()> {
        scenario::wait_vrrp_state(s, "VI_1", state, Duration::from_secs(10))?;
        scenario::wait_vrrp_state(s, "VI_6", state, Duration::from_secs(10))
    };
    both(&s1, "master")?;
    both(&s2, "backup")?;
    // What one director has: routes of tables 100/101 and the blackhole,
    // and its rules, in IPv4 and IPv6.
    let show = |i: usize| -> Result<String> {
        let ns = &lab.directors[i].ns;
        let mut out = String::new();
        for args in [
            &["route", "show", "table", "all"][..],
            &["-6", "route", "show", "table", "all"][..],
            &["rule", "show"][..],
            &["-6", "rule", "show"][..],
        ] {
            out.push_str(&String::from_utf8_lossy(&ns.ip(args)?.stdout));
        }
        Ok(out)
    };
    let wanted = [
        "198.51.100.0/24 dev eth0 table 100",
        "blackhole 192.0.2.0/24",
        "default via 10.0.0.254 dev eth0 table 101",
        "metric 7",
        "2001:db8:5::/48 dev eth0 table 100",
        "default via fd00::254 dev eth0 table 101",
        "1000:\tfrom 10.0.0.100 lookup 100",
        "1001:\tfrom all to 203.0.113.0/24 fwmark 0x10/0xff prohibit",
        "1000:\tfrom fd00::100 lookup 100",
    ];
    let has_all = |i: usize| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let out = show(i)?;
            let missing: Vec<&&str> = wanted.iter().filter(|w| !out.contains(**w)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "director{} lacks {missing:?}:\n{out}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let has_none = |i: usize| -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let out = show(i)?;
            let left: Vec<&&str> = wanted.iter().filter(|w| out.contains(**w)).collect();
            if left.is_empty() {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "director{} (not master) still has {left:?}:\n{out}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    has_all(0)?;
    has_none(1)?;

    // Director 1 faults: they move to director 2; back, they return.
    std::fs::write(&drain, "1\n")?;
    both(&s2, "master")?;
    both(&s1, "fault")?;
    has_all(1)?;
    has_none(0)?;
    std::fs::write(&drain, "0\n")?;
    both(&s1, "master")?;
    both(&s2, "backup")?;
    has_all(0)?;
    has_none(1)?;

    // A reload changing one route while master: swapped in place.
    let transitions = scenario::status(&s1)?["vrrp"][0]["transitions"].clone();
    let changed =
        std::fs::read_to_string(&p1)?.replace("blackhole 192.0.2.0/24", "unreachable 192.0.2.0/25");
    std::fs::write(&p1, changed)?;
    let (ok, out) = scenario::director_cli(&["reload"], &s1)?;
    ensure!(ok, "reload failed: {out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let out = show(0)?;
        if out.contains("unreachable 192.0.2.0/25") && !out.contains("blackhole 192.0.2.0/24") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the reload did not swap the route:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        show(0)?.contains("198.51.100.0/24 dev eth0 table 100"),
        "an unchanged route went"
    );
    ensure!(
        scenario::status(&s1)?["vrrp"][0]["transitions"] == transitions,
        "the reload moved the master"
    );
    Ok(())
}

/// `quorum_max`: the process check is up only while between `quorum` and
/// `quorum_max` processes match (one too many is as wrong as one too few);
/// and an instance that never hears another router, not `standalone`,
/// warns "peer never seen" after 30 s (status `peer_seen` false).
#[test]
fn process_quorum_max_and_the_peer_never_seen_warning() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let tag = format!("{}{}", 7_000_000 + std::process::id(), 31);
    let mut sleepers = vec![Sleeper::start(&tag)?];
    let tables = format!(
        "\n[[track_process]]\nname = \"band\"\nprocess = \"sleep\"\nparameters = \"{tag}\"\nquorum = 1\nquorum_max = 2\nweight = -50\n"
    );
    let c = scenario::vrrp_config(
        &lab,
        "director1",
        150,
        &format!("{FAST}\ntrack_process = [\"band\"]"),
    )? + &tables;
    let p = lab.write("director1.toml", &c)?;
    let mut d = scenario::spawn_director(&lab, 0, &p)?;
    let s = lab.state_dir("director1")?;
    scenario::wait_vrrp_state(&s, "VI_1", "master", Duration::from_secs(10))?;
    wait_effective(&s, 150)?;
    // Two: still within [1, 2].
    sleepers.push(Sleeper::start(&tag)?);
    // Three: above quorum_max, down.
    std::thread::sleep(Duration::from_millis(600));
    ensure!(effective(&s)? == 150, "two processes are within quorum_max");
    sleepers.push(Sleeper::start(&tag)?);
    wait_effective(&s, 100)?;
    // Back to two: up again; none: down.
    sleepers.pop();
    wait_effective(&s, 150)?;
    sleepers.clear();
    wait_effective(&s, 100)?;

    // Nobody else speaks VRRP on this lab: the warning comes once, about
    // 30 s after start (the daemon's own stamps).
    let started = d
        .log()
        .lines()
        .find_map(scenario::log_time)
        .context("no stamped line")?;
    let never = "VRRP peer never seen";
    d.wait_for_log(Duration::from_secs(40), |l| l.contains(never))?;
    let log = d.log();
    let warned: Vec<f64> = log
        .lines()
        .filter(|l| l.contains(never))
        .filter_map(scenario::log_time)
        .collect();
    ensure!(warned.len() == 1, "{warned:?}:\n{log}");
    let after = warned[0] - started;
    ensure!(
        (29.0..35.0).contains(&after),
        "warned {after:.1} s after start"
    );
    ensure!(
        scenario::status(&s)?["vrrp"][0]["peer_seen"] == false,
        "peer_seen"
    );
    Ok(())
}
