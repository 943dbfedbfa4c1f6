//! Monitoring as an operator runs it: Debian's Prometheus scrapes a VRRP
//! pair of directors (health checks, flow sync, BGP through BIRD) and a
//! third director whose dataplane cannot outlive it; `promtool` checks a
//! scrape, every query of the shipped Grafana dashboard returns series
//! for the lab's services, real servers and instances, and the shipped
//! alerting rules fire on real faults and resolve when they are fixed.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, Proc, director_bin, ecmp, http,
    lab::VIP,
    prometheus::{self, Prometheus, firing},
    scenario,
};
use nix::sys::signal::Signal;

/// The rules' unit tests (`packaging/prometheus-alerts.test.yml`) pass
/// under `promtool test rules`: each alert fires on its fault and stays
/// quiet on the normal event that resembles it.
#[test]
fn the_shipped_alert_rules_pass_their_unit_tests() -> Result<()> {
    let dir = prometheus::shipped_rules()
        .parent()
        .context("packaging dir")?
        .to_path_buf();
    let check = std::process::Command::new("promtool")
        .args(["check", "rules", "prometheus-alerts.yml"])
        .current_dir(&dir)
        .output()
        .context("promtool (cargo xtask setup installs Debian's prometheus)")?;
    ensure!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = std::process::Command::new("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir(&dir)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    ensure!(
        test.status.success() && said.contains("SUCCESS"),
        "promtool test rules:\n{said}"
    );
    // Every alert of the rules file has a test that expects it to fire.
    let rules = std::fs::read_to_string(prometheus::shipped_rules())?;
    let tests = std::fs::read_to_string(dir.join("prometheus-alerts.test.yml"))?;
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    ensure!(names.len() >= 11, "{names:?}");
    for n in names {
        ensure!(
            tests.contains(&format!("alertname: {n}\n")),
            "no rule test expects {n} to fire"
        );
    }
    Ok(())
}

const JOB: &str = "director";

/// Director `i`'s config: the VIP's HTTP service with every lab real
/// server under an HTTP check every 0.5 s, metrics on its address; with
/// `pair`, VRRP (director1 at priority 150), flow sync with the other and
/// BGP through a BIRD whose socket is `bird_socket`.
fn config(lab: &Lab, i: usize, pair: bool) -> Result<String> {
    let name = format!("director{}", i + 1);
    let me = director_tests::lab::director_ip(i);
    let mut c = scenario::global_config(lab, &name)?;
    c.push_str(&format!("metrics_address = \"{me}:9100\"\n"));
    if pair {
        let peer = director_tests::lab::director_ip(1 - i);
        let sock = lab.dir.join(format!("bird-{name}.ctl"));
        c.push_str(&format!(
            "flow_sync = {{ listen = \"{me}:8848\", peers = [\"{peer}:8848\"], key = \"lab-sync-key\", interval = 0.2 }}\n\
             bgp = {{ bird_socket = \"{}\" }}\n\
             \n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = {}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP}/32\"]\n",
            sock.display(),
            if i == 0 { 150 } else { 100 }
        ));
    }
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\ndelay_loop = 0.5\n"
    ));
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n  [[virtual_server.real_server]]\n  address = \"{}\"\n  [virtual_server.real_server.http_get]\n  connect_timeout = 0.5\n  retry = 0\n  url = [{{ path = \"/\", status_code = 200 }}]\n",
            rs.ip
        ));
    }
    Ok(c)
}

/// BIRD in director `i`'s namespace, exporting nothing anywhere: a static
/// protocol that includes the file the daemon writes (it exists once the
/// daemon started).
fn bird(lab: &Lab, i: usize) -> Result<Proc> {
    let d = &lab.directors[i];
    let vips4 = lab.state_dir(&d.name)?.join("bird-vips4.conf");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vips4.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not create {}",
            d.name,
            vips4.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (p, _) = ecmp::bird(
        &d.ns,
        &lab.dir,
        &d.name,
        &format!(
            "router id {};\nprotocol device {{}}\nprotocol static director4 {{\n  ipv4;\n  include \"{}\";\n}}\n",
            d.ip,
            vips4.display()
        ),
    )?;
    Ok(p)
}

/// Director3, standalone, started without `CAP_SYS_CHROOT` inside `ip
/// netns exec`'s private mount namespace: it cannot pin on the host's
/// bpffs, so its dataplane would die with it (unless `normal`).
fn director3(lab: &Lab, normal: bool) -> Result<Proc> {
    let path = lab.write("director3.toml", &config(lab, 2, false)?)?;
    let bin = director_bin()?.to_string_lossy().to_string();
    let path = path.to_string_lossy().to_string();
    let log = lab.path(if normal {
        "director3-again.log"
    } else {
        "director3.log"
    });
    if normal {
        return lab.directors[2]
            .ns
            .spawn(&bin, &["run", "--config", &path], &log);
    }
    lab.directors[2].ns.spawn(
        "setpriv",
        &[
            "--bounding-set",
            "-sys_chroot",
            "--inh-caps",
            "-sys_chroot",
            &bin,
            "run",
            "--config",
            &path,
        ],
        &log,
    )
}

/// The title and expressions of every panel of the dashboard that has
/// queries.
fn dashboard_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(title), Some(targets)) = (
                    m.get("title").and_then(|t| t.as_str()),
                    m.get("targets").and_then(|t| t.as_array()),
                ) {
                    for t in targets {
                        if let Some(e) = t["expr"].as_str() {
                            out.push((title.to_string(), e.to_string()));
                        }
                    }
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&d, &mut out);
    Ok(out)
}

/// The values of label `k` over a query's result.
fn values(result: &[serde_json::Value], k: &str) -> BTreeSet<String> {
    result
        .iter()
        .filter_map(|s| s["metric"][k].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn prometheus_scrapes_the_lab_and_the_shipped_alerts_fire_and_resolve() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 3,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let (_d1, _d2) =
        scenario::vrrp_pair_of(&lab, &config(&lab, 0, true)?, &config(&lab, 1, true)?)?;
    let _birds = [bird(&lab, 0)?, bird(&lab, 1)?];
    let mut d3 = director3(&lab, false)?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let s3 = lab.state_dir("director3")?;
    scenario::wait_status(&s3, Duration::from_secs(15), scenario::all_resolved)?;
    let targets: Vec<String> = (0..3)
        .map(|i| format!("{}:9100", director_tests::lab::director_ip(i)))
        .collect();
    let prom = Prometheus::start(
        &lab.client.ns,
        &lab.dir,
        JOB,
        &targets,
        &[prometheus::shipped_rules()],
    )?;
    prom.wait_up(3, Duration::from_secs(20))?;
    // Traffic through the VIP, and BIRD taking the master's announcement.
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(3)))?;
    ensure!(t.ok == 20, "{t:?}");
    scenario::wait_status(&s1, Duration::from_secs(15), |s| {
        s["bgp"]["announced"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && s["bgp"]["error"].is_null()
    })?;

    // A scrape as curl or promtool makes it (no Accept header: Prometheus's
    // text format) is clean for promtool's linter.
    for t in &targets {
        let addr: SocketAddr = t.parse()?;
        let scrape = lab
            .client
            .run(move || http::get(addr, "/metrics", Duration::from_secs(3)))??;
        ensure!(scrape.status == 200, "{t}: {}", scrape.status);
        let said = prometheus::promtool_check_metrics(&scrape.body)?;
        ensure!(
            said.is_empty(),
            "promtool check metrics on {t}:\n{said}\n{}",
            scrape.body
        );
    }

    // Every panel's query returns series, covering the lab's VIP, both real
    // servers and the pair's virtual router. (Rates need two scrapes.)
    let job_values = prom.label_values("job", "director_dataplane_info")?;
    ensure!(
        job_values == [JOB],
        "the dashboard's $job variable: {job_values:?}"
    );
    let queries = dashboard_queries(&prometheus::shipped_dashboard())?;
    ensure!(queries.len() > 20, "{queries:?}");
    let servers: BTreeSet<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (title, expr) in &queries {
        let q = expr.replace("$job", JOB);
        let result = loop {
            let r = prom.query(&q)?;
            if !r.is_empty() || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        ensure!(
            !result.is_empty(),
            "panel \"{title}\": `{q}` returns no series"
        );
        let got = values(&result, "address");
        ensure!(
            got.is_empty() || got.contains(&VIP.to_string()),
            "panel \"{title}\": no series for the VIP: {got:?}"
        );
        let got = values(&result, "real_server");
        ensure!(
            got.is_empty() || got.is_superset(&servers),
            "panel \"{title}\": real servers {got:?}, not all of {servers:?}"
        );
        if expr.contains("vrrp") {
            let got = values(&result, "vrid");
            ensure!(
                got.is_empty() || got.contains("51"),
                "panel \"{title}\": virtual routers {got:?}"
            );
        }
    }
    let state = prom.query("max by (instance, state) (director_vrrp_state == 1)")?;
    let states: BTreeSet<(String, String)> = state
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                s["metric"]["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    ensure!(
        states
            == BTreeSet::from([
                (targets[0].clone(), "master".to_string()),
                (targets[1].clone(), "backup".to_string())
            ]),
        "VRRP states as Prometheus sees them: {states:?}"
    );
    let vrrp_names = prom.label_values("vrrp_instance", "director_vrrp_state")?;
    ensure!(vrrp_names == ["VI_1"], "{vrrp_names:?}");
    // Once every director's checks pass, nothing is active in the healthy
    // lab but director3's dataplane alert (pending for its minute).
    let healthy = |s: &serde_json::Value| {
        s["virtual_servers"][0]["real_servers"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["healthy"] == true))
    };
    for s in [&s1, &s2, &s3] {
        scenario::wait_status(s, Duration::from_secs(10), healthy)?;
    }
    prom.wait_alerts("a healthy lab", Duration::from_secs(10), |a| {
        a.iter().all(|a| {
            a.name == "DirectorDataplaneDiesWithDaemon" && a.label("instance") == targets[2]
        })
    })?;

    // 1. The master's link goes down: the backup takes over within a few
    // advert intervals, which is no "no master" alert (it never fires).
    lab.directors[0].ns.ip(&["link", "set", "eth0", "down"])?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(14) {
        let a = prom.alerts()?;
        ensure!(
            !a.iter()
                .any(|a| a.name == "DirectorVrrpNoMaster" && a.state == "firing"),
            "a takeover raised DirectorVrrpNoMaster: {a:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.directors[0].ns.ip(&["link", "set", "eth0", "up"])?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(15))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(5))?;
    prom.wait_up(3, Duration::from_secs(15))?;

    // 2. A firewall drops VRRP between the directors: both are masters -
    // the split-brain alert - until it is lifted.
    for i in 0..2 {
        for r in [
            "add table inet lab",
            "add chain inet lab input { type filter hook input priority 0 ; }",
            "add rule inet lab input meta l4proto 112 drop",
        ] {
            lab.directors[i].ns.exec("nft", &[r])?;
        }
    }
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    prom.wait_alerts(
        "DirectorVrrpSplitBrain firing",
        Duration::from_secs(30),
        |a| firing(a, "DirectorVrrpSplitBrain", "vrid", "51"),
    )?;
    // Lifted on director1's side first: for half a second it hears the
    // other master, which it counts as a split brain (the alert that says
    // adverts were lost for a while, held for 5 minutes).
    lab.directors[0]
        .ns
        .exec("nft", &["delete table inet lab"])?;
    std::thread::sleep(Duration::from_millis(500));
    lab.directors[1]
        .ns
        .exec("nft", &["delete table inet lab"])?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(5))?;
    prom.wait_alerts(
        "DirectorVrrpSplitBrainHeard firing",
        Duration::from_secs(15),
        |a| firing(a, "DirectorVrrpSplitBrainHeard", "instance", &targets[0]),
    )?;

    // 3. rs1's web server stops: both directors' checks fail it - the
    // real-server-down alert, naming it.
    let rs1 = lab.real_servers[0].ip.to_string();
    lab.stop_http(0)?;
    let a = prom.wait_alerts(
        "DirectorRealServerDown firing",
        Duration::from_secs(40),
        |a| firing(a, "DirectorRealServerDown", "real_server", &rs1),
    )?;
    ensure!(
        !firing(
            &a,
            "DirectorRealServerDown",
            "real_server",
            &lab.real_servers[1].ip.to_string()
        ),
        "the healthy real server is reported down: {a:#?}"
    );

    // 4. Director3's pins are on its private bpffs: the alert that its
    // dataplane dies with the daemon fires for it alone.
    let a = prom.wait_alerts(
        "DirectorDataplaneDiesWithDaemon firing",
        Duration::from_secs(75),
        |a| {
            firing(
                a,
                "DirectorDataplaneDiesWithDaemon",
                "instance",
                &targets[2],
            )
        },
    )?;
    ensure!(
        a.iter()
            .filter(|a| a.name == "DirectorDataplaneDiesWithDaemon")
            .all(|a| a.label("instance") == targets[2]),
        "{a:#?}"
    );

    // Fixed: the split brain is gone, rs1 serves again, director3 runs as
    // it should (its pins on the host's bpffs): every alert resolves but
    // the record that a split brain was heard (it holds for 5 minutes).
    lab.start_http(0)?;
    d3.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    let _d3 = director3(&lab, true)?;
    scenario::wait_status(&s3, Duration::from_secs(15), |s| {
        s["dataplane_survives_restart"] == true && scenario::all_resolved(s)
    })?;
    prom.wait_alerts("every alert resolved", Duration::from_secs(40), |a| {
        a.iter().all(|a| a.name == "DirectorVrrpSplitBrainHeard")
    })?;
    Ok(())
}
