//! The HTTP server of `/metrics` and `/status`, bounded whatever its
//! clients do.
//!
//! - At most `Budget::http` connections, `Budget::http_per_client` from one
//!   address ([`crate::manage::limits::Budget`]: a fixed share of the descriptor
//!   limit, so the daemon's own work always has the rest).
//! - At the limit, a new connection takes the place of the oldest one that
//!   is not being answered (a connection that never sent a request first,
//!   then idle keep-alive ones): idle and slow clients make room for a
//!   scraper that asks and reads at once; when every connection is being
//!   answered, the new one is closed at once (shed).
//! - A request head must arrive within [`HEADER_TIMEOUT`] (a byte-a-second
//!   client is cut), an idle keep-alive connection is closed after it, and
//!   no connection lives longer than [`CONNECTION_LIFETIME`].
//! - Out of descriptors, the accept loop backs off instead of spinning;
//!   every kind of refusal is logged at most once per [`LOG_EVERY`].
//! - Requests share one status snapshot per [`SNAPSHOT_FRESH`]: a scrape
//!   storm costs the daemon's loop one snapshot, not one per request.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{MetricsError, OPENMETRICS, TEXT_FORMAT, render, text_format, wants_openmetrics};
use crate::{
    manage::control::{Pending, Request, Response},
    manage::limits::Budget,
    manage::status::Status,
};

/// How long one status snapshot serves HTTP requests.
const SNAPSHOT_FRESH: Duration = Duration::from_millis(250);
/// How long a client may take to send a request's head, and how long an
/// idle keep-alive connection is kept (hyper's header-read timer runs from
/// the wait for each request's first byte).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of a connection, however busy: a client that does not
/// read its response is cut at this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Refusals and accept errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One status snapshot and the documents rendered from it (each rendered
/// once, at the first request that wants it).
struct Snapshot {
    taken: Instant,
    status: Status,
    metrics: OnceLock<String>,
    /// [`Snapshot::metrics`] in Prometheus's text format 0.0.4.
    text: OnceLock<String>,
    json: OnceLock<String>,
}

/// The snapshot the HTTP server shares: requests arriving together wait
/// for one snapshot; later ones within [`SNAPSHOT_FRESH`] reuse it.
#[derive(Clone)]
struct Snapshots {
    tx: mpsc::Sender<Pending>,
    last: Arc<tokio::sync::Mutex<Option<Arc<Snapshot>>>>,
}

impl Snapshots {
    async fn get(&self) -> Option<Arc<Snapshot>> {
        let mut last = self.last.lock().await;
        if let Some(s) = last.as_ref()
            && s.taken.elapsed() < SNAPSHOT_FRESH
        {
            return Some(s.clone());
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send((Request::Status, reply)).await.ok()?;
        let status = match answer.await.ok()? {
            Response::Status(s) => *s,
            _ => return None,
        };
        let snap = Arc::new(Snapshot {
            taken: Instant::now(),
            status,
            metrics: OnceLock::new(),
            text: OnceLock::new(),
            json: OnceLock::new(),
        });
        *last = Some(snap.clone());
        Some(snap)
    }
}

/// One open connection, as admission sees it.
struct Entry {
    peer: IpAddr,
    opened: Instant,
    /// A request is being answered (set from its head to the end of its
    /// body): never evicted then.
    busy: Arc<AtomicBool>,
    /// It has been answered at least once (evicted after those that never
    /// asked anything).
    served: Arc<AtomicBool>,
    /// Tells the connection's task to close it.
    evict: Option<oneshot::Sender<()>>,
}

/// The open connections and the limits they are held to (pure
/// bookkeeping: no I/O; the caller closes what it is told to).
struct Admission {
    limit: usize,
    per_client: usize,
    conns: HashMap<u64, Entry>,
    by_client: HashMap<IpAddr, usize>,
    next_id: u64,
    /// Since the last log line: connections closed at once, and
    /// connections closed to make room.
    shed: u64,
    evicted: u64,
    logged: Option<Instant>,
}

/// What a connection gets when admitted.
struct Ticket {
    id: u64,
    busy: Arc<AtomicBool>,
    served: Arc<AtomicBool>,
    evicted: oneshot::Receiver<()>,
}

impl Admission {
    fn new(budget: &Budget) -> Admission {
        Admission {
            limit: budget.http.max(1),
            per_client: budget.http_per_client.max(1),
            conns: HashMap::new(),
            by_client: HashMap::new(),
            next_id: 0,
            shed: 0,
            evicted: 0,
            logged: None,
        }
    }

    /// The connection to close to make room: the oldest of those not being
    /// answered (from `peer` only, when given), never-served ones first.
    fn victim(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| peer.is_none_or(|p| e.peer == p))
            .filter(|(_, e)| !e.busy.load(Ordering::Relaxed))
            .min_by_key(|(_, e)| (e.served.load(Ordering::Relaxed), e.opened))
            .map(|(id, _)| *id)
    }

    /// Admits a connection from `peer`, closing another to make room if
    /// needed; `None`: it must be closed at once.
    fn admit(&mut self, peer: IpAddr, now: Instant) -> Option<Ticket> {
        let mine = self.by_client.get(&peer).copied().unwrap_or(0);
        let room = if mine >= self.per_client {
            self.victim(Some(peer)).map(Some)
        } else if self.conns.len() >= self.limit {
            self.victim(None).map(Some)
        } else {
            Some(None)
        };
        let Some(victim) = room else {
            self.shed += 1;
            self.log(peer, now);
            return None;
        };
        if let Some(v) = victim {
            self.release(v);
            self.evicted += 1;
            self.log(peer, now);
        }
        let (tx, rx) = oneshot::channel();
        let (busy, served) = (Arc::default(), Arc::<AtomicBool>::default());
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            Entry {
                peer,
                opened: now,
                busy: Arc::clone(&busy),
                served: Arc::clone(&served),
                evict: Some(tx),
            },
        );
        *self.by_client.entry(peer).or_default() += 1;
        Some(Ticket {
            id,
            busy,
            served,
            evicted: rx,
        })
    }

    /// A connection ended (or is closed to make room: its task is told).
    fn release(&mut self, id: u64) {
        let Some(mut e) = self.conns.remove(&id) else {
            return;
        };
        if let Some(tx) = e.evict.take() {
            let _ = tx.send(());
        }
        if let Some(n) = self.by_client.get_mut(&e.peer) {
            *n -= 1;
            if *n == 0 {
                self.by_client.remove(&e.peer);
            }
        }
    }

    fn log(&mut self, peer: IpAddr, now: Instant) {
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            warn!(
                client = %peer,
                shed = self.shed,
                evicted = self.evicted,
                open = self.conns.len(),
                limit = self.limit,
                per_client_limit = self.per_client,
                "metrics server at its connection limit: idle connections closed for new ones, new ones closed when none is idle (counts since the last such line)"
            );
            self.shed = 0;
            self.evicted = 0;
            self.logged = Some(now);
        }
    }
}

/// Releases a connection's place when its task ends.
struct Held {
    admission: Arc<Mutex<Admission>>,
    id: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut a) = self.admission.lock() {
            a.release(self.id);
        }
    }
}

/// A response body that marks its connection busy until it has been
/// written out (dropped by hyper at its end).
struct Tracked {
    inner: axum::body::Body,
    busy: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Relaxed);
    }
}

fn router(snapshots: Snapshots) -> Router {
    let for_metrics = snapshots.clone();
    let unavailable =
        || (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let snapshots = for_metrics.clone();
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                async move {
                    let Some(s) = snapshots.get().await else {
                        return unavailable();
                    };
                    let openmetrics = s.metrics.get_or_init(|| render(&s.status));
                    if wants_openmetrics(accept.as_deref()) {
                        ([(header::CONTENT_TYPE, OPENMETRICS)], openmetrics.clone()).into_response()
                    } else {
                        let text = s.text.get_or_init(|| text_format(openmetrics));
                        ([(header::CONTENT_TYPE, TEXT_FORMAT)], text.clone()).into_response()
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let snapshots = snapshots.clone();
                async move {
                    match snapshots.get().await {
                        Some(s) => (
                            [(header::CONTENT_TYPE, "application/json")],
                            s.json
                                .get_or_init(|| {
                                    serde_json::to_string(&s.status).unwrap_or_default()
                                })
                                .clone(),
                        )
                            .into_response(),
                        None => unavailable(),
                    }
                }
            }),
        )
}

/// Serves `/metrics` and `/status` on `addr` until the task is aborted,
/// within `budget` (see the module's documentation).
pub async fn serve(
    addr: SocketAddr,
    tx: mpsc::Sender<Pending>,
    budget: Budget,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    let app = router(Snapshots {
        tx,
        last: Arc::default(),
    });
    info!(
        %addr,
        max_connections = budget.http,
        max_connections_per_client = budget.http_per_client,
        "metrics and status served over HTTP"
    );
    Ok(tokio::spawn(accept_loop(listener, app, budget)))
}

async fn accept_loop(listener: tokio::net::TcpListener, app: Router, budget: Budget) {
    let admission = Arc::new(Mutex::new(Admission::new(&budget)));
    let mut error_logged: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors (or memory): wait for some to be
                // freed rather than spin on a listener that stays ready.
                if error_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    warn!(error = %e, "metrics server cannot accept a connection: backing off");
                    error_logged = Some(Instant::now());
                }
                let pause = if crate::manage::limits::is_exhaustion(&e) {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(5)
                };
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let peer = peer.ip().to_canonical();
        let ticket = admission
            .lock()
            .ok()
            .and_then(|mut a| a.admit(peer, Instant::now()));
        let Some(ticket) = ticket else {
            // Reset at once (a zero linger: no FIN_WAIT left behind, and
            // the close never blocks): the client learns it now.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        };
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            ticket,
            admission.clone(),
        ));
    }
}

/// Serves one connection until it ends, is evicted, or has lived
/// [`CONNECTION_LIFETIME`].
async fn connection(
    stream: tokio::net::TcpStream,
    peer: IpAddr,
    app: Router,
    ticket: Ticket,
    admission: Arc<Mutex<Admission>>,
) {
    let _held = Held {
        admission,
        id: ticket.id,
    };
    let _ = stream.set_nodelay(true);
    let (busy, served) = (ticket.busy, ticket.served);
    let service = hyper::service::service_fn(move |req| {
        busy.store(true, Ordering::Relaxed);
        served.store(true, Ordering::Relaxed);
        let mut app = app.clone();
        let busy = busy.clone();
        async move {
            let response = tower_service::Service::call(&mut app, req).await?;
            Ok::<_, std::convert::Infallible>(
                response.map(|inner| axum::body::Body::new(Tracked { inner, busy })),
            )
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(client = %peer, error = %e, "metrics connection ended");
            }
        }
        _ = ticket.evicted => {
            // Closed to make room (it was idle): dropped now.
        }
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            // Ends after the request under way, if any; cut if the client
            // does not read it either.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(http: usize, per_client: usize) -> Budget {
        Budget {
            http,
            http_per_client: per_client,
            control: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_oldest_idle_connection() {
        let mut a = Admission::new(&budget(3, 3));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut first = a.admit(ip(1), ms(0)).expect("room");
        let second = a.admit(ip(2), ms(1)).expect("room");
        let third = a.admit(ip(3), ms(2)).expect("room");
        // Full: the oldest idle one (the first) makes room.
        let fourth = a.admit(ip(4), ms(3)).expect("an idle one makes room");
        assert!(first.evicted.try_recv().is_ok(), "the oldest was told");
        assert_eq!(a.conns.len(), 3);
        // Connections being answered are never evicted; one that was
        // answered and is idle goes after those that never asked.
        second.busy.store(true, Ordering::Relaxed);
        third.served.store(true, Ordering::Relaxed);
        let mut fourth = fourth;
        a.admit(ip(5), ms(4)).expect("room");
        assert!(fourth.evicted.try_recv().is_ok(), "never served goes first");
        let mut third = third;
        a.admit(ip(6), ms(5)).expect("room");
        assert!(
            third.evicted.try_recv().is_err(),
            "a newer never-served one went"
        );
        // All busy: shed.
        for e in a.conns.values() {
            e.busy.store(true, Ordering::Relaxed);
        }
        assert!(a.admit(ip(7), ms(6)).is_none());
        assert_eq!(a.shed, 1);
    }

    #[test]
    fn one_client_makes_room_only_among_its_own() {
        let mut a = Admission::new(&budget(10, 2));
        let now = Instant::now();
        let mut other = a.admit(ip(9), now).expect("room");
        let mut mine: Vec<Ticket> = (0..2).map(|_| a.admit(ip(1), now).expect("room")).collect();
        // A third from the same client replaces its own oldest, not the
        // other client's.
        let _third = a
            .admit(ip(1), now + Duration::from_millis(1))
            .expect("room");
        assert!(other.evicted.try_recv().is_err());
        assert!(mine.iter_mut().any(|t| t.evicted.try_recv().is_ok()));
        assert_eq!(a.by_client.get(&ip(1)), Some(&2));
        // Released connections free their places.
        for t in &mine {
            a.release(t.id);
        }
        a.release(other.id);
        assert!(!a.by_client.contains_key(&ip(9)));
    }
}
