//! Operator experience in the lab: Prometheus metrics and /status over
//! HTTP, live reload (success under load with zero failures and zero VRRP
//! transitions; failure changing nothing), shell completions, the log
//! level and `status --watch`.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, director_bin, http, lab::VIP, scenario};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `drain`: rs3 with weight 0.
fn config(lab: &Lab, servers: usize, vrrp_priority: u8, drain: bool) -> Result<String> {
    let mut c = scenario::global_config(lab, "director1")?;
    c.push_str("metrics_address = \"10.0.0.10:9100\"\n");
    c.push_str(&format!(
        "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 71\npriority = {vrrp_priority}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"10.0.0.101\"]\n"
    ));
    let rs: Vec<String> = lab
        .real_servers
        .iter()
        .take(servers)
        .map(|r| r.ip.to_string())
        .collect();
    let weights: &[(&str, u32)] = if drain { &[("10.0.0.22", 0)] } else { &[] };
    c.push_str(&scenario::virtual_server(
        &VIP.to_string(),
        80,
        &rs,
        weights,
    ));
    Ok(c)
}

fn fetch(lab: &Lab, path: &'static str) -> Result<String> {
    let addr = SocketAddr::from(([10, 0, 0, 10], 9100));
    let r = lab
        .client
        .run(move || http::get(addr, path, Duration::from_secs(3)))??;
    ensure!(r.status == 200, "{path}: HTTP {}", r.status);
    Ok(r.body)
}

fn reload(state: &std::path::Path) -> Result<(bool, String)> {
    scenario::director_cli(&["reload"], state)
}

#[test]
fn metrics_status_and_live_reload() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let path = lab.write("director.toml", &config(&lab, 3, 150, false)?)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    scenario::wait_vrrp_state(&state, "VI_1", "master", Duration::from_secs(10))?;
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 30, Duration::from_secs(2)))?;
    ensure!(t.ok == 30, "{t:?}");

    // Prometheus text, read by a real parser.
    let text = fetch(&lab, "/metrics")?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .context("the exposition does not parse")?;
    let sample = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    ensure!(
        sample("director_virtual_server_packets_total").is_some_and(|v| v >= 90.0),
        "{text}"
    );
    ensure!(
        sample("director_vrrp_adverts_sent_total").is_some_and(|v| v > 0.0),
        "{text}"
    );
    ensure!(
        sample("director_real_server_healthy") == Some(1.0),
        "{text}"
    );
    // /status is the status document.
    let status: serde_json::Value = serde_json::from_str(&fetch(&lab, "/status")?)?;
    ensure!(status["router_id"] == "director1", "{status}");
    let transitions = status["vrrp"][0]["transitions"].clone();

    // A good reload while the client sends requests: rs3 drains (weight
    // 0), nothing fails, the VRRP instance does not move.
    lab.write("director.toml", &config(&lab, 3, 150, true)?)?;
    let ((ok, err), load) = http::under_load(&lab.client.ns, vip, || reload(&state))?;
    ensure!(ok, "reload failed: {err}");
    ensure!(
        load.failed == 0 && load.ok > 0,
        "requests failed during the reload: {load:?}"
    );
    let s = scenario::status(&state)?;
    ensure!(
        s["virtual_servers"][0]["real_servers"][2]["weight"] == 0,
        "{s}"
    );
    ensure!(
        s["vrrp"][0]["transitions"] == transitions,
        "VRRP flapped on reload: {s}"
    );
    ensure!(s["vrrp"][0]["state"] == "master", "{s}");
    let t = lab
        .client
        .run(move || http::hammer(vip, 30, Duration::from_secs(2)))?;
    ensure!(t.ok == 30 && !t.by_body.contains_key("rs3"), "{t:?}");

    // A bad reload changes nothing and says where the problem is.
    let good = std::fs::read_to_string(&path)?;
    lab.write(
        "director.toml",
        &good.replace("port = 80", "port = 80\nbogus_key = 1"),
    )?;
    let (ok, err) = reload(&state)?;
    ensure!(!ok, "a bad config was accepted");
    ensure!(
        err.contains("director.toml:") && err.contains("bogus_key"),
        "{err}"
    );
    // The same through SIGHUP: the daemon logs and carries on.
    let pid = d.pid().context("pid")?;
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP)?;
    d.wait_for_log(Duration::from_secs(5), |l| l.contains("reload refused"))?;
    ensure!(d.running(), "SIGHUP with a bad config killed the daemon");
    let s = scenario::status(&state)?;
    ensure!(
        s["virtual_servers"][0]["real_servers"][2]["weight"] == 0,
        "the failed reload changed something: {s}"
    );
    // A change that needs a restart is refused too.
    lab.write("director.toml", &good.replace("\"eth0\"", "\"eth1\""))?;
    let (ok, err) = reload(&state)?;
    ensure!(!ok && err.contains("needs a restart"), "{err}");
    for (what, text) in [
        (
            "global.flow_table_size",
            good.replacen("[global]\n", "[global]\nflow_table_size = 4096\n", 1),
        ),
        (
            "bfd_instance",
            format!("{good}\n[[bfd_instance]]\nname = \"b\"\nneighbor_ip = \"10.0.0.2\"\n"),
        ),
    ] {
        lab.write("director.toml", &text)?;
        let (ok, err) = reload(&state)?;
        ensure!(
            !ok && err.contains("needs a restart") && err.contains(what),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn shell_completions() -> Result<()> {
    // Each shell's own form: a bash function, zsh's #compdef, fish's
    // `complete -c`; every one knows the subcommands.
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef director"),
        ("fish", "complete -c director"),
    ] {
        let out = Command::new(director_bin()?)
            .args(["completions", shell])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains(mark) && text.contains("check-config"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(director_bin()?)
        .args(["completions", "tcsh"])
        .output()?;
    ensure!(!out.status.success(), "completions for an unknown shell");
    Ok(())
}

/// Starts director1 of `lab` on `config` with `DIRECTOR_LOG` set to `level`.
fn run_with_log(lab: &Lab, config: &std::path::Path, level: &str) -> Result<director_tests::Proc> {
    run_with_env(lab, config, &[&format!("DIRECTOR_LOG={level}")])
}

/// Starts director1 of `lab` on `config` with the environment `vars`
/// (`NAME=VALUE`) added.
fn run_with_env(
    lab: &Lab,
    config: &std::path::Path,
    vars: &[&str],
) -> Result<director_tests::Proc> {
    let bin = director_bin()?;
    let (bin, config) = (bin.to_string_lossy(), config.to_string_lossy());
    let mut args: Vec<&str> = vars.to_vec();
    args.extend([bin.as_ref(), "run", "--config", config.as_ref()]);
    lab.directors[0].ns.spawn(
        "env",
        &args,
        &lab.path(&format!("director1-{}.log", vars.join("-").len())),
    )
}

/// `DIRECTOR_LOG_FORMAT=json`: every line the daemon writes, from start to
/// stop, is one JSON object with `timestamp`, `level`, `message`, `target`
/// and the event's fields as values of their own (the forwarding line's
/// `real_servers` a number); a warning (here: a `DIRECTOR_LOG` that does
/// not parse) is one too, at level `WARN` with its fields.
#[test]
fn json_logs_are_one_object_per_line_with_the_fields() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let rs: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let path = lab.write(
        "director.toml",
        &scenario::http_config(&lab, "director1", &rs)?,
    )?;
    let mut d = run_with_env(
        &lab,
        &path,
        &["DIRECTOR_LOG_FORMAT=json", "DIRECTOR_LOG=director=loud"],
    )?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    d.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let log = d.log();
    let mut objects = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("not a JSON line: {line:?}\n{log}"))?;
        for k in ["timestamp", "level", "message", "target"] {
            ensure!(v[k].is_string(), "no {k} in {line}");
        }
        objects.push(v);
    }
    ensure!(objects.len() >= 5, "{log}");
    ensure!(
        objects
            .iter()
            .any(|o| o["real_servers"] == 2 && o["level"] == "INFO"),
        "no forwarding line with real_servers = 2 as a number:\n{log}"
    );
    ensure!(
        objects.iter().any(|o| o["level"] == "WARN"
            && o["message"]
                .as_str()
                .is_some_and(|m| m.contains("DIRECTOR_LOG does not parse"))
            && o["value"] == "director=loud"),
        "the bad DIRECTOR_LOG's warning with its value:\n{log}"
    );
    Ok(())
}

/// `DIRECTOR_LOG` sets the level (`warn`: no info line; `debug`: debug
/// lines; one that does not parse is said and info applies), and `status
/// --watch SECONDS` redraws the table until the daemon goes away.
#[test]
fn the_log_level_and_status_watch() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 1,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let rs = vec![lab.real_servers[0].ip.to_string()];
    let path = lab.write(
        "director.toml",
        &scenario::http_config(&lab, "director1", &rs)?,
    )?;
    let level = |lvl: &str| format!(" {lvl} ");

    let mut d = run_with_log(&lab, &path, "warn")?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    // `status --watch 0.2`: a frame (screen cleared, the table) every 0.2 s.
    let mut watch = Command::new(director_bin()?)
        .args(["status", "--watch", "0.2", "--state-dir"])
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    d.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let log = d.log();
    ensure!(
        !log.contains(&level("INFO")) && log.lines().count() < 5,
        "DIRECTOR_LOG=warn still logs info:\n{log}"
    );
    // The daemon gone, the watch ends with an error instead of drawing
    // stale numbers.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(c) = watch.try_wait()? {
            break c;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the watch outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = watch.wait_with_output()?;
    let frames = String::from_utf8_lossy(&out.stdout);
    let n = frames.matches("\x1b[2J").count();
    ensure!(!code.success(), "watch exited 0 with the daemon gone");
    ensure!(
        n >= 3 && frames.matches(&VIP.to_string()).count() >= n - 1,
        "{n} frames in 1.5 s at 0.2 s:\n{frames}"
    );

    let d = run_with_log(&lab, &path, "debug")?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let log = d.log();
    ensure!(log.contains(&level("DEBUG")), "DIRECTOR_LOG=debug:\n{log}");
    drop(d);

    let mut d = run_with_log(&lab, &path, "director=loud")?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    d.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    let log = d.log();
    ensure!(
        log.contains("DIRECTOR_LOG does not parse") && log.contains(&level("INFO")),
        "a bad DIRECTOR_LOG:\n{log}"
    );
    Ok(())
}

#[test]
fn runtime_real_server_changes() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let path = lab.write("director.toml", &config(&lab, 3, 150, false)?)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let rs_cmd = |action: &str, address: &str, weight: Option<u32>, persist: bool| {
        let mut cmd = Command::new(director_bin()?);
        cmd.args(["real-server", action, "--vip", "10.0.0.100", "--port", "80"])
            .args(["--address", address, "--state-dir"])
            .arg(&state);
        if let Some(w) = weight {
            cmd.args(["--weight", &w.to_string()]);
        }
        if persist {
            cmd.arg("--persist");
        }
        let out = cmd.output()?;
        anyhow::Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ))
    };
    let rs =
        |action: &str, address: &str, weight: Option<u32>| rs_cmd(action, address, weight, false);
    let weights = || -> Result<Vec<(String, u64)>> {
        let s = scenario::status(&state)?;
        Ok(s["virtual_servers"][0]["real_servers"]
            .as_array()
            .context("real servers")?
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap_or("").to_string(),
                    r["weight"].as_u64().unwrap_or(99),
                )
            })
            .collect())
    };
    let vip = SocketAddr::from((VIP, 80));
    let served = |n: usize| {
        lab.client
            .run(move || http::hammer(vip, n, Duration::from_secs(2)))
    };

    // drain: weight 0, no new flows; enable: the old weight again.
    let (ok, err) = rs("drain", "10.0.0.22", None)?;
    ensure!(ok, "{err}");
    ensure!(
        weights()?[2] == ("10.0.0.22".to_string(), 0),
        "{:?}",
        weights()?
    );
    let t = served(40)?;
    ensure!(t.ok == 40 && !t.by_body.contains_key("rs3"), "{t:?}");
    ensure!(rs("enable", "10.0.0.22", None)?.0);
    ensure!(weights()?[2].1 == 1);
    // weight, remove, add.
    ensure!(rs("weight", "10.0.0.20", Some(5))?.0);
    ensure!(weights()?[0].1 == 5);
    ensure!(rs("remove", "10.0.0.21", None)?.0);
    ensure!(weights()?.len() == 2);
    let t = served(40)?;
    ensure!(t.ok == 40 && !t.by_body.contains_key("rs2"), "{t:?}");
    ensure!(rs("add", "10.0.0.21", Some(2))?.0);
    ensure!(weights()?.contains(&("10.0.0.21".to_string(), 2)));
    // Errors are errors, and change nothing.
    let (ok, err) = rs("add", "10.0.0.21", None)?;
    ensure!(!ok && err.contains("already"), "{err}");
    let (ok, err) = rs("remove", "10.0.0.99", None)?;
    ensure!(!ok && err.contains("not a real server"), "{err}");
    let (ok, err) = rs("weight", "10.0.0.20", Some(70000))?;
    ensure!(!ok && err.contains("weight"), "{err}");
    ensure!(weights()?[0].1 == 5);

    // Without --persist a reload reads the file again: the runtime changes
    // are gone. With --persist they are in the file (comments kept) and
    // survive the reload.
    let original = std::fs::read_to_string(&path)?;
    ensure!(reload(&state)?.0);
    ensure!(weights()?.iter().all(|(_, w)| *w == 1), "{:?}", weights()?);
    let (ok, err) = rs_cmd("weight", "10.0.0.20", Some(4), true)?;
    ensure!(ok, "{err}");
    ensure!(rs_cmd("remove", "10.0.0.22", None, true)?.0);
    let (ok, err) = rs_cmd("drain", "10.0.0.21", None, true)?;
    ensure!(ok, "{err}");
    let written = std::fs::read_to_string(&path)?;
    ensure!(
        written != original && written.contains("weight = 4"),
        "{written}"
    );
    ensure!(!written.contains("10.0.0.22"), "{written}");
    ensure!(reload(&state)?.0);
    let after = weights()?;
    ensure!(
        after == [("10.0.0.20".to_string(), 4), ("10.0.0.21".to_string(), 0)],
        "{after:?}"
    );
    Ok(())
}

/// A directory made read-only in the mount namespace of process `pid`
/// (the daemon's: `ip netns exec` gave it its own), unmounted when the
/// test ends, failed or not.
struct ReadOnly(String, std::path::PathBuf);

impl ReadOnly {
    fn mount(pid: u32, dir: &std::path::Path) -> Result<ReadOnly> {
        let (pid, d) = (pid.to_string(), dir.to_string_lossy().to_string());
        let inside = |args: &[&str]| -> Result<()> {
            let mut all = vec!["--mount", "--target", &pid, "mount"];
            all.extend(args);
            director_tests::netns::sh("nsenter", &all).map(|_| ())
        };
        inside(&["--bind", &d, &d])?;
        let guard = ReadOnly(pid.clone(), dir.to_path_buf());
        inside(&["-o", "remount,bind,ro", &d, &d])?;
        Ok(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let d = self.1.to_string_lossy();
        let _ =
            director_tests::netns::sh("nsenter", &["--mount", "--target", &self.0, "umount", &d]);
    }
}

/// `real-server --persist` when the file cannot take the change: a
/// service whose real servers are written inline, or a file that no
/// longer parses (an operator mid-edit), refuses the change before
/// anything moves (the file and the running weights as they were); a file
/// that cannot be written (its directory read-only) gets the change
/// applied and reported "applied, but not persisted", the file untouched.
#[test]
fn persist_refuses_or_says_what_it_could_not_write() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let conf_dir = lab.path("conf");
    std::fs::create_dir_all(&conf_dir)?;
    let path = conf_dir.join("director.toml");
    let rs: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let mut config = scenario::http_config(&lab, "director1", &rs)?;
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 8080\nreal_server = [{{ address = \"{}\" }}]\n",
        rs[0]
    ));
    std::fs::write(&path, &config)?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), scenario::all_resolved)?;
    let persist = |port: &str, weight: u32| -> Result<(bool, String)> {
        let out = Command::new(director_bin()?)
            .args([
                "real-server",
                "weight",
                "--vip",
                &VIP.to_string(),
                "--port",
                port,
            ])
            .args([
                "--address",
                &rs[0],
                "--weight",
                &weight.to_string(),
                "--persist",
            ])
            .arg("--state-dir")
            .arg(&state)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ))
    };
    let weight = |vs: usize| -> Result<u64> {
        scenario::status(&state)?["virtual_servers"][vs]["real_servers"][0]["weight"]
            .as_u64()
            .context("weight")
    };
    let unchanged = |what: &str| -> Result<()> {
        ensure!(
            std::fs::read_to_string(&path)? == config,
            "{what}: the file changed"
        );
        ensure!(
            weight(0)? == 1 && weight(1)? == 1,
            "{what}: the running weights changed"
        );
        Ok(())
    };

    // Inline real servers: refused, nothing changed.
    let (ok, err) = persist("8080", 3)?;
    ensure!(!ok && err.contains("not written as"), "inline: {err}");
    unchanged("inline")?;

    // The file no longer parses: refused, nothing changed.
    std::fs::write(&path, format!("{config}\n[[virtual_server\n"))?;
    let (ok, err) = persist("80", 3)?;
    ensure!(!ok && err.contains("cannot edit"), "mid-edit: {err}");
    std::fs::write(&path, &config)?;
    unchanged("mid-edit")?;

    // Its directory read-only: applied, and said not persisted.
    let ro = ReadOnly::mount(d.pid().context("the daemon's pid")?, &conf_dir)?;
    let (ok, err) = persist("80", 3)?;
    ensure!(
        !ok && err.contains("applied, but not persisted"),
        "read-only: {err}"
    );
    ensure!(weight(0)? == 3, "the change was not applied");
    ensure!(
        std::fs::read_to_string(&path)? == config,
        "the file changed on a read-only mount?"
    );
    drop(ro);
    ensure!(
        std::fs::read_dir(&conf_dir)?.count() == 1,
        "a temporary file was left"
    );
    d.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    Ok(())
}
