//! Each checker against a real server process: dr_check, ping, SMTP, DNS; connect_ip, bindto and delay_before_retry seen on the wire.

use std::time::Duration;

use anyhow::{Result, ensure};
use director_tests::{Lab, LabSpec, lab::VIP, scenario};

use super::*;

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

/// Both real servers' health, as a status predicate.
pub(crate) fn both(a: bool, b: bool) -> impl Fn(&serde_json::Value) -> bool {
    move |s| rs_healthy(s, 0) == Some(a) && rs_healthy(s, 1) == Some(b)
}

/// A `[[virtual_server]]` on the VIP (checks every 0.5 s) with every lab
/// real server, each checked by `checks` (its check tables).
pub(crate) fn checked_service(lab: &Lab, protocol: &str, port: u16, checks: &str) -> String {
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
pub(crate) fn checked_by(
    lab: &Lab,
    checks: &str,
) -> Result<(director_tests::Proc, std::path::PathBuf)> {
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

/// A second address on director1's link, for `bindto`.
fn second_address(lab: &Lab) -> Result<std::net::Ipv4Addr> {
    let src = std::net::Ipv4Addr::new(10, 0, 0, 31);
    lab.directors[0]
        .ns
        .ip(&["addr", "add", &format!("{src}/24"), "dev", "eth0"])?;
    Ok(src)
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
    let src = second_address(&lab)?;
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

/// `tcp_check` probes half-open by default (SYN, SYN-ACK, RST): rs1's
/// kernel, checked over IPv4 from `bindto` and over IPv6, accepts no
/// connection from its checks while rs2, checked with `half_open = false`,
/// accepts one per round (the control). The verdicts stay keepalived's:
/// rs1 with its HTTP server stopped is refused and leaves, its SYN-ACKs
/// dropped it times out and leaves, rejected with ICMP it leaves on the
/// ICMP error, and it returns each time.
#[test]
fn tcp_check_probes_half_open_with_keepalived_verdicts() -> Result<()> {
    let mut lab = Lab::build(&LabSpec {
        directors: 1,
        real_servers: 2,
        vip_on_director: true,
    })?;
    let state = lab.state_dir("director1")?;
    let src = second_address(&lab)?;
    let director = &lab.directors[0];
    // rs1 answers the checks only from `bindto`.
    let rs1 = &lab.real_servers[0].ns;
    for rule in [
        "add table inet lab".to_string(),
        "add chain inet lab in { type filter hook input priority 0 ; }".to_string(),
        format!(
            "add rule inet lab in ip saddr {} tcp dport 80 drop",
            director.ip
        ),
    ] {
        rs1.exec("nft", &[&rule])?;
    }
    let (rs, rs6) = (lab.real_servers[0].ip, lab.real_servers[0].ip6());
    let mut c = scenario::global_config(&lab, "director1")?;
    let check = "connect_timeout = 0.5\nretry = 0\nwarmup = 0\n";
    c.push_str(&format!(
        "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.3\n\
         \n[[virtual_server.real_server]]\naddress = \"{rs}\"\n[virtual_server.real_server.tcp_check]\nbindto = \"{src}\"\n{check}\
         \n[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nhalf_open = false\n{check}\
         \n[[virtual_server]]\naddress = \"{}\"\nport = 80\ndelay_loop = 0.3\n\
         \n[[virtual_server.real_server]]\naddress = \"{rs6}\"\n[virtual_server.real_server.tcp_check]\n{check}",
        lab.real_servers[1].ip,
        director_tests::lab::VIP6,
    ));
    let path = lab.write("director.toml", &c)?;
    let _d = scenario::spawn_director(&lab, 0, &path)?;
    let v6_healthy =
        |s: &serde_json::Value| s["virtual_servers"][1]["real_servers"][0]["healthy"].as_bool();
    let ready = |s: &serde_json::Value| {
        both(true, true)(s)
            && v6_healthy(s) == Some(true)
            && s["virtual_servers"][0]["real_servers"][1]["last_check"].is_number()
    };
    scenario::wait_status(&state, Duration::from_secs(15), ready)?;

    // Four rounds of each check: none opened a connection on rs1, every
    // one of rs2's did.
    let before = (
        lab.real_servers[0].ns.snmp("Tcp", "PassiveOpens")?,
        lab.real_servers[1].ns.snmp("Tcp", "PassiveOpens")?,
    );
    std::thread::sleep(Duration::from_millis(1300));
    let after = (
        lab.real_servers[0].ns.snmp("Tcp", "PassiveOpens")?,
        lab.real_servers[1].ns.snmp("Tcp", "PassiveOpens")?,
    );
    ensure!(
        after.0 == before.0,
        "rs1 accepted {} connections from half-open checks",
        after.0 - before.0
    );
    ensure!(
        after.1 >= before.1 + 3,
        "rs2's connecting check opened {} connections in 1.3 s (the control)",
        after.1 - before.1
    );

    // Refused: nothing listens on port 80 (its kernel answers RST).
    lab.stop_http(0)?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false) && v6_healthy(s) == Some(false)
    })?;
    let err = s["virtual_servers"][0]["real_servers"][0]["last_error"].to_string();
    ensure!(err.contains("refused"), "{err}");
    lab.start_http(0)?;
    scenario::wait_status(&state, Duration::from_secs(10), ready)?;

    // Silent: rs1's answers are dropped on their way out.
    let rs1 = &lab.real_servers[0].ns;
    rs1.exec(
        "nft",
        &["add chain inet lab out { type filter hook output priority 0 ; }"],
    )?;
    rs1.exec("nft", &["add rule inet lab out tcp sport 80 drop"])?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false) && v6_healthy(s) == Some(false)
    })?;
    let err = s["virtual_servers"][0]["real_servers"][0]["last_error"].to_string();
    ensure!(err.contains("timed out"), "{err}");
    ensure!(rs_healthy(&s, 1) == Some(true), "rs2 left too");
    rs1.exec("nft", &["delete chain inet lab out"])?;
    scenario::wait_status(&state, Duration::from_secs(10), ready)?;

    // Rejected with ICMP (nft's default reject: port unreachable): read, as
    // a connect would fail on it, not waited out.
    rs1.exec(
        "nft",
        &["add chain inet lab rej { type filter hook input priority 1 ; }"],
    )?;
    rs1.exec("nft", &["add rule inet lab rej tcp dport 80 reject"])?;
    let s = scenario::wait_status(&state, Duration::from_secs(5), |s| {
        rs_healthy(s, 0) == Some(false) && v6_healthy(s) == Some(false)
    })?;
    for vs in [0, 1] {
        let err = s["virtual_servers"][vs]["real_servers"][0]["last_error"].to_string();
        ensure!(
            err.contains("Connection refused (ICMP from"),
            "service {vs}: {err}"
        );
    }
    rs1.exec("nft", &["delete chain inet lab rej"])?;
    scenario::wait_status(&state, Duration::from_secs(10), ready)?;
    let by = served_by(&lab, 40)?;
    ensure!(by.len() == 2, "{by:?}");
    Ok(())
}
