//! The topology builder.
//!
//! ```text
//!                 switch namespace: bridge br0
//!        +-----------+-------------+-------------+
//!        |           |             |             |
//!     client     director1..N   rs1..M (VIP on lo, nginx)
//!    10.0.0.2    10.0.0.10+i    10.0.0.20+j
//!                        VIP 10.0.0.100
//! ```
//! Every host namespace has one interface, `eth0`, in 10.0.0.0/24 and
//! fd00::/64 (host `10.0.0.N` is also `fd00::N`); the VIPs are 10.0.0.100
//! and fd00::100.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::{Netns, Proc, destroy_netns},
    xdp_pass,
};

/// Prefix of every namespace a lab creates (`cargo xtask lab clean` looks
/// for it).
pub const PREFIX: &str = "dlab-";
/// The virtual IP the lab's real servers serve.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// The IPv6 virtual IP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Ports the real servers' HTTP server listens on.
pub const HTTP_PORTS: [u16; 2] = [80, 8080];

/// The IPv6 twin of a lab IPv4 address (10.0.0.N -> fd00::N).
pub fn v6_of(ip: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(ip.octets()[3]))
}
/// Prefix length of the lab subnet.
pub const PREFIX_LEN: u8 = 24;

/// Address of director `i` (0-based).
pub fn director_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i as u8)
}

/// Address of real server `j` (0-based).
pub fn real_server_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 20 + j as u8)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub directors: usize,
    pub real_servers: usize,
    /// Put the VIP on the first director's `eth0` (until VRRP does it).
    pub vip_on_director: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            directors: 1,
            real_servers: 2,
            vip_on_director: true,
        }
    }
}

/// One host of the lab.
#[derive(Debug)]
pub struct Node {
    /// Role name: `client`, `director1`, `rs1`...
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Name of this host's port on the switch.
    pub port: String,
}

impl Node {
    /// The host's IPv6 address.
    pub fn ip6(&self) -> Ipv6Addr {
        v6_of(self.ip)
    }

    /// The host's address in `family` (4 or 6).
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ip6().into()
        } else {
            self.ip.into()
        }
    }

    /// MAC address of `eth0`.
    pub fn mac(&self) -> Result<String> {
        let out = self.ns.ip(&["link", "show", "eth0"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .context("eth0 has no Ethernet address")
    }

    /// Whether this host holds the lab's IPv4 VIP on `eth0`.
    pub fn holds_vip(&self) -> Result<bool> {
        let out = self.ns.ip(&["-4", "addr", "show", "dev", "eth0"])?;
        Ok(String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/32")))
    }

    /// Whether an XDP program is attached to `eth0` (any mode).
    pub fn xdp_attached(&self) -> Result<bool> {
        let out = self.ns.ip(&["-d", "link", "show", "eth0"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.contains("prog/xdp"))
    }

    /// Runs `f` on a thread inside this host's namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.ns.run(f)
    }
}

/// A running lab. Dropping it kills its processes and deletes everything.
pub struct Lab {
    pub id: String,
    /// Scratch directory for configs and logs (removed on drop unless
    /// `DIRECTOR_LAB_KEEP` is set).
    pub dir: PathBuf,
    // Drop order: processes, then pinned dataplanes, then hosts, then the
    // switch.
    servers: Vec<Proc>,
    state_dirs: std::sync::Mutex<Vec<PathBuf>>,
    vip_on_director: bool,
    pub client: Node,
    pub directors: Vec<Node>,
    pub real_servers: Vec<Node>,
    switch: Netns,
}

impl Lab {
    /// Builds the topology and starts the real servers' HTTP servers.
    /// One director holding the VIP and `real_servers` real servers.
    pub fn one_director(real_servers: usize) -> Result<Lab> {
        Lab::build(&LabSpec {
            directors: 1,
            real_servers,
            vip_on_director: true,
        })
    }

    pub fn build(spec: &LabSpec) -> Result<Lab> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("the lab needs root (network namespaces, XDP)");
        }
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let switch = Netns::create(&format!("{id}-sw"))?;
        switch.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "forward_delay",
            "0",
        ])?;
        switch.ip(&["link", "set", "br0", "up"])?;

        // Clients and real servers skip duplicate address detection (their
        // addresses are usable at once); directors keep the kernel's
        // default, as on an operator's machine: the VIPs VRRP adds must not
        // depend on the lab to be usable at once.
        let host = |name: &str, ip: Ipv4Addr| attach_host(&switch, &id, name, ip, false);

        let client = host("client", CLIENT_IP)?;
        // Quirk: veth leaves TCP/UDP checksums partial; after XDP_TX the real
        // server would drop them. Real NICs checksum in hardware.
        client.ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;

        let mut directors = Vec::new();
        for i in 0..spec.directors {
            let d = attach_host(
                &switch,
                &id,
                &format!("director{}", i + 1),
                director_ip(i),
                true,
            )?;
            // Quirk: XDP_TX on a veth is dropped unless its peer runs XDP.
            xdp_pass::attach(&switch, &d.port, &format!("{id}-{}", d.name))?;
            if i == 0 && spec.vip_on_director {
                add_director_vip(&d.ns)?;
            }
            directors.push(d);
        }

        let mut real_servers = Vec::new();
        let mut servers = Vec::new();
        for j in 0..spec.real_servers {
            let rs = host(&format!("rs{}", j + 1), real_server_ip(j))?;
            // LVS-DR real server: holds the VIP, never answers ARP for it
            // (IPv6 answers neighbour solicitations only for addresses on
            // the interface asked, so the VIP on lo stays silent).
            rs.ns
                .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            rs.ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
                "nodad",
            ])?;
            for iface in ["all", "eth0"] {
                rs.ns
                    .sysctl(&format!("net.ipv4.conf.{iface}.arp_ignore"), "1")?;
                rs.ns
                    .sysctl(&format!("net.ipv4.conf.{iface}.arp_announce"), "2")?;
            }
            servers.push(start_nginx(&rs, &dir)?);
            real_servers.push(rs);
        }

        let lab = Lab {
            id,
            dir,
            servers,
            state_dirs: std::sync::Mutex::new(Vec::new()),
            vip_on_director: spec.vip_on_director,
            client,
            directors,
            real_servers,
            switch,
        };
        lab.wait_for_real_servers(Duration::from_secs(10))?;
        Ok(lab)
    }

    /// Stops real server `j`'s HTTP server (it stops answering; the host
    /// stays up).
    pub fn stop_http(&mut self, j: usize) -> Result<()> {
        if let Some(p) = self.servers.get_mut(j) {
            let _ = p.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        }
        // nginx workers outlive a killed master: kill everything in that
        // host's namespace (pkill would reach other labs' servers too).
        self.real_servers[j].ns.kill_all();
        Ok(())
    }

    /// When real server `j`'s HTTP server finished each request from
    /// `from` (Unix seconds, from its access log), oldest first.
    pub fn requests_from(&self, j: usize, from: Ipv4Addr) -> Result<Vec<f64>> {
        let path = self.dir.join(&self.real_servers[j].name).join("access.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let from = from.to_string();
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let t: f64 = f.next()?.parse().ok()?;
                (f.next()? == from).then_some(t)
            })
            .collect())
    }

    /// Starts real server `j`'s HTTP server again.
    pub fn start_http(&mut self, j: usize) -> Result<()> {
        let p = start_nginx(&self.real_servers[j], &self.dir)?;
        if j < self.servers.len() {
            self.servers[j] = p;
        }
        Ok(())
    }

    /// Another host on the lab's switch (a router, a second client...);
    /// removed when the returned node is dropped.
    pub fn add_host(&self, name: &str, ip: Ipv4Addr) -> Result<Node> {
        attach_host(&self.switch, &self.id, name, ip, false)
    }

    /// Puts a `size`-byte file with [`big_file_byte`] content on every real
    /// server, served at `/big` at 512 KiB/s per connection.
    pub fn write_big_file(&self, size: usize) -> Result<()> {
        let content: Vec<u8> = (0..size).map(big_file_byte).collect();
        for rs in &self.real_servers {
            std::fs::write(self.dir.join(&rs.name).join("big.bin"), &content)?;
        }
        Ok(())
    }

    /// The switch namespace (for captures and fault injection).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Re-creates director `i`'s `eth0`, as a driver reload or a re-created
    /// bond or VLAN does: the interface is deleted and a new one (new
    /// index, new MAC) takes its name, directly or by a rename (as udev
    /// names a new device). The host's own configuration follows, as an
    /// operator's network setup would: addresses, the VIP where the lab put
    /// it, the switch side's XDP_PASS.
    pub fn recreate_director_link(&self, i: usize, by_rename: bool) -> Result<()> {
        let d = &self.directors[i];
        let (port, ns) = (d.port.as_str(), d.ns.name());
        if by_rename {
            let (tmp_port, tmp) = (format!("{port}n"), "eth0new");
            self.switch.ip(&[
                "link", "add", &tmp_port, "type", "veth", "peer", "name", tmp, "netns", ns,
            ])?;
            self.switch.ip(&["link", "del", port])?;
            self.switch.ip(&["link", "set", &tmp_port, "name", port])?;
            d.ns.ip(&["link", "set", tmp, "name", "eth0"])?;
        } else {
            self.switch.ip(&["link", "del", port])?;
            self.switch.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
        }
        self.switch
            .ip(&["link", "set", port, "master", "br0", "up"])?;
        xdp_pass::attach(&self.switch, port, &format!("{}-{}", self.id, d.name))?;
        configure_eth0(&d.ns, d.ip)?;
        if i == 0 && self.vip_on_director {
            add_director_vip(&d.ns)?;
        }
        Ok(())
    }

    /// Writes a file into the lab directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A state directory for a director. The daemon pins its dataplane
    /// where it would for an operator (the host's bpffs, under
    /// `/sys/fs/bpf/director/`); the lab flushes it when it drops.
    pub fn state_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(format!("state-{name}"));
        let mut dirs = self
            .state_dirs
            .lock()
            .map_err(|_| anyhow::anyhow!("lab state list poisoned"))?;
        if !dirs.contains(&dir) {
            std::fs::create_dir_all(&dir)?;
            dirs.push(dir.clone());
        }
        Ok(dir)
    }

    /// Path of a file in the lab directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn wait_for_real_servers(&self, timeout: Duration) -> Result<()> {
        let targets: Vec<SocketAddr> = self
            .real_servers
            .iter()
            .map(|rs| SocketAddr::from((rs.ip, 80)))
            .collect();
        let deadline = Instant::now() + timeout;
        let ready = self.client.run(move || {
            targets.iter().all(|t| {
                while Instant::now() < deadline {
                    if TcpStream::connect_timeout(t, Duration::from_millis(200)).is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                false
            })
        })?;
        if !ready {
            let logs: Vec<String> = self.servers.iter().map(|p| p.log()).collect();
            bail!("real servers' HTTP did not come up: {logs:?}");
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        if let (Ok(dirs), Ok(bin)) = (self.state_dirs.lock(), crate::director_bin()) {
            for d in dirs.iter() {
                let _ = std::process::Command::new(&bin)
                    .arg("flush")
                    .arg("--state-dir")
                    .arg(d)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        if std::env::var_os("DIRECTOR_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts nginx in `rs`'s namespace, answering `GET /` with the host's name.
fn start_nginx(rs: &Node, dir: &Path) -> Result<Proc> {
    let base = dir.join(&rs.name);
    std::fs::create_dir_all(base.join("tmp"))?;
    let b = base.display();
    let conf = format!(
        r#"worker_processes 1;
# Room for a connection kept by each of 10,000 checks (bench health).
worker_rlimit_nofile 40000;
pid {b}/nginx.pid;
error_log {b}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    # Each request, its end time (Unix seconds, ms) and client: what a
    # test counts of the director's health checks.
    log_format lab '$msec $remote_addr $request_uri';
    access_log {b}/access.log lab;
    client_body_temp_path {b}/tmp/body;
    proxy_temp_path {b}/tmp/proxy;
    fastcgi_temp_path {b}/tmp/fastcgi;
    uwsgi_temp_path {b}/tmp/uwsgi;
    scgi_temp_path {b}/tmp/scgi;
    server {{
        listen 80 reuseport;
        listen [::]:80 reuseport;
        listen 8080 reuseport;
        listen [::]:8080 reuseport;
        default_type text/plain;
        location / {{ return 200 "{name}\n"; }}
        # Long downloads (see `Lab::write_big_file`), at a bounded rate.
        location = /big {{ alias {b}/big.bin; limit_rate 512k; default_type application/octet-stream; }}
    }}
}}
"#,
        name = rs.name
    );
    let conf_path = base.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let conf_str = conf_path.to_string_lossy().to_string();
    let err_log = format!("{b}/error.log");
    rs.ns.spawn(
        "nginx",
        &["-e", &err_log, "-c", &conf_str, "-g", "daemon off;"],
        &base.join("nginx.out"),
    )
}

/// A host `name` with `ip` on the lab's switch (namespace `<id>-<name>`).
/// With `dad`, the namespace keeps the kernel's duplicate address detection
/// (the host's own static address is still added `nodad`, as an operator's
/// static configuration may).
fn attach_host(switch: &Netns, id: &str, name: &str, ip: Ipv4Addr, dad: bool) -> Result<Node> {
    let ns = Netns::create(&format!("{id}-{name}"))?;
    if !dad {
        for iface in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_dad"), "0")?;
        }
    }
    let port = format!("p-{name}");
    switch.ip(&[
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
    configure_eth0(&ns, ip)?;
    Ok(Node {
        name: name.to_string(),
        ns,
        ip,
        port,
    })
}

/// A host's addresses on `eth0`, and the link up.
fn configure_eth0(ns: &Netns, ip: Ipv4Addr) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", "eth0"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", v6_of(ip)),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}

/// The VIPs on a director's `eth0`, as an operator without VRRP adds them.
fn add_director_vip(ns: &Netns) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
    // Deprecated (preferred_lft 0), as VRRP adds it: never the source of
    // the director's own connections.
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{VIP6}/128"),
        "dev",
        "eth0",
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    Ok(())
}

/// Byte `i` of the lab's big file: a pattern a download can be checked
/// against without keeping it.
pub fn big_file_byte(i: usize) -> u8 {
    ((i % 251) ^ (i / 251 % 256)) as u8
}

/// Whether the run that created `name` (`dlab-<pid>-...`) is still alive.
fn owner_alive(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<i32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the pin directories (`/sys/fs/bpf/director/<state dir with /
/// as ->@<hash>`) of daemons whose state directory was in lab `name`'s scratch
/// directory. Returns the directories removed.
fn stale_pins(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/bpf/director");
    // The scratch directory's path with `/` written `-` (director's
    // `pin_name`).
    let tmp = std::env::temp_dir();
    let escaped = format!(
        "{}-{name}-",
        tmp.to_string_lossy().trim_matches('/').replace('/', "-")
    );
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.filter_map(|e| e.ok()) {
        if !e.file_name().to_string_lossy().starts_with(&escaped) {
            continue;
        }
        // Unpinning the link detaches the program; the maps are freed.
        if let Ok(files) = std::fs::read_dir(e.path()) {
            for f in files.filter_map(|f| f.ok()) {
                let _ = std::fs::remove_file(f.path());
            }
        }
        if std::fs::remove_dir(e.path()).is_ok() {
            out.push(e.path());
        }
    }
    out
}

/// Removes namespaces and scratch directories left by lab runs whose
/// process is gone (or all of them with `all`). Returns what was removed.
pub fn clean(all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let list = |dir: &Path| -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                    .filter(|(n, _)| n.starts_with(PREFIX) && (all || !owner_alive(n)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for (name, _) in list(Path::new("/run/netns")) {
        destroy_netns(&name);
        removed.push(name);
    }
    for (name, path) in list(&std::env::temp_dir()) {
        // Their daemons' pinned dataplanes first (they name the directory).
        for entry in stale_pins(&name) {
            removed.push(entry.display().to_string());
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path.display().to_string());
        }
    }
    Ok(removed)
}
