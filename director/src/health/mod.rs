//! Health checks of real servers (keepalived's checkers): `tcp_check`,
//! `http_get`, `ssl_get`, `misc_check`, `udp_check`, `dns_check`, and our
//! `dr_check` (through the direct-routing path, see [`drpath`]). One file
//! per probe kind; `spec` compiles the config into probes once per load
//! (typed keys, shared by every real server listing the same check); this
//! one holds the verdicts and the tasks.
//!
//! One task per distinct probe (kind, target, parameters), however many
//! services list the server. A round is one attempt plus `retry` more,
//! `delay_before_retry` apart; a failed round takes the server down at once
//! (keepalived's behaviour), `rise` successful rounds bring it back. The
//! first round waits a random `warmup` so thousands of checks do not fire
//! in lock-step. Every probe is cut at its timeout; a misbehaving script is
//! killed; nothing a server sends is trusted beyond a bounded read.

mod dns;
pub mod drpath;
pub mod halfopen;
pub mod http;
pub mod ping;
mod script;
mod spec;
mod tcp;
mod tls;
mod udp;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use self::{
    dns::{dns_answer_ok, dns_query},
    http::parse_http,
    spec::{CheckSpec, Kind, ProbeIdentity, ProbeKey, ProbeKind, Probes, TlsSpec, UrlSpec},
};
use crate::net::neighbor::Mac;

/// What a `dr_check` needs from the daemon: our link, and the real
/// servers' MACs as the daemon resolved them.
#[derive(Debug, Clone)]
pub struct PathEnv {
    /// Our interface's index and MAC (followed when it is re-created).
    pub link: Arc<Mutex<crate::net::neighbor::LinkInfo>>,
    pub macs: Arc<Mutex<HashMap<IpAddr, Mac>>>,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// `misc_dynamic`: the weight the script asked for.
    pub weight: Option<u32>,
    pub error: Option<String>,
}

impl Outcome {
    fn ok() -> Outcome {
        Outcome {
            ok: true,
            weight: None,
            error: None,
        }
    }
    fn fail(e: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            weight: None,
            error: Some(e.into()),
        }
    }
}

/// Rise/fall bookkeeping of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl Verdict {
    pub fn new(healthy: bool) -> Verdict {
        Verdict {
            healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Counts one round; `rise` good rounds in a row bring a server back,
    /// `fall` bad ones take it down. Returns whether health changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        let was = self.healthy;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= rise {
                self.healthy = true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= fall {
                self.healthy = false;
            }
        }
        self.healthy != was
    }
}

/// The live state of one probe (shared with the status document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeState {
    pub healthy: bool,
    pub weight: Option<u32>,
    /// Unix time of the last round, seconds.
    pub last_check: Option<f64>,
    pub last_error: Option<String>,
    /// Duration of the last attempt, seconds.
    pub latency: Option<f64>,
    /// Rounds run.
    #[serde(default)]
    pub rounds: u64,
    /// Rounds that started more than a tenth of `delay_loop` after their
    /// schedule (a checker that cannot keep up).
    #[serde(default)]
    pub late_rounds: u64,
    /// The latest start of any round after its schedule, seconds.
    #[serde(default)]
    pub max_late: f64,
}

impl ProbeState {
    pub(crate) fn new(healthy: bool) -> ProbeState {
        ProbeState {
            healthy,
            weight: None,
            last_check: None,
            last_error: None,
            latency: None,
            rounds: 0,
            late_rounds: 0,
            max_late: 0.0,
        }
    }
}

/// Probe states by probe.
pub type Board = Arc<Mutex<HashMap<ProbeKey, ProbeState>>>;

/// A probe's health changed.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: ProbeKey,
    pub healthy: bool,
}

/// The running probes: one task per distinct probe, their shared board.
pub struct Checks {
    board: Board,
    tasks: HashMap<ProbeKey, tokio::task::JoinHandle<()>>,
    tx: mpsc::Sender<Change>,
    env: Option<PathEnv>,
    /// Opened with the first half-open `tcp_check`.
    half_open: Option<Arc<halfopen::HalfOpen>>,
}

impl Checks {
    /// No probes yet; changes will be sent to `tx`.
    pub fn new(tx: mpsc::Sender<Change>) -> Checks {
        Checks {
            board: Board::default(),
            tasks: HashMap::new(),
            tx,
            env: None,
            half_open: None,
        }
    }

    /// What `dr_check` probes started from now on use.
    pub fn set_path_env(&mut self, env: PathEnv) {
        self.env = Some(env);
    }

    /// The shared state of every probe.
    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// Runs exactly `probes`: probes that are unchanged keep running (and
    /// their state), removed ones stop, new ones start.
    pub fn update(&mut self, probes: &HashSet<ProbeKey>) {
        let gone: Vec<ProbeKey> = self
            .tasks
            .keys()
            .filter(|k| !probes.contains(*k))
            .cloned()
            .collect();
        // Verdicts of the probes that go, by what they checked: a new probe
        // of the same check (only its timing changed) starts from it.
        let mut carried: HashMap<ProbeIdentity, bool> = HashMap::new();
        for key in gone {
            if let Some(t) = self.tasks.remove(&key) {
                t.abort();
            }
            if let Ok(mut b) = self.board.lock()
                && let Some(state) = b.remove(&key)
                && state.last_check.is_some()
            {
                carried.insert(key.spec().identity(), state.healthy);
            }
        }
        for key in probes {
            if self.tasks.contains_key(key) {
                continue;
            }
            let spec = key.spec();
            let initial = carried
                .get(&spec.identity())
                .copied()
                .unwrap_or(!spec.alpha);
            if let Ok(mut b) = self.board.lock() {
                b.insert(key.clone(), ProbeState::new(initial));
            }
            if matches!(spec.kind, Kind::Tcp { half_open: true }) && self.half_open.is_none() {
                self.half_open = Some(Arc::new(halfopen::HalfOpen::new()));
            }
            let task = tokio::spawn(run_probe(
                key.clone(),
                initial,
                self.env.clone(),
                self.half_open.clone(),
                self.board.clone(),
                self.tx.clone(),
            ));
            self.tasks.insert(key.clone(), task);
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

async fn run_probe(
    key: ProbeKey,
    initial: bool,
    env: Option<PathEnv>,
    half_open: Option<Arc<halfopen::HalfOpen>>,
    board: Board,
    tx: mpsc::Sender<Change>,
) {
    let spec = key.spec();
    let check = spec.identity().kind.name();
    let warmup = if spec.warmup.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(Duration::ZERO..spec.warmup)
    };
    tokio::time::sleep(warmup).await;
    let mut verdict = Verdict::new(initial);
    // The weight a misc_dynamic script last asked for (this task is the
    // board entry's only writer).
    let mut weight: Option<u32> = None;
    let mut next = tokio::time::Instant::now();
    let late_limit = spec.delay_loop / 10;
    // The connection an HTTP check with `reuse_connection` keeps.
    let mut kept = http::Kept::default();
    let mut local_logged: Option<std::time::Instant> = None;
    loop {
        let late = tokio::time::Instant::now().saturating_duration_since(next);
        let mut outcome = Outcome::fail("not run");
        let mut latency = Duration::ZERO;
        for attempt in 0..=spec.retry {
            if attempt > 0 {
                tokio::time::sleep(spec.delay_before_retry).await;
            }
            let started = tokio::time::Instant::now();
            let attempt = probe_in(spec, env.as_ref(), half_open.as_deref(), Some(&mut kept));
            outcome = match tokio::time::timeout(spec.timeout, attempt).await {
                Ok(o) => o,
                Err(_) => Outcome::fail(format!("timed out after {:?}", spec.timeout)),
            };
            latency = started.elapsed();
            if outcome.ok {
                break;
            }
        }
        if !outcome.ok && out_of_descriptors() {
            // Our failure, not the server's: the round is not counted
            // (the server keeps its verdict), and said once per 10 s.
            if local_logged
                .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(10))
            {
                warn!(target_addr = %spec.target, check, error = ?outcome.error, "health check could not run: this process is out of file descriptors (the round does not count against the server)");
                local_logged = Some(std::time::Instant::now());
            }
            if let Ok(mut b) = board.lock()
                && let Some(p) = b.get_mut(&key)
            {
                p.last_error = Some(format!(
                    "not counted (out of file descriptors here): {}",
                    outcome.error.as_deref().unwrap_or("")
                ));
            }
        } else {
            let weight_changed = outcome.weight != weight;
            weight = outcome.weight;
            let changed = verdict.record(outcome.ok, spec.rise, spec.fall);
            let healthy = verdict.healthy;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .ok();
            // Updated in place: no allocation per round with thousands of
            // probes sharing the lock. (The entry exists until the probe is
            // stopped.)
            if let Ok(mut b) = board.lock()
                && let Some(p) = b.get_mut(&key)
            {
                p.healthy = healthy;
                p.weight = outcome.weight;
                p.last_check = now;
                p.last_error.clone_from(&outcome.error);
                p.latency = Some(latency.as_secs_f64());
                p.rounds += 1;
                if late > late_limit {
                    p.late_rounds += 1;
                }
                p.max_late = p.max_late.max(late.as_secs_f64());
            }
            if changed {
                if healthy {
                    info!(target_addr = %spec.target, check, "real server healthy");
                } else {
                    warn!(target_addr = %spec.target, check, error = ?outcome.error, "real server failed its check");
                }
            }
            // Changes only (health, or a misc_dynamic weight): the daemon
            // re-plans on each.
            if changed || weight_changed {
                let _ = tx
                    .send(Change {
                        key: key.clone(),
                        healthy,
                    })
                    .await;
            }
        }
        next += spec.delay_loop;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Whether this process cannot open a socket now (out of descriptors or
/// memory): a failed probe then says nothing of the server.
fn out_of_descriptors() -> bool {
    match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) {
        Ok(_) => false,
        Err(e) => crate::manage::limits::is_exhaustion(&e),
    }
}

/// One attempt (the caller bounds it with the timeout; `tcp_check`
/// connects).
pub async fn probe(spec: &CheckSpec) -> Outcome {
    probe_in(spec, None, None, None).await
}

/// One attempt, with what `dr_check` needs, the half-open prober
/// `tcp_check` uses (it connects without one) and the connection an HTTP
/// check with `reuse_connection` keeps between rounds (a new one per
/// attempt without it).
pub async fn probe_in(
    spec: &CheckSpec,
    env: Option<&PathEnv>,
    half_open_prober: Option<&halfopen::HalfOpen>,
    kept: Option<&mut http::Kept>,
) -> Outcome {
    match &spec.kind {
        Kind::Tcp { half_open } => {
            if *half_open
                && let Some(prober) = half_open_prober
                && let Some(r) = prober.check(spec.target, spec.bindto, spec.timeout).await
            {
                return match r {
                    Ok(()) => Outcome::ok(),
                    Err(e) => Outcome::fail(e),
                };
            }
            match tcp::connect(spec).await {
                Ok(_) => Outcome::ok(),
                Err(e) => Outcome::fail(e),
            }
        }
        Kind::Http {
            urls,
            host,
            tls,
            reuse,
        } => {
            let mut kept = kept.filter(|_| *reuse);
            for u in urls {
                let kept = kept.as_deref_mut();
                if let Err(e) = http::http_once(spec, u, host.as_deref(), tls.as_ref(), kept).await
                {
                    return Outcome::fail(format!("{}: {e}", u.path));
                }
            }
            Outcome::ok()
        }
        Kind::Misc { argv, dynamic } => script::misc(argv, *dynamic, spec.timeout).await,
        Kind::Udp {
            payload,
            require_reply,
        } => udp::udp(spec, payload, *require_reply).await,
        Kind::Dns { qtype, name } => dns::dns(spec, *qtype, name).await,
        Kind::DrPath { vip, arp, tunnel } => drpath::dr_path(spec, env, *vip, *arp, *tunnel).await,
        Kind::Ping => {
            // A sequence number of its own per attempt: replies to other
            // probes (every raw ICMP socket sees them all) are told apart.
            let seq: u16 = rand::rng().random();
            let (target, wait) = (spec.target.ip(), spec.timeout.mul_f64(0.9));
            match tokio::task::spawn_blocking(move || ping::ping(target, seq, wait)).await {
                Ok(true) => Outcome::ok(),
                Ok(false) => Outcome::fail(format!("no echo reply from {target}")),
                Err(e) => Outcome::fail(format!("probe task: {e}")),
            }
        }
        Kind::Smtp { helo } => tcp::smtp(spec, helo).await,
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, path::PathBuf};

    use regex::Regex;

    use super::*;
    use crate::config::load_ca_file;
    use script::misc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;

    fn spec(kind: Kind, target: SocketAddr) -> CheckSpec {
        CheckSpec {
            kind,
            target,
            bindto: None,
            timeout: Duration::from_secs(2),
            retry: 0,
            delay_before_retry: Duration::ZERO,
            delay_loop: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            warmup: Duration::ZERO,
            alpha: false,
        }
    }

    #[tokio::test]
    async fn tcp_and_http_against_a_real_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("GET /fail") {
                    "HTTP/1.0 500 Oops\r\n\r\nbroken".to_string()
                } else {
                    "HTTP/1.0 200 OK\r\n\r\nhello world".to_string()
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        assert!(probe(&spec(Kind::Tcp { half_open: false }, addr)).await.ok);
        let url = |path: &str, digest: Option<&str>, regex: Option<&str>| UrlSpec {
            path: path.into(),
            ranges: vec![(200, 299)],
            digest: digest.map(String::from),
            regex: regex.map(|r| Regex::new(r).expect("regex")),
        };
        let http = |u: UrlSpec| {
            spec(
                Kind::Http {
                    urls: vec![u],
                    host: None,
                    tls: None,
                    reuse: false,
                },
                addr,
            )
        };
        assert!(probe(&http(url("/", None, None))).await.ok);
        let o = probe(&http(url("/fail", None, None))).await;
        assert!(
            !o.ok && o.error.as_deref().is_some_and(|e| e.contains("status 500")),
            "{o:?}"
        );
        // md5("hello world")
        let md5 = "5eb63bbbe01eeed093cb22bb8f5acdc3";
        assert!(probe(&http(url("/", Some(md5), None))).await.ok);
        assert!(!probe(&http(url("/", Some("00"), None))).await.ok);
        assert!(probe(&http(url("/", None, Some("wor.d")))).await.ok);
        assert!(!probe(&http(url("/", None, Some("^nope")))).await.ok);
        // A closed port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(
            !probe(&spec(Kind::Tcp { half_open: false }, closed))
                .await
                .ok
        );
    }

    /// A real TLS server (rustls) with a fresh self-signed certificate for
    /// `localhost` and 127.0.0.1; answers 500 on /fail; records the SNI.
    async fn tls_server() -> (SocketAddr, String, Arc<Mutex<Vec<Option<String>>>>) {
        use tokio_rustls::rustls::{ServerConfig, pki_types::PrivateKeyDer};
        let key = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    if let Ok(mut n) = seen.lock() {
                        n.push(s.get_ref().1.server_name().map(str::to_string));
                    }
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let resp = if buf[..n].starts_with(b"GET /fail") {
                        "HTTP/1.0 500 Oops\r\n\r\nbroken"
                    } else {
                        "HTTP/1.0 200 OK\r\n\r\nsecure hello"
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                    // Some servers close without close_notify: this one
                    // does, half the time.
                    if rand::random::<bool>() {
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        (addr, key.cert.pem(), names)
    }

    /// `reuse_connection`: rounds share a connection while the server keeps
    /// it; one the server closed (here after every third response) is
    /// replaced within the attempt, which still passes; a failing status
    /// on a kept connection still fails.
    #[tokio::test]
    async fn http_checks_reuse_the_connection_while_the_server_keeps_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(Mutex::new("200 OK"));
        let (a, st) = (accepted.clone(), status.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    for _ in 0..3 {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let line = *st.lock().expect("status");
                        let resp = format!(
                            "HTTP/1.1 {line}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                });
            }
        });
        let check = spec(
            Kind::Http {
                urls: vec![UrlSpec {
                    path: "/".into(),
                    ranges: vec![(200, 299)],
                    digest: None,
                    regex: Some(Regex::new("^hello$").expect("regex")),
                }],
                host: None,
                tls: None,
                reuse: true,
            },
            addr,
        );
        let mut kept = http::Kept::default();
        for round in 0..7 {
            let o = probe_in(&check, None, None, Some(&mut kept)).await;
            assert!(o.ok, "round {round}: {o:?}");
            // A moment for the server to close after its third answer.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "7 rounds, 3 per connection"
        );
        *status.lock().expect("status") = "503 Busy";
        let o = probe_in(&check, None, None, Some(&mut kept)).await;
        assert!(
            !o.ok && o.error.as_deref().is_some_and(|e| e.contains("status 503")),
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn ssl_get_against_a_real_tls_server() {
        let (addr, pem, names) = tls_server().await;
        let ssl = |path: &str, sni: Option<&str>, verify: bool, ca: Option<PathBuf>| {
            spec(
                Kind::Http {
                    urls: vec![UrlSpec {
                        path: path.into(),
                        ranges: vec![(200, 299)],
                        digest: None,
                        regex: Some(Regex::new("secure").expect("regex")),
                    }],
                    host: sni.map(String::from),
                    tls: Some(TlsSpec {
                        sni: sni.map(String::from),
                        verify,
                        ca_file: ca,
                    }),
                    reuse: false,
                },
                addr,
            )
        };
        // keepalived's default: any certificate.
        let o = probe(&ssl("/", None, false, None)).await;
        assert!(o.ok, "{o:?}");
        let o = probe(&ssl("/fail", None, false, None)).await;
        assert!(
            !o.ok && o.error.as_deref().is_some_and(|e| e.contains("status 500")),
            "{o:?}"
        );
        // SNI is the virtual host.
        assert!(probe(&ssl("/", Some("localhost"), false, None)).await.ok);
        let seen = names.lock().expect("names").clone();
        assert!(
            seen.contains(&None) && seen.contains(&Some("localhost".into())),
            "{seen:?}"
        );
        // Verified: a self-signed certificate is refused by the system
        // store, accepted with it as the CA file, and the name must match.
        let o = probe(&ssl("/", Some("localhost"), true, None)).await;
        assert!(
            !o.ok
                && o.error
                    .as_deref()
                    .is_some_and(|e| e.contains("TLS handshake")),
            "{o:?}"
        );
        let dir = std::env::temp_dir().join(format!("director-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &pem).expect("write");
        assert!(
            probe(&ssl("/", Some("localhost"), true, Some(ca.clone())))
                .await
                .ok
        );
        assert!(
            probe(&ssl("/", None, true, Some(ca.clone()))).await.ok,
            "IP SAN"
        );
        assert!(
            !probe(&ssl("/", Some("other.example"), true, Some(ca.clone())))
                .await
                .ok
        );
        assert!(load_ca_file(&ca).is_ok());
        std::fs::write(&ca, "not a pem").expect("write");
        assert!(load_ca_file(&ca).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        // Plain HTTP to a TLS port fails cleanly.
        let plain = spec(
            Kind::Http {
                urls: vec![UrlSpec {
                    path: "/".into(),
                    ranges: vec![(200, 299)],
                    digest: None,
                    regex: None,
                }],
                host: None,
                tls: None,
                reuse: false,
            },
            addr,
        );
        assert!(!probe(&plain).await.ok);
    }

    #[test]
    fn rise_and_fall_count_rounds_in_a_row() {
        let mut v = Verdict::new(true);
        let rounds = [
            true, false, true, false, false, true, true, false, true, true, true,
        ];
        let changes: Vec<usize> = rounds
            .iter()
            .enumerate()
            .filter_map(|(i, ok)| v.record(*ok, 3, 2).then_some(i))
            .collect();
        assert_eq!(changes, vec![4, 10]);
        // keepalived's default (fall 1): one bad round is enough.
        let mut v = Verdict::new(true);
        assert!(v.record(false, 1, 1) && !v.healthy);
        assert!(v.record(true, 1, 1) && v.healthy);
    }

    /// A flapping server (a real script whose answer follows a pattern,
    /// one character per round) through the running probe task.
    #[tokio::test]
    async fn flapping_server_with_rise_and_fall() {
        let dir = std::env::temp_dir().join(format!("director-flap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let counter = dir.join("n");
        std::fs::write(&counter, "0").expect("write");
        // Round i exits with pattern[i] (past the end: 0).
        let pattern = "0010110010001";
        let script = format!(
            "n=$(cat {c}); echo $((n+1)) > {c}; p={pattern}; exit ${{p:$n:1}}",
            c = counter.display()
        );
        let mut s = spec(
            Kind::Misc {
                argv: vec!["/bin/bash".into(), "-c".into(), script],
                dynamic: false,
            },
            "127.0.0.1:1".parse().expect("addr"),
        );
        s.delay_loop = Duration::from_millis(150);
        s.rise = 3;
        s.fall = 2;
        let (tx, mut rx) = mpsc::channel(16);
        let mut checks = Checks::new(tx);
        checks.update(&HashSet::from([ProbeKey::new(s)]));
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a change within 10 s")
                .expect("change");
            let round: u32 = std::fs::read_to_string(&counter)
                .expect("read")
                .trim()
                .parse()
                .expect("number");
            seen.push((c.healthy, round));
        }
        // Down after the second failure in a row (round 6), back after the
        // third success in a row (round 12); single blips change nothing.
        assert_eq!(seen, vec![(false, 6), (true, 12)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn misc_check_exit_codes_timeouts_and_dynamic_weights() {
        let t = Duration::from_secs(2);
        let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        assert!(misc(&sh("exit 0"), false, t).await.ok);
        assert!(!misc(&sh("exit 1"), false, t).await.ok);
        assert_eq!(misc(&sh("exit 7"), true, t).await.weight, Some(5));
        assert!(!misc(&sh("exit 7"), false, t).await.ok);
        // A hung script is killed at the timeout.
        let started = std::time::Instant::now();
        let o = misc(&sh("sleep 30"), false, Duration::from_millis(300)).await;
        assert!(!o.ok && started.elapsed() < Duration::from_secs(5), "{o:?}");
        // Huge output does not block or blow up.
        assert!(
            misc(
                &sh("head -c 20000000 /dev/zero; exit 0"),
                false,
                Duration::from_secs(10)
            )
            .await
            .ok
        );
        assert!(!misc(&["/nonexistent/check".to_string()], false, t).await.ok);
    }

    #[tokio::test]
    async fn udp_check_sees_port_unreachable_and_replies() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        let udp = |require_reply, target| {
            spec(
                Kind::Udp {
                    payload: b"ping".to_vec(),
                    require_reply,
                },
                target,
            )
        };
        assert!(probe(&udp(true, addr)).await.ok);
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr")
        };
        assert!(
            !probe(&udp(false, closed)).await.ok,
            "ICMP port unreachable must fail"
        );
    }
}
