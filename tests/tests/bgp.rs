//! Active-active directors behind ECMP, announced over BGP by BIRD 2: a
//! router namespace runs BIRD with multipath towards three directors, each
//! running BIRD and the director (which writes the VIPs to announce and
//! reconfigures its BIRD). A client behind the router reaches the VIP
//! through all three; killing a director withdraws it and its connections
//! continue on the others (same Maglev tables: same real server); a drained
//! director withdraws its route before it stops, with no failed request.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use director_tests::{Lab, LabSpec, Netns, Proc, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

const ROUTER: &str = "10.0.0.1";
const FAR_CLIENT: &str = "10.1.0.2";

fn bird(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Result<(Proc, PathBuf)> {
    let conf_path = dir.join(format!("bird-{name}.conf"));
    std::fs::write(&conf_path, conf)?;
    let sock = dir.join(format!("bird-{name}.ctl"));
    let p = ns.spawn(
        "bird",
        &[
            "-f",
            "-c",
            &conf_path.to_string_lossy(),
            "-s",
            &sock.to_string_lossy(),
            "-P",
            &dir.join(format!("bird-{name}.pid")).to_string_lossy(),
        ],
        &dir.join(format!("bird-{name}.log")),
    )?;
    Ok((p, sock))
}

/// The router's next hops for the VIP.
fn next_hops(router: &Netns) -> Result<Vec<String>> {
    let out = router.ip(&["route", "show", &format!("{VIP}/32")])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    hops.sort();
    Ok(hops)
}

fn wait_hops(router: &Netns, want: &[&str], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let hops = next_hops(router)?;
        if hops == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("router next hops {hops:?}, expected {want:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A keep-alive HTTP connection: which real server answers each request.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open() -> Result<Conn> {
        let s = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn(BufReader::new(s)))
    }
    fn get(&mut self) -> Result<String> {
        write!(self.0.get_mut(), "GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
        let mut len = 0usize;
        loop {
            let mut l = String::new();
            ensure!(self.0.read_line(&mut l)? > 0, "connection closed");
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

#[test]
fn ecmp_directors_announced_by_bird() -> Result<()> {
    let lab = Lab::build(&LabSpec {
        directors: 3,
        real_servers: 2,
        vip_on_director: false,
    })?;
    // The router: on the switch, and towards a client network behind it.
    let router = lab.add_host("router", ROUTER.parse()?)?;
    router.ns.sysctl("net.ipv4.ip_forward", "1")?;
    router
        .ns
        .sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
    let far = Netns::create(&format!("{}-far", lab.id))?;
    router.ns.ip(&[
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        far.name(),
    ])?;
    router
        .ns
        .ip(&["addr", "add", "10.1.0.1/24", "dev", "eth1"])?;
    router.ns.ip(&["link", "set", "eth1", "up"])?;
    far.ip(&["addr", "add", &format!("{FAR_CLIENT}/24"), "dev", "eth0"])?;
    far.ip(&["link", "set", "eth0", "up"])?;
    far.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
    far.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
    for rs in &lab.real_servers {
        rs.ns.ip(&["route", "add", "10.1.0.0/24", "via", ROUTER])?;
    }
    let dir = lab.dir.clone();
    let mut neighbors = String::new();
    for (i, d) in lab.directors.iter().enumerate() {
        neighbors.push_str(&format!(
            "protocol bgp d{i} from dir {{ neighbor {} as {}; }}\n",
            d.ip,
            65001 + i
        ));
    }
    let _router_bird = bird(
        &router.ns,
        &dir,
        "router",
        &format!(
            "router id {ROUTER};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             template bgp dir {{ local {ROUTER} as 65000; hold time 3; connect retry time 1; ipv4 {{ import all; export none; }}; }}\n{neighbors}"
        ),
    )?;
    // Each director: BIRD announcing what the director writes, and the
    // director itself (every director active: mode bgp).
    let mut directors = Vec::new();
    let mut birds = Vec::new();
    for (i, d) in lab.directors.iter().enumerate() {
        let state = lab.state_dir(&d.name)?;
        let vips4 = state.join("bird-vips4.conf");
        std::fs::write(&vips4, "")?;
        let (b, sock) = bird(
            &d.ns,
            &dir,
            &d.name,
            &format!(
                "router id {};\nprotocol device {{}}\nprotocol static director4 {{\n  ipv4;\n  include \"{}\";\n}}\n\
                 protocol bgp up {{ local {} as {}; neighbor {ROUTER} as 65000; hold time 3; connect retry time 1; ipv4 {{ import none; export where proto = \"director4\"; }}; }}\n",
                d.ip,
                vips4.display(),
                d.ip,
                65001 + i
            ),
        )?;
        birds.push(b);
        let mut c = scenario::global_config(&lab, &d.name)?;
        c.push_str(&format!(
            "bgp = {{ bird_socket = \"{}\", withdraw_wait = 3 }}\n",
            sock.display()
        ));
        c.push_str(&format!(
            "\n[[virtual_server]]\naddress = \"{VIP}\"\nport = 80\ndelay_loop = 0.5\n"
        ));
        for rs in &lab.real_servers {
            c.push_str(&format!(
                "[[virtual_server.real_server]]\naddress = \"{}\"\n[virtual_server.real_server.tcp_check]\nconnect_timeout = 1\nretry = 0\n",
                rs.ip
            ));
        }
        let path = lab.write(&format!("{}.toml", d.name), &c)?;
        directors.push(scenario::spawn_director(&lab, i, &path)?);
    }
    let all = ["10.0.0.10", "10.0.0.11", "10.0.0.12"];
    wait_hops(&router.ns, &all, Duration::from_secs(30))?;

    // Requests from behind the router spread over the three directors.
    let vip = SocketAddr::from((VIP, 80));
    let t = far.run(move || http::hammer(vip, 90, Duration::from_secs(3)))?;
    ensure!(t.failed == 0 && t.ok == 90, "{t:?}");
    let mut carrying = 0;
    for d in &lab.directors {
        let s = scenario::status(&lab.state_dir(&d.name)?)?;
        if s["virtual_servers"][0]["packets"].as_u64() > Some(0) {
            carrying += 1;
        }
    }
    ensure!(carrying >= 2, "ECMP used {carrying} director(s)");

    // Long-lived connections; then director3 dies (link down and kill):
    // the router withdraws it, and every connection - also those it
    // carried - goes on with the same real server.
    let conns: Vec<(Conn, String)> = far.run(|| -> Result<Vec<(Conn, String)>> {
        (0..12)
            .map(|_| {
                let mut c = Conn::open()?;
                let rs = c.get()?;
                Ok((c, rs))
            })
            .collect()
    })??;
    lab.directors[2].ns.ip(&["link", "set", "eth0", "down"])?;
    let _ = directors[2].stop(Signal::SIGKILL, Duration::from_secs(5));
    wait_hops(&router.ns, &all[..2], Duration::from_secs(15))?;
    let kept = far.run(move || -> Result<usize> {
        let mut same = 0;
        for (mut c, rs) in conns {
            if c.get()? == rs {
                same += 1;
            }
        }
        Ok(same)
    })??;
    ensure!(
        kept == 12,
        "only {kept} of 12 connections kept their real server"
    );

    // Drain director2 under load: its route goes first, nothing fails.
    let s2 = lab.state_dir("director2")?;
    let ((), tally) = http::under_load(&far, vip, || {
        let out = std::process::Command::new(director_tests::director_bin()?)
            .args(["drain", "--state-dir"])
            .arg(&s2)
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })?;
    ensure!(
        tally.failed == 0 && tally.ok > 50,
        "drain lost requests: {tally:?}"
    );
    ensure!(
        next_hops(&router.ns)? == ["10.0.0.10"],
        "director2 still announced"
    );
    ensure!(!directors[1].running(), "director2 did not stop");
    eprintln!(
        "ECMP over {carrying} directors; 12/12 connections kept across a director's death; drain under load: {tally:?}"
    );
    Ok(())
}
