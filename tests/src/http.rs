//! A minimal, real HTTP/1.0 client for lab traffic (std sockets, so it runs
//! on a thread that entered a namespace).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` over a new TCP connection, within `timeout` for each step.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    request(stream, addr, path, timeout)
}

/// [`get`] from the local address `src` (one of the host's addresses).
pub fn get_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response> {
    get_from_endpoint(SocketAddr::new(src, 0), addr, path, timeout)
}

/// `GET path` from the local endpoint `src` (a chosen port: that flow's
/// 5-tuple).
pub fn get_from_endpoint(
    src: SocketAddr,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&src.into())?;
    s.connect_timeout(&addr.into(), timeout)
        .with_context(|| format!("connect {addr} from {src}"))?;
    request(s.into(), addr, path, timeout)
}

fn request(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: director-lab\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("read from {addr}"))?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("truncated HTTP response ({} bytes)", raw.len());
    };
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Outcome of many requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    /// Successful responses by body (the real server's name).
    pub by_body: BTreeMap<String, usize>,
    /// The first few errors, for diagnosis.
    pub errors: Vec<String>,
}

/// One HTTP/1.1 keep-alive connection: several requests on one TCP flow.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
            addr,
        })
    }

    /// The connection's local port (its flow's client port).
    pub fn local_port(&self) -> Result<u16> {
        Ok(self.reader.get_ref().local_addr()?.port())
    }

    /// `GET path` on this connection.
    pub fn get(&mut self, path: &str) -> Result<Response> {
        let addr = self.addr;
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: director-lab\r\n\r\n"
        )?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            bail!("connection closed");
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().context("content-length")?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).to_string(),
        })
    }
}

/// Sends requests back to back, each on a new connection, until `stop` is
/// set.
pub fn hammer_until(addr: SocketAddr, stop: Arc<AtomicBool>, timeout: Duration) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let one = hammer(addr, 1, timeout);
        tally.ok += one.ok;
        tally.failed += one.failed;
        for (k, v) in one.by_body {
            *tally.by_body.entry(k).or_default() += v;
        }
        if tally.errors.len() < 5 {
            tally.errors.extend(one.errors);
        }
        if one.failed > 0 {
            // Do not spin on an immediate refusal.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    tally
}

/// Runs `f` while a thread keeps requests flowing to `addr` from `node`'s
/// namespace; returns `f`'s result and the traffic's tally.
pub fn under_load<T>(
    ns: &crate::Netns,
    addr: SocketAddr,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Tally)> {
    under_load_within(ns, addr, Duration::from_secs(2), f)
}

/// [`under_load`] where each request must complete within `timeout`: under
/// a second, a SYN the network dropped (retransmitted after 1 s) fails.
pub fn under_load_within<T>(
    ns: &crate::Netns,
    addr: SocketAddr,
    timeout: Duration,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Tally)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let load = ns.spawn_thread(move || hammer_until(addr, flag, timeout));
    let started = Instant::now();
    // Let the load get going before acting.
    while started.elapsed() < Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = f();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let tally = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    Ok((result?, tally))
}

/// Sends `n` sequential requests, each on a new connection (so each is a
/// new flow with a new source port).
pub fn hammer(addr: SocketAddr, n: usize, timeout: Duration) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        match get(addr, "/", timeout) {
            Ok(r) if r.status == 200 => {
                tally.ok += 1;
                *tally.by_body.entry(r.body.trim().to_string()).or_default() += 1;
            }
            Ok(r) => {
                tally.failed += 1;
                if tally.errors.len() < 5 {
                    tally.errors.push(format!("HTTP {}", r.status));
                }
            }
            Err(e) => {
                tally.failed += 1;
                if tally.errors.len() < 5 {
                    tally.errors.push(format!("{e:#}"));
                }
            }
        }
    }
    tally
}

/// How a long download went.
#[derive(Debug, Clone, Copy)]
pub struct Download {
    pub took: Duration,
    /// The longest wait between two reads (the client-visible stall).
    pub max_stall: Duration,
}

/// Downloads `/big` (see `Lab::write_big_file`) from `addr`, checking
/// every byte against [`crate::lab::big_file_byte`] and the length.
pub fn download_big(addr: SocketAddr, size: usize) -> Result<Download> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(b"GET /big HTTP/1.0\r\nHost: lab\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? != 1 {
            bail!("closed in the headers");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("{}", String::from_utf8_lossy(&head));
    }
    let mut at = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    let mut max_stall = Duration::ZERO;
    loop {
        let n = s.read(&mut buf).context("reading the body")?;
        max_stall = max_stall.max(last.elapsed());
        last = Instant::now();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            if *b != crate::lab::big_file_byte(at + k) {
                bail!("byte {} is wrong", at + k);
            }
        }
        at += n;
    }
    if at != size {
        bail!("{at} of {size} bytes");
    }
    Ok(Download {
        took: started.elapsed(),
        max_stall,
    })
}

/// Long downloads of `/big` running in threads of a namespace.
pub struct Downloads(Vec<std::thread::JoinHandle<Result<Result<Download>>>>);

impl Downloads {
    /// Starts `n` downloads of `size` bytes from `addr`, from `ns`.
    pub fn start(ns: &crate::Netns, addr: SocketAddr, n: usize, size: usize) -> Downloads {
        Downloads(
            (0..n)
                .map(|_| ns.spawn_thread(move || download_big(addr, size)))
                .collect(),
        )
    }

    /// Waits for every download: each one's outcome, in order.
    pub fn outcomes(self) -> Vec<Result<Download>> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                d.join()
                    .map_err(|_| anyhow::anyhow!("download {i} panicked"))
                    .and_then(|r| r)
                    .and_then(|r| r)
            })
            .collect()
    }

    /// Waits for every download; fails on the first one that broke.
    pub fn all(self) -> Result<Vec<Download>> {
        self.outcomes()
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.with_context(|| format!("download {i} broke")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nrs1\n").expect("ok");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "rs1\n");
    }

    #[test]
    fn rejects_truncated() {
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"").is_err());
    }
}
