//! The walking skeleton end to end: a client's HTTP requests to the VIP are
//! forwarded by the director's XDP program to two real servers, which answer
//! the client directly (LVS-DR).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{
    Lab, LabSpec, http,
    lab::{VIP, director_ip},
    scenario,
};
use nix::sys::signal::Signal;

/// A real server that does not exist: it never answers ARP.
const PHANTOM: &str = "10.0.0.99";

#[test]
fn forwards_http_to_real_servers_in_dr_mode() -> Result<()> {
    let lab = Lab::build(&LabSpec::default())?;
    let director = &lab.directors[0];
    let mut real_servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    real_servers.push(PHANTOM.to_string());
    let config = lab.write(
        "director.toml",
        &scenario::http_config(&lab, "lab-director", &real_servers)?,
    )?;
    let mut daemon = scenario::spawn_director(&lab, 0, &config)?;
    scenario::wait_forwarding(&mut daemon, 2)?;
    ensure!(
        director.xdp_attached()?,
        "no XDP program on the director's eth0"
    );

    // 200 requests, each a new TCP connection: all answered, by both servers.
    let vip = SocketAddr::from((VIP, 80));
    let tally = lab
        .client
        .run(move || http::hammer(vip, 200, Duration::from_secs(3)))?;
    ensure!(
        tally.ok == 200 && tally.failed == 0,
        "requests failed: {tally:?}\n{}",
        daemon.log()
    );
    for rs in ["rs1", "rs2"] {
        let n = tally.by_body.get(rs).copied().unwrap_or(0);
        ensure!(n > 0, "{rs} answered none of the requests: {tally:?}");
    }
    ensure!(tally.by_body.len() == 2, "unexpected responders: {tally:?}");

    // Traffic to the director itself is not forwarded: a TCP service on a
    // non-VIP port and ping still reach the director's own stack.
    let listener = director.run(|| TcpListener::bind(("0.0.0.0", 8080)))??;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)?;
        conn.write_all(b"director")?;
        Ok(())
    });
    let own = SocketAddr::from((VIP, 8080));
    let reply = lab.client.run(move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&own, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"ping")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(reply == "director", "non-VIP port answered by {reply:?}");
    lab.client
        .ns
        .exec("ping", &["-c", "1", "-W", "2", &director_ip(0).to_string()])
        .context("ping to the director's own address")?;

    // The XDP program's own log line (aya-log) reached the daemon's log.
    let log = daemon.log();
    ensure!(
        log.contains("first packet for service"),
        "no log line from the XDP program:\n{log}"
    );

    // SIGTERM stops the daemon cleanly; the pinned dataplane keeps
    // forwarding (the daemon is only the control plane).
    let code = daemon.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    ensure!(
        code == Some(0),
        "director exited with {code:?}:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let forwarded = scenario::forwarded_packets(&log).context("no traffic summary in the log")?;
    // Each request is at least SYN, ACK+request, FIN from the client.
    ensure!(forwarded >= 600, "only {forwarded} packets forwarded");
    ensure!(
        director.xdp_attached()?,
        "the dataplane left with the daemon"
    );
    let tally = lab
        .client
        .run(move || http::hammer(vip, 20, Duration::from_secs(3)))?;
    ensure!(
        tally.ok == 20,
        "not forwarding without the daemon: {tally:?}"
    );

    // `director run --flush` removes it: nothing is left in the kernel, and
    // the director's own stack refuses port 80.
    let bin = director_tests::director_bin()?;
    director.ns.exec(
        &bin.to_string_lossy(),
        &["run", "--flush", "--config", &config.to_string_lossy()],
    )?;
    ensure!(
        !director.xdp_attached()?,
        "XDP program left on eth0 after the flush"
    );
    let after = lab
        .client
        .run(move || http::get(vip, "/", Duration::from_secs(2)))?;
    ensure!(
        after.is_err(),
        "VIP still answered after the flush: {after:?}"
    );
    Ok(())
}
