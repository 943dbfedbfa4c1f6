//! `director import-keepalived` on a corpus of realistic keepalived.conf
//! files (tests/corpus/keepalived): every file imports, the TOML passes
//! `check-config`, exactly the expected directives are reported as not
//! translated (by file and line), the translated values are right; and in
//! the lab an imported node forms a virtual router with keepalived running
//! the original peer config, failing over both ways.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, director_bin, scenario};
use nix::sys::signal::Signal;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/keepalived")
        .join(name)
}

/// (file name, line) of reported directives.
type Reported = BTreeSet<(String, usize)>;

/// Imports `file`: the TOML, and the (file name, line) of every
/// not-translated report on stderr.
fn import(file: &Path) -> Result<(toml::Table, String, Reported)> {
    let out = Command::new(director_bin()?)
        .arg("import-keepalived")
        .arg(file)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(out.status.success(), "import failed: {stderr}");
    let text = String::from_utf8(out.stdout)?;
    let table: toml::Table = toml::from_str(&text).context("the import is not TOML")?;
    let reported = stderr
        .lines()
        .filter(|l| l.contains("not translated:"))
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (path, line) = (parts.next()?, parts.next()?);
            let name = Path::new(path).file_name()?.to_string_lossy().to_string();
            Some((name, line.trim().parse().ok()?))
        })
        .collect();
    Ok((table, text, reported))
}

fn check_config(text: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("director-import-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{:x}.toml", rand_suffix()));
    std::fs::write(&path, text)?;
    let out = Command::new(director_bin()?)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    let _ = std::fs::remove_file(&path);
    ensure!(
        out.status.success(),
        "check-config refused the import: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn lines(file: &str, lines: &[usize]) -> Reported {
    lines.iter().map(|l| (file.to_string(), *l)).collect()
}

#[test]
fn the_corpus_imports_and_passes_check_config() -> Result<()> {
    // nginx + keepalived pair: mail settings are reported, the rest maps.
    for (file, router) in [("nginx-pair-a.conf", "LB_A"), ("nginx-pair-b.conf", "LB_B")] {
        let (t, text, reported) = import(&corpus(file))?;
        check_config(&text)?;
        ensure!(
            reported == lines(file, &[5, 8, 9, 10]),
            "{file}: {reported:?}"
        );
        ensure!(t["global"]["router_id"].as_str() == Some(router));
        let vi = &t["vrrp_instance"][0];
        ensure!(
            vi["authentication"]["auth_pass"].as_str() == Some("s3cret"),
            "{vi}"
        );
        ensure!(vi["track_script"][0].as_str() == Some("chk_nginx"), "{vi}");
        ensure!(
            vi["virtual_ipaddress"][0].as_str() == Some("10.0.0.100/32"),
            "{vi}"
        );
        ensure!(vi["garp_master_delay"].as_integer() == Some(1), "{vi}");
        let s = &t["vrrp_script"][0];
        ensure!(
            s["weight"].as_integer() == Some(-20) && s["fall"].as_integer() == Some(2),
            "{s}"
        );
    }

    // LVS-DR with HTTP_GET / SSL_GET / TCP_CHECK / DNS_CHECK.
    let (t, text, reported) = import(&corpus("lvs-dr-http.conf"))?;
    check_config(&text)?;
    ensure!(
        reported == lines("lvs-dr-http.conf", &[5, 89]),
        "{reported:?}"
    );
    let vs = t["virtual_server"].as_array().context("virtual servers")?;
    ensure!(vs.len() == 3, "{vs:?}");
    // wrr and rr are kept, with the IPVS dataplane that runs them.
    ensure!(
        vs[0]["scheduler"].as_str() == Some("wrr") && vs[1]["scheduler"].as_str() == Some("sh")
    );
    ensure!(vs[2]["scheduler"].as_str() == Some("rr"));
    ensure!(t["global"]["dataplane"].as_str() == Some("ipvs"));
    ensure!(vs[0]["persistence_timeout"].as_integer() == Some(50));
    ensure!(vs[0]["sorry_server"].as_str() == Some("10.0.0.30"));
    ensure!(vs[0]["quorum"].as_integer() == Some(2) && vs[0]["hysteresis"].as_integer() == Some(1));
    let rs = &vs[0]["real_server"][0];
    ensure!(
        rs["inhibit_on_failure"].as_bool() == Some(true) && rs["weight"].as_integer() == Some(3)
    );
    ensure!(rs["http_get"]["retry"].as_integer() == Some(3), "{rs}");
    ensure!(
        rs["http_get"]["url"][1]["status_code"].as_str() == Some("200-299"),
        "{rs}"
    );
    ensure!(vs[0]["real_server"][1]["tcp_check"]["connect_port"].as_integer() == Some(80));
    ensure!(vs[1]["real_server"][0]["ssl_get"]["retry"].as_integer() == Some(2));
    ensure!(vs[2]["protocol"].as_str() == Some("udp"));
    ensure!(vs[2]["real_server"][0]["dns_check"]["name"].as_str() == Some("example.com"));

    // Unicast cloud setup.
    let (t, text, reported) = import(&corpus("unicast-cloud.conf"))?;
    check_config(&text)?;
    // `script_user root` comes across with a warning (root scripts keep
    // the daemon's capabilities), `enable_script_security` silently.
    ensure!(
        reported == lines("unicast-cloud.conf", &[4, 37]),
        "{reported:?}"
    );
    ensure!(t["global"]["script_user"].as_str() == Some("root"));
    ensure!(t["global"]["enable_script_security"].as_bool() == Some(true));
    let vi = &t["vrrp_instance"][0];
    // `chk_upstream weight -50`: the instance's own weight.
    ensure!(
        vi["track_script"][1]["weight"].as_integer() == Some(-50),
        "{vi}"
    );
    ensure!(vi["unicast_peer"][0].as_str() == Some("10.0.0.11"), "{vi}");
    ensure!(vi["unicast_src_ip"].as_str() == Some("10.0.0.10"), "{vi}");
    ensure!(vi["nopreempt"].as_bool() == Some(true) && vi["version"].as_integer() == Some(3));
    ensure!(vi["advert_int"].as_float() == Some(0.5), "{vi}");

    // Sync groups, with the instances in included files.
    let (t, text, reported) = import(&corpus("sync-groups.conf"))?;
    check_config(&text)?;
    // (int.conf:18, `use_vmac` on an IPv6 instance, comes across.)
    let expected: Reported = [("ext.conf", 10), ("int.conf", 8)]
        .into_iter()
        .map(|(f, l)| (f.to_string(), l))
        .collect();
    ensure!(reported == expected, "{reported:?}");
    let names: Vec<&str> = t["vrrp_instance"]
        .as_array()
        .context("instances")?
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    ensure!(names == ["VI_EXT", "VI_INT", "VI_V6"], "{names:?}");
    ensure!(t["vrrp_instance"][2]["use_vmac"].as_bool() == Some(true));
    let g = &t["vrrp_sync_group"][0];
    ensure!(g["group"].as_array().map(Vec::len) == Some(2), "{g}");
    ensure!(g["notify_master"].as_str() == Some("/etc/keepalived/edge.sh MASTER"));
    ensure!(
        t["vrrp_instance"][2]["version"].as_integer() == Some(3),
        "IPv6 needs v3"
    );
    Ok(())
}

/// The importer's contract over the whole corpus: each file either
/// imports into a config `check-config` accepts, or the import exits
/// non-zero naming the file, the line and the directive that stops it.
/// `--strict`: a file with directives that do not come across exits 1,
/// still naming each on stderr (and printing nothing on stdout: no
/// half-imported config to redirect into place); a file that translates
/// entirely exits 0 with the same output as without it.
#[test]
fn strict_refuses_what_does_not_translate() -> Result<()> {
    let file = corpus("nginx-pair-a.conf");
    let out = Command::new(director_bin()?)
        .args(["import-keepalived", "--strict"])
        .arg(&file)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}: {stderr}",
        out.status
    );
    let named = stderr
        .lines()
        .filter(|l| l.contains("not translated:"))
        .count();
    ensure!(named == 4, "{named} directives named:\n{stderr}");
    ensure!(
        out.stdout.is_empty(),
        "--strict printed a config:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (_, text, reported) = import(&corpus("trackers-routes.conf"))?;
    ensure!(reported.is_empty(), "{reported:?}");
    let out = Command::new(director_bin()?)
        .args(["import-keepalived", "--strict"])
        .arg(corpus("trackers-routes.conf"))
        .output()?;
    ensure!(
        out.status.success() && String::from_utf8(out.stdout)? == text,
        "--strict on a file that translates entirely: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn every_corpus_file_imports_cleanly_or_is_refused_clearly() -> Result<()> {
    let dir = corpus("");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    ensure!(files.len() >= 10, "the corpus shrank: {files:?}");
    let mut refused = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        for id in ["lb1", "lb2"] {
            let out = Command::new(director_bin()?)
                .args(["import-keepalived", "--config-id", id])
                .arg(file)
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if out.status.success() {
                check_config(&String::from_utf8(out.stdout)?)
                    .with_context(|| format!("{name} (config id {id})"))?;
            } else {
                ensure!(
                    out.stdout.is_empty(),
                    "{name}: a refused import printed something"
                );
                let first = stderr.lines().next().unwrap_or_default();
                let mut parts = first.splitn(3, ':');
                let (path, line, rest) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                ensure!(
                    path.ends_with(&name)
                        && line.trim().parse::<usize>().is_ok()
                        && rest.contains('`'),
                    "{name}: a refusal must name file, line and directive: {stderr}"
                );
                refused.push(name.clone());
            }
        }
    }
    refused.dedup();
    ensure!(refused == ["ah-auth.conf"], "refused: {refused:?}");
    Ok(())
}

/// Groups (ranges included), PING/SMTP checks, trackers with per-instance
/// weights, routes and rules, conditional lines and BFD come across or are
/// named.
#[test]
fn groups_trackers_routes_and_conditions_come_across() -> Result<()> {
    let (t, text, reported) = import(&corpus("lvs-groups.conf"))?;
    check_config(&text)?;
    ensure!(
        reported == lines("lvs-groups.conf", &[12, 73]),
        "{reported:?}"
    );
    // A fwmark service comes across, served by IPVS (XDP cannot see
    // firewall marks).
    ensure!(
        t["global"]["dataplane"].as_str() == Some("ipvs")
            && t["virtual_server"][2]["fwmark"].as_integer() == Some(7)
            && t["virtual_server"][2].get("address").is_none(),
        "{t}"
    );
    let g = &t["virtual_server_group"][0];
    ensure!(
        g["members"].as_array().map(|m| m.len()) == Some(3)
            && g["members"][1].as_str() == Some("192.168.200.101-103 443")
            && g["members"][2].as_str() == Some("192.168.200.110 8000-8010"),
        "{g}"
    );
    let vs = &t["virtual_server"];
    ensure!(
        vs[0]["group"].as_str() == Some("WEB") && vs[0].get("address").is_none(),
        "{vs}"
    );
    ensure!(
        vs[0]["real_server"][0]["ping_check"]["retry"].as_integer() == Some(2),
        "{vs}"
    );
    ensure!(
        vs[1]["real_server"][0]["smtp_check"]["helo_name"].as_str() == Some("director.example.com"),
        "{vs}"
    );

    let (t, text, reported) = import(&corpus("trackers-routes.conf"))?;
    check_config(&text)?;
    ensure!(reported.is_empty(), "{reported:?}");
    ensure!(t["track_file"][0]["init_file"].as_integer() == Some(0));
    ensure!(t["track_file"][0]["init_file_overwrite"].as_bool() == Some(true));
    let delay = &t["track_process"][0]["delay"];
    ensure!(delay.as_float().or(delay.as_integer().map(|i| i as f64)) == Some(2.0));
    let vi = &t["vrrp_instance"][0];
    ensure!(
        vi["track_interface"][1]["weight"].as_integer() == Some(-40),
        "{vi}"
    );
    ensure!(
        vi["track_script"][0]["weight"].as_integer() == Some(-25),
        "{vi}"
    );
    ensure!(
        vi["track_file"][0]["weight"].as_integer() == Some(-2),
        "{vi}"
    );
    ensure!(
        vi["virtual_routes"].as_array().map(Vec::len) == Some(3),
        "{vi}"
    );
    ensure!(vi["virtual_rules"][0].as_str() == Some("from 10.2.0.100 table 100 priority 100"));

    // Conditional lines: each router of the pair gets its own.
    for (id, priority, state, scripts) in [("lb1", 150, "master", 1), ("lb2", 100, "backup", 0)] {
        let out = Command::new(director_bin()?)
            .args(["import-keepalived", "--config-id", id])
            .arg(corpus("conditional.conf"))
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        check_config(&text)?;
        let t: toml::Table = toml::from_str(&text)?;
        ensure!(t["global"]["router_id"].as_str() == Some(id), "{text}");
        let vi = &t["vrrp_instance"][0];
        ensure!(vi["priority"].as_integer() == Some(priority), "{id}: {vi}");
        ensure!(vi["state"].as_str() == Some(state), "{id}: {vi}");
        let tracked = vi
            .get("track_script")
            .and_then(|v| v.as_array())
            .map_or(0, Vec::len);
        ensure!(tracked == scripts, "{id}: {vi}");
    }

    // BFD comes across (sessions and track_bfd); connection sync and a
    // dangling group member are named.
    let (t, text, reported) = import(&corpus("bfd-pair.conf"))?;
    check_config(&text)?;
    ensure!(
        reported == lines("bfd-pair.conf", &[5, 44, 50]),
        "{reported:?}"
    );
    ensure!(
        t["bfd_instance"][0]["neighbor_ip"].as_str() == Some("10.3.0.1")
            && t["bfd_instance"][0]["multiplier"].as_integer() == Some(3)
            && t["vrrp_instance"][0]["track_bfd"][0].as_str() == Some("upstream"),
        "{t}"
    );
    ensure!(t["vrrp_sync_group"][0]["group"].as_array().map(Vec::len) == Some(2));
    Ok(())
}

/// keepalived runs node A's original config, director runs node B's import:
/// they form one virtual router (same VRID, same password), and the VIP
/// moves to the director when keepalived stops and back when it returns.
#[test]
fn an_imported_node_pairs_with_keepalived_running_the_original() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 1,
        vip_on_director: false,
    })?;
    let (mut t, _, _) = import(&corpus("nginx-pair-b.conf"))?;
    let state = lab.state_dir("director2")?;
    if let Some(g) = t.get_mut("global").and_then(toml::Value::as_table_mut) {
        g.insert(
            "state_dir".into(),
            toml::Value::String(state.display().to_string()),
        );
    }
    let path = lab.write("imported-b.toml", &toml::to_string(&t)?)?;
    // As root, as the director runs its scripts (keepalived would fall back
    // to an unprivileged user that cannot see root's nginx).
    let original_a = std::fs::read_to_string(corpus("nginx-pair-a.conf"))?
        .replace("router_id LB_A", "router_id LB_A\n   script_user root");
    let mut ka = scenario::spawn_keepalived(&lab, 0, &original_a)?;
    let _d = scenario::spawn_director(&lab, 1, &path)?;
    scenario::wait_vrrp_state(&state, "VI_1", "backup", Duration::from_secs(10))?;
    // It hears keepalived's adverts, password and all.
    let s = scenario::wait_status(&state, Duration::from_secs(10), |s| {
        s["vrrp"][0]["adverts_received"].as_u64().unwrap_or(0) >= 2
    })?;
    ensure!(s["vrrp"][0]["master_address"] == "10.0.0.10", "{s}");
    ensure!(
        s["vrrp"][0]["rejected"]
            .as_object()
            .is_none_or(|r| r.is_empty()),
        "{s}"
    );
    // keepalived stops (priority 0 advert): the director takes the VIP.
    ka.proc.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&state, "VI_1", "master", Duration::from_secs(5))?;
    ensure!(
        lab.directors[1].holds_vip()?,
        "the director does not hold the VIP"
    );
    // keepalived returns with priority 101 and preempts.
    let _ka = scenario::spawn_keepalived(&lab, 0, &original_a)?;
    scenario::wait_vrrp_state(&state, "VI_1", "backup", Duration::from_secs(10))?;
    Ok(())
}
