//! A minimal, real HTTP/1.0 client for lab traffic (std sockets, so it runs
//! on a thread that entered a namespace).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
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
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
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
