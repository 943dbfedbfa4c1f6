//! Health checks in the lab: a real server whose HTTP server dies leaves
//! the pool, comes back after `rise` successes; losing quorum switches the
//! service to the sorry server; status reports health.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, http, lab::VIP, scenario};

fn served_by(lab: &Lab, n: usize) -> Result<std::collections::BTreeMap<String, usize>> {
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, n, Duration::from_secs(2)))?;
    ensure!(t.failed == 0, "requests failed: {t:?}");
    Ok(t.by_body)
}

fn rs_healthy(s: &serde_json::Value, i: usize) -> Option<bool> {
    s["virtual_servers"][0]["real_servers"][i]["healthy"].as_bool()
}

#[test]
fn failed_servers_leave_recover_and_quorum_falls_back_to_the_sorry_server() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let rs = |j: usize| lab.real_servers[j].ip;
    let check = "[virtual_server.real_server.http_get]\nconnect_timeout = 0.5\nretry = 0\nrise = 3\nurl = [{ path = \"/\", status_code = 200, regex = \"^rs\" }]\n";
    let mut config = scenario::global_config(&lab, "director1")?;
    config.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\nquorum = 1\nsorry_server = \"{}\"\nquorum_down = \"/usr/bin/touch {}\"\n",
        rs(2),
        lab.path("quorum-down").display()
    ));
    for j in 0..2 {
        config.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n{check}",
            rs(j)
        ));
    }
    let path = lab.write("director.toml", &config)?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(20), |s| {
        scenario::all_resolved(s)
            && s["virtual_servers"][0]["real_servers"][0]["last_check"].is_number()
    })?;
    let by = served_by(&lab, 40)?;
    ensure!(
        by.keys().cloned().collect::<Vec<_>>() == ["rs1", "rs2"],
        "{by:?}"
    );

    // rs1's HTTP server dies: detected, and then no request reaches it.
    lab.stop_http(0)?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false)
    })?;
    let rs1 = &s["virtual_servers"][0]["real_servers"][0];
    ensure!(rs1["last_error"].is_string(), "{rs1}");
    ensure!(s["virtual_servers"][0]["quorum_up"] == true, "{s}");
    let by = served_by(&lab, 40)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs2"], "{by:?}");

    // rs2 dies too: quorum lost, the sorry server (rs3) answers everything.
    lab.stop_http(1)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][0]["quorum_up"] == false
    })?;
    // (No wait: a status saying quorum is lost is one the dataplane
    // already forwards by.)
    let by = served_by(&lab, 20)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs3"], "{by:?}");
    ensure!(
        lab.path("quorum-down").exists(),
        "quorum_down script not run"
    );

    // rs1 comes back: after rise (3) good rounds it takes traffic again and
    // quorum returns.
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    lab.start_http(0)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(true) && s["virtual_servers"][0]["quorum_up"] == true
    })?;
    // It took exactly 3 good rounds: the checks rs1's nginx answered since
    // it restarted, up to the daemon's "healthy" line (both stamped by the
    // same clock; the next round comes 200 ms later).
    let log = d.log();
    let healthy_at = log
        .lines()
        .filter(|l| {
            l.contains("real server healthy")
                && l.contains(&format!("{}:80", lab.real_servers[0].ip))
        })
        .filter_map(scenario::log_time)
        .next_back()
        .context("no \"real server healthy\" line for rs1")?;
    let rounds = lab
        .requests_from(0, lab.directors[0].ip)?
        .into_iter()
        .filter(|t| *t > restarted && *t <= healthy_at + 0.05)
        .count();
    ensure!(
        rounds == 3,
        "healthy after {rounds} good rounds (rise = 3):\n{log}"
    );
    let by = served_by(&lab, 20)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs1"], "{by:?}");
    Ok(())
}

/// `dr_check` probes through the clients' path (SYN to the VIP, framed to
/// the real server's MAC): a real server that lost the VIP on `lo` fails it
/// although its own address still answers, and so does one answering ARP
/// for the VIP.
#[test]
fn dr_check_catches_a_missing_vip_and_arp_answers() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let (_d, state) = checked_by(
        &lab,
        "  [virtual_server.real_server.tcp_check]\n  connect_timeout = 0.5\n  retry = 0\n  [virtual_server.real_server.dr_check]\n  connect_timeout = 0.5\n  retry = 0\n",
    )?;

    // rs1 loses the VIP on lo: its own address still accepts connections
    // (tcp_check passes), the path through the VIP does not.
    let vip_on_lo = |j: usize, op: &str| -> Result<()> {
        lab.real_servers[j]
            .ns
            .ip(&["addr", op, &format!("{VIP}/32"), "dev", "lo"])?;
        Ok(())
    };
    vip_on_lo(0, "del")?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false)
    })?;
    let err = s["virtual_servers"][0]["real_servers"][0]["last_error"].to_string();
    ensure!(err.contains("no answer through the VIP"), "{err}");
    let by = served_by(&lab, 30)?;
    ensure!(by.keys().cloned().collect::<Vec<_>>() == ["rs2"], "{by:?}");
    vip_on_lo(0, "add")?;
    scenario::wait_status(&state, Duration::from_secs(5), both(true, true))?;

    // rs2 answers ARP for the VIP (arp_ignore 0): caught too.
    let arp_ignore = |value: &str| -> Result<()> {
        for iface in ["all", "eth0"] {
            lab.real_servers[1]
                .ns
                .sysctl(&format!("net.ipv4.conf.{iface}.arp_ignore"), value)?;
        }
        Ok(())
    };
    arp_ignore("0")?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 1) == Some(false)
    })?;
    let err = s["virtual_servers"][0]["real_servers"][1]["last_error"].to_string();
    ensure!(err.contains("answers ARP for the VIP"), "{err}");
    arp_ignore("1")?;
    scenario::wait_status(&state, Duration::from_secs(5), both(true, true))?;
    Ok(())
}

/// `track_virtual_server`: a director whose checks see the service lose
/// quorum lowers its VRRP priority and hands the VIP over.
#[test]
fn a_virtual_server_losing_quorum_moves_the_vip() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 2,
        vip_on_director: false,
    })?;
    let s1 = lab.state_dir("director1")?;
    let s2 = lab.state_dir("director2")?;
    let config = |name: &str, priority: u8| -> Result<String> {
        let mut c = scenario::global_config(&lab, name)?;
        c.push_str(&format!(
            "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = {priority}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP}/32\"]\ntrack_virtual_server = [{{ address = \"{VIP}\", port = 80, weight = -100 }}]\n"
        ));
        c.push_str(&format!(
            "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\n"
        ));
        for rs in &lab.real_servers {
            c.push_str(&format!(
                "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 0.3\nretry = 0\n",
                rs.ip
            ));
        }
        Ok(c)
    };
    let p1 = lab.write("director1.toml", &config("director1", 150)?)?;
    let p2 = lab.write("director2.toml", &config("director2", 100)?)?;
    let _d1 = scenario::spawn_director(&lab, 0, &p1)?;
    let _d2 = scenario::spawn_director(&lab, 1, &p2)?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(10))?;
    scenario::wait_vrrp_state(&s2, "VI_1", "backup", Duration::from_secs(10))?;

    // director1 loses its path to the real servers (its checks are
    // dropped on the way out; forwarded client traffic is not affected).
    let nft = |args: &str| -> Result<()> {
        lab.directors[0].ns.exec("nft", &[args])?;
        Ok(())
    };
    nft("add table inet lab")?;
    nft("add chain inet lab out { type filter hook output priority 0 ; }")?;
    nft("add rule inet lab out tcp dport 80 drop")?;
    scenario::wait_vrrp_state(&s2, "VI_1", "master", Duration::from_secs(5))?;
    scenario::wait_vrrp_state(&s1, "VI_1", "backup", Duration::from_secs(5))?;
    let st = scenario::status(&s1)?;
    ensure!(st["virtual_servers"][0]["quorum_up"] == false, "{st}");
    ensure!(st["vrrp"][0]["effective_priority"] == 50, "{st}");
    // Clients are served by director2 meanwhile.
    let by = served_by(&lab, 20)?;
    ensure!(by.len() == 2, "{by:?}");

    // The path returns: quorum back, priority 150, director1 preempts.
    nft("delete table inet lab")?;
    scenario::wait_vrrp_state(&s1, "VI_1", "master", Duration::from_secs(5))?;
    let st = scenario::status(&s1)?;
    ensure!(st["vrrp"][0]["effective_priority"] == 150, "{st}");
    Ok(())
}

/// Both real servers' health, as a status predicate.
fn both(a: bool, b: bool) -> impl Fn(&serde_json::Value) -> bool {
    move |s| rs_healthy(s, 0) == Some(a) && rs_healthy(s, 1) == Some(b)
}

/// A `[[virtual_server]]` on the VIP (checks every 0.5 s) with every lab
/// real server, each checked by `checks` (its check tables).
fn checked_service(lab: &Lab, protocol: &str, port: u16, checks: &str) -> String {
    let mut c = format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{protocol}\"\ndelay_loop = 0.5\n"
    );
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n  [[virtual_server.real_server]]\n  address = \"{}\"\n{checks}",
            rs.ip
        ));
    }
    c
}

/// Director1 serving the VIP (port 80, checks every 0.5 s) with both lab
/// real servers, each checked by `checks` (its check tables); returns once
/// both passed a check.
fn checked_by(lab: &Lab, checks: &str) -> Result<(director_tests::Proc, std::path::PathBuf)> {
    let state = lab.state_dir("director1")?;
    let mut c = scenario::global_config(lab, "director1")?;
    c.push_str(&checked_service(lab, "tcp", 80, checks));
    let path = lab.write("director1.toml", &c)?;
    let d = scenario::spawn_director(lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(15), |s| {
        both(true, true)(s) && s["virtual_servers"][0]["real_servers"][1]["last_check"].is_number()
    })?;
    Ok((d, state))
}

/// `ping_check` and `smtp_check` against real peers: the kernel answering
/// ICMP echo (until a firewall drops it) and Python's standard SMTP server
/// (until it is stopped): each server leaves when its check fails and
/// returns when it passes again.
#[test]
fn ping_and_smtp_checks_follow_real_servers() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let smtp = |j: usize| -> Result<director_tests::Proc> {
        let rs = &lab.real_servers[j];
        rs.ns.spawn(
            "python3",
            &[
                "-W",
                "ignore",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
                &format!("{}:25", rs.ip),
            ],
            &lab.path(&format!("smtpd-{j}.log")),
        )
    };
    let _smtp1 = smtp(0)?;
    let mut smtp2 = smtp(1)?;
    let (_d, state) = checked_by(
        &lab,
        "  [virtual_server.real_server.ping_check]\n  connect_timeout = 0.5\n  retry = 0\n  warmup = 0\n  [virtual_server.real_server.smtp_check]\n  connect_timeout = 1\n  retry = 0\n  warmup = 0\n  helo_name = \"director.lab\"\n",
    )?;
    // ICMP dropped on rs1: its ping_check fails.
    let rs1 = &lab.real_servers[0].ns;
    rs1.exec("nft", &["add table inet lab"])?;
    rs1.exec(
        "nft",
        &["add chain inet lab input { type filter hook input priority 0 ; }"],
    )?;
    rs1.exec("nft", &["add rule inet lab input meta l4proto icmp drop"])?;
    let s = scenario::wait_status(&state, Duration::from_secs(10), both(false, true))?;
    let error = s["virtual_servers"][0]["real_servers"][0]["last_error"].to_string();
    ensure!(error.contains("echo"), "{error}");
    ensure!(served_by(&lab, 10)?.keys().all(|k| k == "rs2"));
    rs1.exec("nft", &["delete table inet lab"])?;
    scenario::wait_status(&state, Duration::from_secs(10), both(true, true))?;
    // rs2's SMTP server stops: its smtp_check fails; back, it returns.
    smtp2.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5))?;
    scenario::wait_status(&state, Duration::from_secs(10), both(true, false))?;
    let _smtp2 = smtp(1)?;
    scenario::wait_status(&state, Duration::from_secs(10), both(true, true))?;
    Ok(())
}

/// `dns_check` against a real DNS server (dnsmasq) on each real server:
/// healthy while it answers the question with a record of the type asked;
/// a server whose answer has no such record (AAAA for a name with only an
/// A record: NOERROR, no answer) and a server that stopped answering leave
/// the pool, and return when they answer again.
#[test]
fn dns_check_follows_a_real_dns_server() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let dnsmasq = |j: usize, records: &str| -> Result<director_tests::Proc> {
        let rs = &lab.real_servers[j];
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-daemon".into(),
            "--port=53".into(),
            format!("--listen-address={}", rs.ip),
            "--bind-interfaces".into(),
            format!(
                "--pid-file={}",
                lab.path(&format!("dnsmasq-{j}.pid")).display()
            ),
        ];
        args.extend(records.split_whitespace().map(str::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rs.ns
            .spawn("dnsmasq", &args, &lab.path(&format!("dnsmasq-{j}.log")))
    };
    let only_a = "--local=/lab/ --host-record=web.lab,10.9.9.9";
    let with_aaaa = "--local=/lab/ --host-record=web.lab,10.9.9.9,fd00:9::9";
    let _dns1 = dnsmasq(0, with_aaaa)?;
    let mut dns2 = dnsmasq(1, with_aaaa)?;
    let (_d, state) = checked_by(
        &lab,
        "  [virtual_server.real_server.dns_check]\n  connect_timeout = 0.5\n  retry = 0\n  warmup = 0\n  type = \"aaaa\"\n  name = \"web.lab\"\n",
    )?;
    // rs2 now knows only an A record: its answer to AAAA is empty.
    dns2.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5))?;
    dns2 = dnsmasq(1, only_a)?;
    let s = scenario::wait_status(&state, Duration::from_secs(10), both(true, false))?;
    let error = s["virtual_servers"][0]["real_servers"][1]["last_error"].to_string();
    ensure!(error.contains("no AAAA record"), "{error}");
    ensure!(served_by(&lab, 10)?.keys().all(|k| k == "rs1"));
    // Silent: no answer at all.
    dns2.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5))?;
    let s = scenario::wait_status(&state, Duration::from_secs(10), |s| {
        rs_healthy(s, 1) == Some(false)
            && !s["virtual_servers"][0]["real_servers"][1]["last_error"]
                .to_string()
                .contains("AAAA")
    })?;
    eprintln!(
        "silent server: {}",
        s["virtual_servers"][0]["real_servers"][1]["last_error"]
    );
    let _dns2 = dnsmasq(1, with_aaaa)?;
    scenario::wait_status(&state, Duration::from_secs(10), both(true, true))?;
    Ok(())
}

/// A real server that fails its checks but still serves what it has (it
/// stops accepting connections: an overloaded or flapping server) keeps
/// its established TCP connections: every download it carries completes,
/// while new connections go elsewhere. Its UDP flows, which hold nothing
/// on it, are placed again at once. Before, its downloads were reset (the
/// flows were placed on another server, which answered with RST).
#[test]
fn a_failed_server_keeps_its_connections_and_loses_its_udp_flows() -> Result<()> {
    const SIZE: usize = 2 << 20;
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    lab.write_big_file(SIZE)?;
    let state = lab.state_dir("director1")?;
    let check = "  [virtual_server.real_server.tcp_check]\n  connect_port = 80\n  connect_timeout = 0.5\n  retry = 0\n";
    let mut c = scenario::global_config(&lab, "director1")?;
    for (protocol, port) in [("tcp", 80), ("udp", 7)] {
        c.push_str(&checked_service(&lab, protocol, port, check));
    }
    let path = lab.write("director.toml", &c)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let healthy = |s: &serde_json::Value, want: bool| {
        (0..2).all(|v| s["virtual_servers"][v]["real_servers"][2]["healthy"] == want)
    };
    scenario::wait_status(&state, Duration::from_secs(10), |s| {
        scenario::all_resolved(s) && healthy(s, true)
    })?;
    let _echo = lab.start_udp_echo(VIP.into(), 7)?;

    // UDP flows from 16 client ports, each answered.
    let udp = SocketAddr::from((VIP, 7));
    let sockets = lab.client.run(move || {
        (0..16)
            .map(|_| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.connect(udp)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })??;
    let answered = |s: &std::net::UdpSocket| {
        let mut buf = [0u8; 8];
        (0..5).any(|_| s.send(b"ping").is_ok() && s.recv(&mut buf).is_ok())
    };
    ensure!(sockets.iter().all(answered), "a UDP flow unanswered");

    // Downloads at 512 KiB/s (4 s each), nine at a time until one is on
    // rs3 (a batch misses it with probability (2/3)^9).
    let vip = SocketAddr::from((VIP, 80));
    let rs3 = &lab.real_servers[2].ns;
    let mut downloads = Vec::new();
    let mut on_rs3 = 0;
    for _ in 0..4 {
        downloads.extend((0..9).map(|_| {
            lab.client
                .ns
                .spawn_thread(move || http::download_big(vip, SIZE).map(|_| ()))
        }));
        std::thread::sleep(Duration::from_millis(300));
        on_rs3 = String::from_utf8_lossy(
            &rs3.exec("ss", &["-Htn", "state", "established", "( sport = :80 )"])?
                .stdout,
        )
        .lines()
        .count();
        if on_rs3 > 0 {
            break;
        }
    }
    ensure!(on_rs3 > 0, "no download on rs3 in 36");

    // rs3 takes no new connection and no UDP: its checks fail.
    rs3.exec("nft", &["add table inet t"])?;
    rs3.exec(
        "nft",
        &["add chain inet t input { type filter hook input priority 0 ; }"],
    )?;
    rs3.exec(
        "nft",
        &["add rule inet t input tcp dport 80 tcp flags syn drop"],
    )?;
    rs3.exec("nft", &["add rule inet t input udp dport 7 drop"])?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| healthy(s, false))?;
    // Every UDP flow is answered again (those on rs3 by another server).
    let unanswered = lab
        .client
        .run(move || sockets.iter().filter(|s| !answered(s)).count())?;
    ensure!(
        unanswered == 0,
        "{unanswered} UDP flows stayed on the failed server"
    );
    let by = served_by(&lab, 30)?;
    ensure!(
        by.keys().cloned().collect::<Vec<_>>() == ["rs1", "rs2"],
        "a new connection reached the failed server: {by:?}"
    );
    // The downloads, rs3's included, complete intact.
    for d in downloads {
        d.join()
            .map_err(|_| anyhow::anyhow!("download thread panicked"))??
            .map_err(|e| anyhow::anyhow!("a download broke ({on_rs3} on rs3): {e:#}"))?;
    }

    // rs3 recovers: it takes new connections again.
    rs3.exec("nft", &["delete table inet t"])?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| healthy(s, true))?;
    let by = served_by(&lab, 30)?;
    ensure!(by.contains_key("rs3"), "rs3 back but unused: {by:?}");
    Ok(())
}

/// The checkers' common keys on the wire, as the real servers' nginx logs
/// them (its clock, not ours): `connect_ip` probes another address than
/// the real server's (rs1's health is rs3's answer), `bindto` sets the
/// probes' source address, and a failing round makes `retry` more attempts
/// `delay_before_retry` apart.
#[test]
fn connect_ip_bindto_and_delay_before_retry_on_the_wire() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let src = std::net::Ipv4Addr::new(10, 0, 0, 31);
    lab.directors[0]
        .ns
        .ip(&["addr", "add", &format!("{src}/24"), "dev", "eth0"])?;
    let rs: Vec<std::net::Ipv4Addr> = lab.real_servers.iter().map(|r| r.ip).collect();
    let mut c = scenario::global_config(&lab, "director1")?;
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.3\n"
    ));
    // rs1: probed at rs3's address, from the second address, healthy only
    // with rs3's answer.
    c.push_str(&format!(
        "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.http_get]\nconnect_ip = \"{}\"\nbindto = \"{src}\"\nconnect_timeout = 0.5\nretry = 0\nwarmup = 0\nurl = [{{ path = \"/\", regex = \"^rs3\" }}]\n",
        rs[0], rs[2]
    ));
    // rs2: every attempt fails (the body never matches): a round is two
    // attempts 0.7 s apart, rounds 2.5 s apart.
    c.push_str(&format!(
        "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.http_get]\nconnect_timeout = 0.5\nretry = 1\ndelay_before_retry = 0.7\ndelay_loop = 2.5\nwarmup = 0\nurl = [{{ path = \"/\", regex = \"^never\" }}]\n",
        rs[1]
    ));
    let path = lab.write("director.toml", &c)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let me = lab.directors[0].ip;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lab.requests_from(1, me)?.len() < 6 {
        ensure!(
            std::time::Instant::now() < deadline,
            "rs2 saw {:?}",
            lab.requests_from(1, me)?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(true)
            && s["virtual_servers"][0]["real_servers"][0]["last_check"].is_number()
            && rs_healthy(s, 1) == Some(false)
    })?;
    ensure!(
        s["virtual_servers"][0]["real_servers"][1]["last_error"].is_string(),
        "{s}"
    );
    // connect_ip and bindto: rs3 answered rs1's checks, from the second
    // address; rs1 itself was never asked.
    ensure!(
        lab.requests_from(2, src)?.len() >= 2 && lab.requests_from(2, me)?.is_empty(),
        "rs3 saw {:?} from {src}, {:?} from {me}",
        lab.requests_from(2, src)?,
        lab.requests_from(2, me)?
    );
    ensure!(
        lab.requests_from(0, src)?.is_empty() && lab.requests_from(0, me)?.is_empty(),
        "rs1 was probed itself"
    );
    // delay_before_retry: the gaps alternate, 0.7 s within a round (plus
    // one exchange), a delay loop between rounds.
    let t = lab.requests_from(1, me)?;
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate() {
        let within = i % 2 == 0;
        ensure!(
            if within {
                (0.69..1.0).contains(g)
            } else {
                *g > 1.5
            },
            "gap {i} is {g:.3} s (retry 0.7 s, rounds 2.5 s): {gaps:?}"
        );
    }
    // rs3's server stops: rs1 fails, though its own server runs on.
    lab.stop_http(2)?;
    scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false)
    })?;
    Ok(())
}

/// The quorum-2, hysteresis-1 service over the lab's three real servers
/// (weight 1, TCP checks every 0.2 s), its `quorum_up` / `quorum_down`
/// scripts appending "up" / "down" to `events`; `before` goes in front of
/// it in the file.
fn hysteresis_config(lab: &Lab, events: &std::path::Path, before: &str) -> Result<String> {
    let mut c = scenario::global_config(lab, "director1")?;
    c.push_str(before);
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.2\nquorum = 2\nhysteresis = 1\nquorum_up = \"/bin/sh -c 'echo up >> {0}'\"\nquorum_down = \"/bin/sh -c 'echo down >> {0}'\"\n",
        events.display()
    ));
    for rs in &lab.real_servers {
        c.push_str(&format!(
            "\n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 0.5\nretry = 0\nwarmup = 0\n",
            rs.ip
        ));
    }
    Ok(c)
}

/// A lab of three real servers and director1 running [`hysteresis_config`]:
/// the lab, the daemon, its state directory and the scripts' log.
fn hysteresis_lab() -> Result<(
    Lab,
    director_tests::Proc,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 3,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let events = lab.path("quorum.log");
    let path = lab.write("director.toml", &hysteresis_config(&lab, &events, "")?)?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    Ok((lab, d, state, events))
}

/// Waits until the status shows the real servers of virtual server `vs`
/// healthy as `want`, each checked, then says whether it has quorum.
fn quorum_with(state: &std::path::Path, vs: usize, want: [bool; 3]) -> Result<bool> {
    let s = scenario::wait_status(state, Duration::from_secs(5), |s| {
        let r = &s["virtual_servers"][vs]["real_servers"];
        (0..3).all(|i| r[i]["healthy"].as_bool() == Some(want[i]) && r[i]["last_check"].is_number())
    })?;
    s["virtual_servers"][vs]["quorum_up"]
        .as_bool()
        .context("no quorum_up")
}

/// Waits until the quorum scripts' log reads `want`.
fn quorum_events(events: &std::path::Path, want: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(events).unwrap_or_default();
        if log == want {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "quorum scripts ran as {log:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `hysteresis`: with quorum 2 and hysteresis 1 over three servers of
/// weight 1, quorum holds down to one healthy server (lost below 2 - 1)
/// and comes back only with all three (2 + 1); `quorum_down` and
/// `quorum_up` run once each.
#[test]
fn hysteresis_widens_the_quorum_band() -> Result<()> {
    let (mut lab, _d, state, events) = hysteresis_lab()?;
    let quorum_with = |want| quorum_with(&state, 0, want);
    ensure!(quorum_with([true, true, true])?, "up with three");
    lab.stop_http(0)?;
    ensure!(quorum_with([false, true, true])?, "lost with two");
    lab.stop_http(1)?;
    ensure!(
        quorum_with([false, false, true])?,
        "lost with one (below quorum, not below quorum - hysteresis)"
    );
    lab.stop_http(2)?;
    ensure!(!quorum_with([false, false, false])?, "held with none");
    lab.start_http(0)?;
    ensure!(!quorum_with([true, false, false])?, "regained with one");
    lab.start_http(1)?;
    ensure!(
        !quorum_with([true, true, false])?,
        "regained with two (quorum, not quorum + hysteresis)"
    );
    lab.start_http(2)?;
    ensure!(quorum_with([true, true, true])?, "not regained with three");
    quorum_events(&events, "down\nup\n")
}

/// A reload keeps the quorum state of the services it keeps, wherever they
/// move in the list: a service held down by its hysteresis (two of three
/// healthy: quorum 2, but 2 + 1 to come back) stays down across a reload
/// that puts another service before it - no silent return, no script -
/// and comes back, running `quorum_up`, only with the third server.
#[test]
fn a_reload_keeps_the_quorum_state_of_the_services_it_keeps() -> Result<()> {
    let (mut lab, _d, state, events) = hysteresis_lab()?;
    ensure!(
        quorum_with(&state, 0, [true, true, true])?,
        "down with three"
    );
    for j in 0..3 {
        lab.stop_http(j)?;
    }
    ensure!(
        !quorum_with(&state, 0, [false, false, false])?,
        "up with none"
    );
    lab.start_http(0)?;
    lab.start_http(1)?;
    ensure!(
        !quorum_with(&state, 0, [true, true, false])?,
        "regained with two (quorum, not quorum + hysteresis)"
    );
    quorum_events(&events, "down\n")?;

    let other = format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 8080\n\n  [[virtual_server.real_server]]\n  address = \"{}\"\n",
        lab.real_servers[0].ip
    );
    lab.write("director.toml", &hysteresis_config(&lab, &events, &other)?)?;
    let (ok, said) = scenario::director_cli(&["reload"], &state)?;
    ensure!(ok, "reload: {said}");
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        s["virtual_servers"][1]["port"] == 80
    })?;
    ensure!(
        s["virtual_servers"][1]["quorum_up"] == false,
        "the reload brought quorum back: {s}"
    );
    // A few check rounds later: still down, and no script ran.
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        !quorum_with(&state, 1, [true, true, false])?,
        "quorum came back after the reload with two of three"
    );
    quorum_events(&events, "down\n")?;
    lab.start_http(2)?;
    ensure!(
        quorum_with(&state, 1, [true, true, true])?,
        "not regained with three"
    );
    quorum_events(&events, "down\nup\n")
}
