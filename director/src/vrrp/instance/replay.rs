//! Whole instances replayed without root: the real runner (receive
//! checks, the state machine, tracking, the takeover and its order, status,
//! notifications) on a host that records what it is asked to do, fed
//! adverts, timers, tracked verdicts and link changes as the run loop
//! would feed them. What the network labs check with real sockets, here
//! in milliseconds and in any order a test chooses.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Instant as StdInstant,
};

use futures::future::BoxFuture;

use super::*;
use crate::config::{ServiceAddr, VirtualAddress};

/// What the recorded host was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    /// An advert left on `path` to `dst` with this priority.
    Advert {
        path: Option<usize>,
        dst: IpAddr,
        priority: u8,
    },
    Garp(Vec<Ipv4Addr>),
    Na(Vec<Ipv6Addr>),
    AddAddress(IpAddr),
    RemoveAddress(IpAddr),
    AddRoute(String),
    DeleteRoute(String),
    VmacLink(bool),
    RemoveVmac,
}

/// The host's side a test controls: its interface and the interfaces
/// the instance tracks.
struct World {
    done: Vec<Done>,
    link: Followed,
    operstate: BTreeMap<String, String>,
}

#[derive(Clone)]
struct Recorder {
    world: Arc<Mutex<World>>,
    source: IpAddr,
    paths: usize,
    /// A virtual-MAC interface that follows the state (IPv6 `use_vmac`).
    vmac: bool,
}

impl Recorder {
    fn record(&self, d: Done) {
        if let Ok(mut w) = self.world.lock() {
            w.done.push(d);
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Host for Recorder {
    fn iface(&self) -> &str {
        "eth0"
    }
    fn ifindex(&self) -> u32 {
        2
    }
    fn address_ifindex(&self) -> u32 {
        2
    }
    fn source(&self) -> IpAddr {
        self.source
    }
    fn path_source(&self, i: usize) -> Option<IpAddr> {
        (i < self.paths).then_some(self.source)
    }
    fn paths(&self) -> usize {
        self.paths
    }
    fn send(&self, path: Option<usize>, dst: IpAddr, message: &[u8]) -> Result<(), NetError> {
        // The VRRP header: version/type, virtual router id, priority.
        self.record(Done::Advert {
            path,
            dst,
            priority: message[2],
        });
        Ok(())
    }
    fn recv(&self) -> BoxFuture<'_, (Option<usize>, Result<Received, NetError>)> {
        Box::pin(std::future::pending())
    }
    fn try_recv(&self, _path: Option<usize>) -> Result<Option<Received>, NetError> {
        Ok(None)
    }
    fn garps(&self, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        if !vips.is_empty() {
            self.record(Done::Garp(vips.to_vec()));
        }
        Ok(())
    }
    fn nas(&self, vips: &[Ipv6Addr]) -> Result<(), NetError> {
        if !vips.is_empty() {
            self.record(Done::Na(vips.to_vec()));
        }
        Ok(())
    }
    fn add_address(&self, a: VirtualAddress) -> BoxFuture<'_, Result<(), NetError>> {
        self.record(Done::AddAddress(a.address));
        ready(Ok(()))
    }
    fn remove_address(&self, a: VirtualAddress) -> BoxFuture<'_, Result<(), NetError>> {
        self.record(Done::RemoveAddress(a.address));
        ready(Ok(()))
    }
    fn add_route<'a>(
        &'a self,
        r: &'a routes::VirtualRoute,
        _ifindex: Option<u32>,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        self.record(Done::AddRoute(r.text.clone()));
        ready(Ok(()))
    }
    fn delete_route<'a>(
        &'a self,
        r: &'a routes::VirtualRoute,
        _ifindex: Option<u32>,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        self.record(Done::DeleteRoute(r.text.clone()));
        ready(Ok(()))
    }
    fn add_rule<'a>(
        &'a self,
        _r: &'a routes::VirtualRule,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        ready(Ok(()))
    }
    fn delete_rule<'a>(
        &'a self,
        _r: &'a routes::VirtualRule,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        ready(Ok(()))
    }
    fn ifindex_of(&self, _name: &str) -> Option<u32> {
        Some(3)
    }
    fn operstate(&self, name: &str) -> String {
        self.world
            .lock()
            .ok()
            .and_then(|w| w.operstate.get(name).cloned())
            .unwrap_or_default()
    }
    fn vmac_link(&self, up: bool) -> BoxFuture<'_, Result<(), NetError>> {
        if self.vmac {
            self.record(Done::VmacLink(up));
        }
        ready(Ok(()))
    }
    fn remove_vmac(&self) -> BoxFuture<'_, Result<(), NetError>> {
        self.record(Done::RemoveVmac);
        ready(Ok(()))
    }
    fn follow<'a>(&'a mut self, _cfg: &'a VrrpInstance) -> BoxFuture<'a, Followed> {
        let now = self.world.lock().map_or(Followed::Unknown, |w| w.link);
        ready(now)
    }
}

const OURS: &str = "10.0.0.1";
const PEER: &str = "10.0.0.2";
const VIP: &str = "10.0.0.100";

/// One instance on a recorded host, with the handles a test moves.
struct Replay {
    runner: Runner,
    world: Arc<Mutex<World>>,
    scripts: BTreeMap<String, watch::Sender<Option<bool>>>,
    quorum: watch::Sender<BTreeMap<ServiceAddr, bool>>,
    status: Arc<Mutex<InstanceStatus>>,
    states: watch::Receiver<States>,
}

impl Replay {
    /// The first `[[vrrp_instance]]` of `toml` (a whole config), started.
    async fn start(toml: &str) -> Replay {
        let config = Config::parse(Path::new("replay.toml"), toml).expect("config");
        let cfg = config.vrrp_instance[0].clone();
        let mut scripts = BTreeMap::new();
        let mut trackers = Trackers::default();
        for s in &config.vrrp_script {
            let (tx, rx) = watch::channel(None);
            trackers.scripts.insert(s.name.clone(), (s.weight, rx));
            scripts.insert(s.name.clone(), tx);
        }
        let (quorum, quorum_rx) = watch::channel(BTreeMap::new());
        let (states, states_rx) = watch::channel(States::new());
        let shared = Shared {
            trackers,
            notifier: Notifier::start(),
            quorum: quorum_rx,
            states: Arc::new(states),
            vmac_hook: None,
            served: None,
            preempt_hold: None,
        };
        let world = Arc::new(Mutex::new(World {
            done: Vec::new(),
            link: Followed::Present {
                up: true,
                moved: false,
            },
            operstate: BTreeMap::new(),
        }));
        let host = Recorder {
            world: world.clone(),
            source: OURS.parse().expect("ip"),
            paths: cfg.heartbeat.len(),
            vmac: cfg.vmac_name().is_some() && cfg.is_ipv6(),
        };
        let status = new_status(&cfg, "eth0");
        let mut runner = Runner::on(cfg, Box::new(host), status.clone(), &shared, None, None);
        runner.start().await;
        Replay {
            runner,
            world,
            scripts,
            quorum,
            status,
            states: states_rx,
        }
    }

    /// What the host was asked since the last call.
    fn done(&self) -> Vec<Done> {
        std::mem::take(&mut self.world.lock().expect("world").done)
    }

    fn state(&self) -> State {
        self.runner.machine.state()
    }

    fn status(&self) -> InstanceStatus {
        self.status.lock().expect("status").clone()
    }

    /// An advert from `from` with `priority`, as the socket delivers it.
    async fn advert(&mut self, from: &str, priority: u8, password: Option<&str>, at: StdInstant) {
        let src: IpAddr = from.parse().expect("ip");
        let dst: IpAddr = MULTICAST_V4.into();
        let advert = Advert {
            version: self.runner.cfg.version,
            vrid: self.runner.cfg.virtual_router_id,
            priority,
            interval_cs: self.runner.cfg.advert_interval_cs(),
            addresses: vec![VIP.parse().expect("ip")],
            auth: password.map(|p| (AUTH_PASS, auth_data(p))),
        };
        let p = Received {
            src,
            dst,
            ttl: 255,
            payload: advert.encode(src, dst),
            arrived: at,
        };
        self.runner.received(None, p).await;
    }

    /// The protocol's timer, fired at its deadline.
    async fn timer(&mut self) -> StdInstant {
        let due = self.runner.machine.deadline().expect("a deadline");
        self.runner.on_timer(due).await;
        due
    }

    /// One tracking tick at `now`.
    async fn tick(&mut self, now: StdInstant) {
        self.runner.on_tick(2, now).await;
    }

    fn set(&self, f: impl FnOnce(&mut World)) {
        f(&mut self.world.lock().expect("world"));
    }
}

const BASE: &str = r#"
[global]
interface = "eth0"
"#;

fn config(instance: &str, extra: &str) -> String {
    format!(
        "{BASE}\n[[vrrp_instance]]\nname = \"VI_1\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"{VIP}/24\"]\n{instance}\n{extra}"
    )
}

fn vip() -> IpAddr {
    VIP.parse().expect("ip")
}

fn position(done: &[Done], want: &Done) -> usize {
    done.iter()
        .position(|d| d == want)
        .unwrap_or_else(|| panic!("{want:?} not done: {done:?}"))
}

/// A backup that hears its master stays quiet; when the master falls
/// silent, the master-down timer makes it master: the advert first, the
/// address added, then announced (no XDP serving it: the kernel must own
/// it first); status, the published state and notify follow.
#[tokio::test]
async fn a_backup_takes_over_when_its_master_falls_silent_in_the_rfc_order() {
    let log = std::env::temp_dir().join(format!("replay-notify-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let notify = format!(
        "notify = \"sh -c 'echo $2 $3 >> {}' sh\"\npriority = 100",
        log.display()
    );
    let mut r = Replay::start(&config(&notify, "")).await;
    assert_eq!(r.state(), State::Backup);
    // Not master at start: addresses a dead daemon left behind go.
    assert_eq!(r.done(), vec![Done::RemoveAddress(vip())]);
    // (A queued notification is replaced by a later one of the same
    // instance: let this one run.)
    r.runner
        .outputs
        .notifier
        .settle(Duration::from_secs(10))
        .await;

    let t0 = StdInstant::now();
    for i in 0..3 {
        r.advert(PEER, 200, None, t0 + Duration::from_secs(i)).await;
    }
    assert_eq!(r.state(), State::Backup);
    assert!(r.done().is_empty(), "a backup sends nothing");
    assert_eq!(r.status().adverts_received, 3);
    assert!(r.status().peer_seen);

    // The master falls silent: the timer fires at master-down.
    let due = r.timer().await;
    assert!(due >= t0 + Duration::from_secs(2) + Duration::from_millis(3000));
    assert_eq!(r.state(), State::Master);
    let done = r.done();
    let advert = Done::Advert {
        path: None,
        dst: MULTICAST_V4.into(),
        priority: 100,
    };
    let added = Done::AddAddress(vip());
    let garp = Done::Garp(vec![VIP.parse().expect("ip")]);
    assert!(position(&done, &advert) < position(&done, &added));
    assert!(position(&done, &added) < position(&done, &garp));
    // garp_master_repeat (5) announcements in the first burst.
    assert_eq!(done.iter().filter(|d| **d == garp).count(), 5);
    let status = r.status();
    assert_eq!(status.state, "master");
    assert_eq!(status.adverts_sent, 1);
    assert_eq!(status.master_address.as_deref(), Some(OURS));
    assert_eq!(
        r.states.borrow().get("VI_1").map(|p| p.state),
        Some(State::Master)
    );
    r.runner
        .outputs
        .notifier
        .settle(Duration::from_secs(10))
        .await;
    let notified = std::fs::read_to_string(&log).expect("notify ran");
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        notified.lines().collect::<Vec<_>>(),
        ["VI_1 BACKUP", "VI_1 MASTER"]
    );
}

/// A master whose tracked script fails advertises the lowered priority
/// at its next advert; the backup, now higher, preempts and this master
/// gives the address up - announcements stopped, the address removed.
#[tokio::test]
async fn a_failing_tracked_script_lowers_the_advertised_priority_and_hands_the_vip_over() {
    let instance = "state = \"master\"\npriority = 150\ntrack_script = [\"chk\"]";
    let script = "[[vrrp_script]]\nname = \"chk\"\nscript = \"true\"\nweight = -60";
    let mut r = Replay::start(&config(instance, script)).await;
    r.scripts["chk"].send(Some(true)).expect("verdict");
    r.runner.retrack(StdInstant::now()).await;
    assert_eq!(r.state(), State::Master);
    r.done();

    r.scripts["chk"].send(Some(false)).expect("verdict");
    r.runner.retrack(StdInstant::now()).await;
    assert_eq!(r.status().effective_priority, 90);
    let due = r.timer().await;
    let done = r.done();
    assert!(
        done.contains(&Done::Advert {
            path: None,
            dst: MULTICAST_V4.into(),
            priority: 90
        }),
        "{done:?}"
    );
    // A backup of 120 now outranks us: its advert makes us backup.
    r.advert(PEER, 120, None, due + Duration::from_millis(10))
        .await;
    assert_eq!(r.state(), State::Backup);
    assert_eq!(r.done(), vec![Done::RemoveAddress(vip())]);
    assert_eq!(r.status().master_address.as_deref(), Some(PEER));

    // The script recovers: 150 again, and preempts at master-down.
    r.scripts["chk"].send(Some(true)).expect("verdict");
    r.runner.retrack(StdInstant::now()).await;
    assert_eq!(r.status().effective_priority, 150);
}

/// A tracked interface whose operstate is not up forces Fault (the
/// address goes, a zero-priority advert lets the backup take over at
/// once); back up, the instance is a backup again.
#[tokio::test]
async fn a_tracked_interface_down_is_a_fault_and_its_return_ends_it() {
    let instance = "state = \"master\"\ntrack_interface = [\"uplink\"]";
    let mut r = Replay::start(&config(instance, "")).await;
    r.set(|w| {
        w.operstate.insert("uplink".into(), "up\n".into());
    });
    r.tick(StdInstant::now()).await;
    assert_eq!(r.state(), State::Master);
    r.done();

    r.set(|w| {
        w.operstate.insert("uplink".into(), "down\n".into());
    });
    r.tick(StdInstant::now()).await;
    assert_eq!(r.state(), State::Fault);
    let done = r.done();
    let zero = Done::Advert {
        path: None,
        dst: MULTICAST_V4.into(),
        priority: 0,
    };
    assert!(position(&done, &zero) < position(&done, &Done::RemoveAddress(vip())));
    assert_eq!(r.status().state, "fault");

    r.set(|w| {
        w.operstate.insert("uplink".into(), "up\n".into());
    });
    r.tick(StdInstant::now()).await;
    assert_eq!(r.state(), State::Backup);
}

/// The instance's own interface deleted is a Fault; back, it stays in
/// Fault until the link has been up for the settle time (a switch port
/// forwards only after its own link handling), then it leaves it.
#[tokio::test]
async fn the_own_interface_lost_is_a_fault_left_only_after_the_link_settles() {
    let mut r = Replay::start(&config("state = \"master\"", "")).await;
    r.done();
    r.set(|w| w.link = Followed::Gone);
    r.tick(StdInstant::now()).await;
    assert_eq!(r.state(), State::Fault);
    assert!(r.done().contains(&Done::RemoveAddress(vip())));

    r.set(|w| {
        w.link = Followed::Present {
            up: true,
            moved: false,
        }
    });
    let back = StdInstant::now();
    r.tick(back).await;
    assert_eq!(r.state(), State::Fault, "not settled yet");
    // The link came back PRIMARY_SETTLE ago (the runner measures from the
    // tick that saw it up).
    r.runner.state.primary_up_since = back.checked_sub(PRIMARY_SETTLE);
    r.tick(StdInstant::now()).await;
    assert_eq!(r.state(), State::Backup);
}

/// A master whose interface was re-created (or whose MAC changed) puts
/// its address back and announces it again.
#[tokio::test]
async fn a_master_follows_a_recreated_interface_with_its_address_and_an_announcement() {
    let mut r = Replay::start(&config("state = \"master\"", "")).await;
    r.done();
    r.set(|w| {
        w.link = Followed::Present {
            up: true,
            moved: true,
        }
    });
    r.tick(StdInstant::now()).await;
    let done = r.done();
    assert!(
        position(&done, &Done::AddAddress(vip()))
            < position(&done, &Done::Garp(vec![VIP.parse().expect("ip")]))
    );
    assert_eq!(r.state(), State::Master);
}

/// An advert with the wrong password is counted by reason and changes
/// nothing: the master-down deadline stays where the last valid advert
/// put it.
#[tokio::test]
async fn an_advert_with_the_wrong_password_is_counted_and_changes_nothing() {
    let auth = "authentication = { auth_type = \"PASS\", auth_pass = \"secret\" }";
    let mut r = Replay::start(&config(auth, "")).await;
    let t0 = StdInstant::now();
    r.advert(PEER, 200, Some("secret"), t0).await;
    let deadline = r.runner.machine.deadline();
    r.advert(PEER, 200, Some("wrong"), t0 + Duration::from_millis(500))
        .await;
    r.advert(PEER, 200, None, t0 + Duration::from_millis(600))
        .await;
    assert_eq!(r.runner.machine.deadline(), deadline);
    let status = r.status();
    assert_eq!(status.adverts_received, 1);
    assert_eq!(status.rejected.get("auth"), Some(&2));
    assert_eq!(r.state(), State::Backup);
}

/// A tracked virtual server's quorum lost lowers the priority by its
/// weight; regained, it is back.
#[tokio::test]
async fn a_tracked_virtual_servers_quorum_moves_the_priority() {
    let instance = "priority = 120\ntrack_virtual_server = [{ address = \"10.0.0.100\", port = 80, weight = -30 }]";
    let service = "[[virtual_server]]\naddress = \"10.0.0.100\"\nport = 80\n[[virtual_server.real_server]]\naddress = \"10.0.0.11\"";
    let mut r = Replay::start(&config(instance, service)).await;
    let id = r.runner.cfg.track_virtual_server[0].id();
    r.quorum.send_replace(BTreeMap::from([(id, false)]));
    r.runner.retrack(StdInstant::now()).await;
    assert_eq!(r.status().effective_priority, 90);
    r.quorum.send_replace(BTreeMap::from([(id, true)]));
    r.runner.retrack(StdInstant::now()).await;
    assert_eq!(r.status().effective_priority, 120);
}
