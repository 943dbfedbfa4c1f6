//! A client port reused for a new connection must not follow the flow
//! entry of a closed connection on another director. With ECMP or after a
//! failover, a connection opened through one director continues through
//! another; that one may still hold an entry for the same 5-tuple from an
//! earlier, closed connection (clients reuse ports within seconds under
//! load), placed on another server. Following it would send the new
//! connection's packets to that server, whose TIME_WAIT socket answers
//! with stale ACKs: the connection stalls. An entry whose client sent a
//! FIN or RST, idle since, is placed again like a missing one.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, LabSpec, lab::VIP, scenario};
use socket2::{Domain, SockAddr, Socket, Type};

/// A connection to the VIP from client port `port`.
fn connect_from(port: u16) -> Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(SocketAddr::from(([0, 0, 0, 0], port))))?;
    s.connect_timeout(
        &SockAddr::from(SocketAddr::from((VIP, 80))),
        Duration::from_secs(3),
    )?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

#[test]
fn a_reused_port_does_not_follow_a_closed_connections_entry() -> Result<()> {
    const SIZE: usize = 2 << 20;
    const PORT: u16 = 47001;
    let lab = Lab::build(&LabSpec {
        directors: 2,
        real_servers: 3,
        vip_on_director: false,
    })?;
    lab.write_big_file(SIZE)?;
    let servers: Vec<String> = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    let mut daemons = Vec::new();
    let mut states = Vec::new();
    for i in 0..2 {
        let name = format!("director{}", i + 1);
        let path = lab.write(
            &format!("{name}.toml"),
            &scenario::http_config(&lab, &name, &servers)?,
        )?;
        daemons.push(scenario::spawn_director(&lab, i, &path)?);
        let state = lab.state_dir(&name)?;
        scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
        states.push(state);
    }
    // The client's path to the VIP: one director or the other (as ECMP or
    // a failover would switch it).
    let macs = [lab.directors[0].mac()?, lab.directors[1].mac()?];
    let through = |i: usize| -> Result<()> {
        lab.client.ns.ip(&[
            "neigh",
            "replace",
            &VIP.to_string(),
            "lladdr",
            &macs[i],
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        Ok(())
    };

    // A short request from PORT through director1, closed (its server,
    // which closed first, keeps the connection in TIME_WAIT).
    through(0)?;
    let first = lab.client.run(|| -> Result<String> {
        let mut s = connect_from(PORT)?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r.lines().last().unwrap_or_default().to_string())
    })??;
    let old = lab
        .real_servers
        .iter()
        .position(|r| first.trim() == r.name)
        .with_context(|| format!("served by? {first:?}"))?;
    // That server drains on both directors: new connections go elsewhere.
    for s in &states {
        scenario::drain_real_server(&servers[old], s)?;
    }
    std::thread::sleep(Duration::from_secs(3));

    // A download from the same port through director2, then the path
    // switches to director1, which still holds the closed connection's
    // entry.
    through(1)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let download = lab.client.ns.spawn_thread(move || -> Result<usize> {
        let mut s = connect_from(PORT)?;
        s.write_all(b"GET /big HTTP/1.0\r\nHost: lab\r\n\r\n")?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut told = false;
        loop {
            let n = s
                .read(&mut buf)
                .with_context(|| format!("stalled after {got} bytes"))?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
            if !told && got > 256 * 1024 {
                told = true;
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("the download did not start")?;
    through(0)?;
    let got = download
        .join()
        .map_err(|_| anyhow::anyhow!("download thread panicked"))???;
    ensure!(got > SIZE, "{got} bytes (headers included) of {SIZE}");
    drop(daemons);
    Ok(())
}
