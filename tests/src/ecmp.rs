//! The ECMP lab: a router namespace running BIRD 2 with BGP multipath
//! towards N directors, each running BIRD and the director (BGP mode), and
//! a client network behind the router. Shared by the BGP test and
//! `cargo xtask bench ecmp`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};

use crate::{Lab, LabSpec, Netns, Node, Proc, lab::VIP, scenario};

/// The router's address on the directors' network.
pub const ROUTER: &str = "10.0.0.1";
/// The client behind the router.
pub const FAR_CLIENT: &str = "10.1.0.2";

/// Runs BIRD 2 in `ns` with `conf` (files under `dir`): the process and its
/// control socket.
pub fn bird(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Result<(Proc, PathBuf)> {
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

/// A running ECMP lab. Field order is drop order: processes first.
pub struct EcmpLab {
    pub directors: Vec<Proc>,
    _birds: Vec<Proc>,
    _router_bird: Proc,
    pub far: Netns,
    pub router: Node,
    pub lab: Lab,
}

/// How the directors of an ECMP lab announce.
#[derive(Debug, Clone, Default)]
pub struct EcmpOptions {
    /// Extra keys of `global.bgp` (for example `mode = "both"`).
    pub bgp: String,
    /// VRRP between the directors for the VIP (priorities 150, 100, ...):
    /// with `mode = "both"` only the master announces.
    pub vrrp: bool,
    /// Extra keys of each director's `[global]` (for example `flow_sync`).
    pub global: String,
    /// BFD between the router's BIRD and each director's (10 ms x 3,
    /// `bfd on` in BGP): a dead director is withdrawn in tens of
    /// milliseconds instead of after the BGP hold time (3 s here).
    pub bfd: bool,
}

/// BIRD's BFD protocol at 10 ms x 3 on eth0 (the lab's BGP links).
const BIRD_BFD: &str = "protocol bfd {\n  interface \"eth0\" { min rx interval 10 ms; min tx interval 10 ms; multiplier 3; };\n}\n";

impl EcmpLab {
    /// Builds the topology with `n` directors and `servers` real servers,
    /// and waits until the router has a route to the VIP through all of
    /// them.
    pub fn start(n: usize, servers: usize) -> Result<EcmpLab> {
        Self::start_with(n, servers, &EcmpOptions::default())
    }

    /// [`EcmpLab::start`] with options; with VRRP it waits for the route
    /// through director1 (the master) only.
    pub fn start_with(n: usize, servers: usize, options: &EcmpOptions) -> Result<EcmpLab> {
        let lab = Lab::build(&LabSpec {
            directors: n,
            real_servers: servers,
            vip_on_director: false,
        })?;
        let router = lab.add_host("router", ROUTER.parse()?)?;
        router.ns.sysctl("net.ipv4.ip_forward", "1")?;
        // ECMP by the 5-tuple, so one client's flows spread.
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
        // As the lab client: full checksums (the frames are XDP_TX'd).
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
        let (bfd_proto, bfd_on) = if options.bfd {
            (BIRD_BFD, " bfd on;")
        } else {
            ("", "")
        };
        let (router_bird, _) = bird(
            &router.ns,
            &dir,
            "router",
            &format!(
                "router id {ROUTER};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n{bfd_proto}\
                 template bgp dir {{ local {ROUTER} as 65000; hold time 3; connect retry time 1;{bfd_on} ipv4 {{ import all; export none; }}; }}\n{neighbors}"
            ),
        )?;
        let mut directors = Vec::new();
        let mut birds = Vec::new();
        for (i, d) in lab.directors.iter().enumerate() {
            let state = lab.state_dir(&d.name)?;
            let vips4 = state.join("bird-vips4.conf");
            // BIRD's control socket (where `bird` puts it).
            let sock = dir.join(format!("bird-{}.ctl", d.name));
            let mut c = scenario::global_config(&lab, &d.name)?;
            let extra = if options.bgp.is_empty() {
                String::new()
            } else {
                format!(", {}", options.bgp)
            };
            c.push_str(&format!(
                "bgp = {{ bird_socket = \"{}\", withdraw_wait = 3{extra} }}\n",
                sock.display()
            ));
            c.push_str(&options.global);
            if options.vrrp {
                c.push_str(&format!(
                    "\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\npriority = {}\nversion = 3\nadvert_int = 0.1\nvirtual_ipaddress = [\"{VIP}/32\"]\n",
                    150 - 50 * i.min(2)
                ));
            }
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
            // The daemon creates the file BIRD includes (empty until it
            // announces) before BIRD starts: the lab arranges nothing.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !vips4.exists() {
                if Instant::now() > deadline {
                    bail!("{} did not create {}", d.name, vips4.display());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // (BIRD's include must start a line.)
            let (b, _) = bird(
                &d.ns,
                &dir,
                &d.name,
                &format!(
                    "router id {};\nprotocol device {{}}\nprotocol static director4 {{\n  ipv4;\n  include \"{}\";\n}}\n{bfd_proto}\
                     protocol bgp up {{ local {} as {}; neighbor {ROUTER} as 65000; hold time 3; connect retry time 1;{bfd_on} ipv4 {{ import none; export where proto = \"director4\"; }}; }}\n",
                    d.ip,
                    vips4.display(),
                    d.ip,
                    65001 + i
                ),
            )?;
            birds.push(b);
        }
        let all: Vec<String> = if options.vrrp {
            vec![lab.directors[0].ip.to_string()]
        } else {
            lab.directors.iter().map(|d| d.ip.to_string()).collect()
        };
        let e = EcmpLab {
            directors,
            _birds: birds,
            _router_bird: router_bird,
            far,
            router,
            lab,
        };
        e.wait_hops(&all, Duration::from_secs(30))?;
        Ok(e)
    }

    /// The router's next hops for the VIP, sorted.
    pub fn next_hops(&self) -> Result<Vec<String>> {
        let out = self
            .router
            .ns
            .ip(&["route", "show", &format!("{VIP}/32")])?;
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

    /// Waits until the next hops are exactly `want`.
    pub fn wait_hops<S: AsRef<str>>(&self, want: &[S], timeout: Duration) -> Result<()> {
        let want: Vec<&str> = want.iter().map(AsRef::as_ref).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let hops = self.next_hops()?;
            if hops == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("router next hops {hops:?}, expected {want:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Opens `n` keep-alive connections from the far client (each asks once
    /// and notes its real server), kills the last director, waits until the
    /// router has withdrawn it, and asks again on every connection.
    /// Returns (connections opened, connections that answered again from the
    /// same real server).
    pub fn kill_last_with_open_connections(&mut self, n: usize) -> Result<(usize, usize)> {
        let conns: Vec<(Conn, String)> = self.far.run(move || {
            (0..n)
                .filter_map(|_| {
                    let mut c = Conn::open().ok()?;
                    let rs = c.get().ok()?;
                    Some((c, rs))
                })
                .collect()
        })?;
        let opened = conns.len();
        let last = self.lab.directors.len() - 1;
        self.kill_director(last)?;
        let left: Vec<String> = self.lab.directors[..last]
            .iter()
            .map(|d| d.ip.to_string())
            .collect();
        self.wait_hops(&left, Duration::from_secs(15))?;
        let kept = self.far.run(move || {
            conns
                .into_iter()
                .filter_map(|(mut c, rs)| c.get().ok().filter(|r| *r == rs))
                .count()
        })?;
        Ok((opened, kept))
    }

    /// Kills the last director as a machine dies and returns how long the
    /// router took to withdraw it (its route to the VIP no longer through
    /// it), polled every 2 ms.
    pub fn withdrawal_of_a_dead_director(&mut self) -> Result<Duration> {
        let last = self.lab.directors.len() - 1;
        let dead = self.lab.directors[last].ip.to_string();
        let started = std::time::Instant::now();
        self.kill_director(last)?;
        loop {
            if !self.next_hops()?.contains(&dead) {
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(15),
                "the router never withdrew {dead}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills director `i` as a machine dies: link down, process killed.
    pub fn kill_director(&mut self, i: usize) -> Result<()> {
        self.lab.directors[i]
            .ns
            .ip(&["link", "set", "eth0", "down"])?;
        let _ = self.directors[i].stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        Ok(())
    }
}

/// A keep-alive HTTP connection to the VIP: which real server answers.
pub struct Conn(BufReader<TcpStream>);

impl Conn {
    pub fn open() -> Result<Conn> {
        let s = TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn(BufReader::new(s)))
    }

    /// One request; the body (the real server's name).
    pub fn get(&mut self) -> Result<String> {
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
