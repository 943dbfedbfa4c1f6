//! `http_get` and `ssl_get`: one GET per URL, the response read to its
//! end (bounded), its head parsed by `httparse`, status, digest and regex
//! checked. With `reuse_connection`, the request is HTTP/1.1 and the
//! connection (TLS session included) is kept for the next round while the
//! server keeps it open: the response is then read by its framing
//! (`Content-Length`, chunked), and a kept connection the server closed
//! meanwhile is replaced once, within the attempt, by a new one.

use md5::{Digest as _, Md5};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::rustls::pki_types::ServerName;

use super::{CheckSpec, TlsSpec, UrlSpec, tcp::connect, tls::tls_config};

/// Longest HTTP response read (headers and body).
const MAX_HTTP: usize = 1 << 20;

/// Most header lines a response may have.
const MAX_HEADERS: usize = 64;

/// A connection to a real server, plain or TLS.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The connection a probe keeps between rounds (`reuse_connection`).
#[derive(Default)]
pub struct Kept(Option<Box<dyn Io>>);

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Kept(open)"
        } else {
            "Kept(none)"
        })
    }
}

/// A new connection (TLS handshake included).
async fn open(spec: &CheckSpec, tls: Option<&TlsSpec>) -> Result<Box<dyn Io>, String> {
    let s = connect(spec).await?;
    let Some(t) = tls else {
        return Ok(Box::new(s));
    };
    let config = tls_config(t)?;
    let name = match &t.sni {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| format!("server name {n}: {e}"))?,
        // No name: no SNI; a verified certificate must then name the
        // address.
        None => ServerName::IpAddress(spec.target.ip().into()),
    };
    let s = tokio_rustls::TlsConnector::from(config)
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Box::new(s))
}

pub(super) async fn http_once(
    spec: &CheckSpec,
    u: &UrlSpec,
    host: Option<&str>,
    tls: Option<&TlsSpec>,
    kept: Option<&mut Kept>,
) -> Result<(), String> {
    let host = host
        .map(str::to_string)
        .unwrap_or_else(|| spec.target.to_string());
    // The response as read (a connection per check): its body is borrowed.
    let raw;
    let (status, body): (u16, std::borrow::Cow<'_, [u8]>) = match kept {
        None => {
            let req = format!(
                "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: director-check\r\nConnection: close\r\n\r\n",
                u.path
            );
            raw = exchange(open(spec, tls).await?, req.as_bytes()).await?;
            let (status, body) = parse_http(&raw)?;
            (status, body.into())
        }
        Some(kept) => {
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: director-check\r\n\r\n",
                u.path
            );
            // Taken out for the exchange: a connection whose exchange did
            // not end cleanly (an error, the attempt's timeout) is dropped.
            let (mut conn, reused) = match kept.0.take() {
                Some(c) => (c, true),
                None => (open(spec, tls).await?, false),
            };
            let answer = match exchange_framed(&mut conn, req.as_bytes()).await {
                // The server closed the kept connection meanwhile (it had
                // sent nothing of this response): once more on a new one.
                Err(Framed::Closed(_)) if reused => {
                    conn = open(spec, tls).await?;
                    exchange_framed(&mut conn, req.as_bytes()).await
                }
                other => other,
            };
            let r = answer.map_err(|e| match e {
                Framed::Closed(e) | Framed::Broken(e) => e,
            })?;
            if r.keep {
                kept.0 = Some(conn);
            }
            (r.status, r.body.into())
        }
    };
    if !u.ranges.iter().any(|(a, b)| (*a..=*b).contains(&status)) {
        return Err(format!("status {status}"));
    }
    if let Some(want) = &u.digest {
        let got = hex(&Md5::digest(&body));
        if &got != want {
            return Err(format!("digest {got}, expected {want}"));
        }
    }
    if let Some(re) = &u.regex
        && !re.is_match(&String::from_utf8_lossy(&body))
    {
        return Err(format!("body does not match /{}/", re.as_str()));
    }
    Ok(())
}

/// A response read by its framing.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
    /// The server keeps the connection open for another request.
    keep: bool,
}

/// Why a framed exchange failed.
#[derive(Debug)]
enum Framed {
    /// The connection ended before any byte of the response (a kept
    /// connection the server had closed).
    Closed(String),
    /// Anything else.
    Broken(String),
}

/// Sends `request` on `conn` and reads one response by its framing.
async fn exchange_framed(conn: &mut Box<dyn Io>, request: &[u8]) -> Result<Response, Framed> {
    if let Err(e) = conn.write_all(request).await {
        return Err(Framed::Closed(format!("write: {e}")));
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match conn.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(Framed::Closed("connection closed".into())),
            Ok(0) => return frame(&buf, true).map_err(Framed::Broken),
            Ok(n) => n,
            Err(e) if buf.is_empty() => return Err(Framed::Closed(format!("read: {e}"))),
            Err(e) => return Err(Framed::Broken(format!("read: {e}"))),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HTTP {
            return Err(Framed::Broken(format!("response over {MAX_HTTP} bytes")));
        }
        match frame(&buf, false) {
            Ok(r) => return Ok(r),
            Err(e) if e.is_empty() => continue,
            Err(e) => return Err(Framed::Broken(e)),
        }
    }
}

/// One response out of `raw` (everything read so far; `ended`: the server
/// closed the connection after it). `Err("")`: incomplete, read more.
fn frame(raw: &[u8], ended: bool) -> Result<Response, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let end = match response.parse(raw) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) if ended => return Err("no end of headers".into()),
        Ok(httparse::Status::Partial) => return Err(String::new()),
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let status = response.code.ok_or("no HTTP status")?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let connection = header("connection").unwrap_or_default();
    let http11 = response.version == Some(1);
    let mut keep = if http11 {
        !connection.split(',').any(|t| t.trim() == "close")
    } else {
        connection.split(',').any(|t| t.trim() == "keep-alive")
    };
    let rest = &raw[end..];
    // The body, and how much of `rest` it took.
    let (body, used) = if status / 100 == 1 || status == 204 || status == 304 {
        // No body (RFC 9112 section 6.3); an interim 1xx is not what a GET
        // check waits for: the connection is not kept.
        keep &= status / 100 != 1;
        (Vec::new(), 0)
    } else if header("transfer-encoding").is_some_and(|t| t.ends_with("chunked")) {
        match dechunk(rest)? {
            Some(body) => body,
            None if ended => return Err("chunked body cut short".into()),
            None => return Err(String::new()),
        }
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if len > MAX_HTTP {
            return Err(format!("Content-Length {len} over {MAX_HTTP}"));
        }
        match rest.get(..len) {
            Some(b) => (b.to_vec(), len),
            None if ended => return Err("body shorter than its Content-Length".into()),
            None => return Err(String::new()),
        }
    } else {
        // Delimited by the end of the connection: read to it, not kept.
        if !ended {
            return Err(String::new());
        }
        keep = false;
        (rest.to_vec(), rest.len())
    };
    Ok(Response {
        status,
        body,
        // Bytes past the response (nothing was asked for them) would be
        // read as the next one's: such a connection is not kept.
        keep: keep && !ended && used == rest.len(),
    })
}

/// A chunked body (RFC 9112 section 7.1) and the bytes it took, `None`
/// while incomplete.
fn dechunk(all: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut raw = all;
    let mut body = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&raw[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                if eol == 0 {
                    return Ok(Some((body, all.len() - raw.len() + 2)));
                }
                raw = &raw[eol + 2..];
            }
        }
        if size > MAX_HTTP || body.len() + size > MAX_HTTP {
            return Err(format!("chunked body over {MAX_HTTP} bytes"));
        }
        let Some(data) = raw.get(..size + 2) else {
            return Ok(None);
        };
        if &data[size..] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&data[..size]);
        raw = &raw[size + 2..];
    }
}

/// Sends `request`, reads the response to its end (bounded).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    match (&mut s).take(MAX_HTTP as u64).read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        // Many TLS servers close without close_notify once they have
        // answered: what was read is the whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Status and body of a raw HTTP/1.x response (its head parsed by
/// `httparse`: a malformed or incomplete head is an error, never guessed).
pub fn parse_http(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(raw) {
        Ok(httparse::Status::Complete(end)) => {
            let status = response.code.ok_or("no HTTP status")?;
            Ok((status, &raw[end..]))
        }
        Ok(httparse::Status::Partial) => Err("no end of headers".into()),
        Err(e) => Err(format!("bad HTTP response: {e}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_responses() {
        let (s, b) = parse_http(b"HTTP/1.1 503 Unavailable\r\nX: y\r\n\r\nsorry").expect("ok");
        assert_eq!((s, b), (503, &b"sorry"[..]));
        assert!(parse_http(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_http(b"garbage\r\n\r\n").is_err());
        assert!(parse_http(b"").is_err());
        assert!(parse_http(b"HTTP/1.1 2000 Huge\r\n\r\n").is_err());
        assert!(parse_http(b"HTTP/1.0 200 OK\r\nBad header\r\n\r\n").is_err());
    }

    #[test]
    fn frames_responses_for_keep_alive() {
        let r = |raw: &[u8], ended| frame(raw, ended);
        let ok = r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).expect("framed");
        assert_eq!(
            (ok.status, &ok.body[..], ok.keep),
            (200, &b"hello"[..], true)
        );
        assert_eq!(
            r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", false),
            Err(String::new())
        );
        assert!(r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true).is_err());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n";
        let c = r(chunked, false).expect("chunked");
        assert_eq!((&c.body[..], c.keep), (&b"hello world"[..], true));
        for cut in 40..chunked.len() {
            assert_eq!(
                r(&chunked[..cut], false),
                Err(String::new()),
                "cut at {cut}"
            );
        }
        assert!(
            r(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false
            )
            .is_err_and(|e| !e.is_empty())
        );
        let close = r(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .expect("close");
        assert!(!close.keep);
        let old = r(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).expect("1.0");
        assert!(!old.keep, "HTTP/1.0 without keep-alive closes");
        let old_keep = r(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .expect("1.0");
        assert!(old_keep.keep);
        // Delimited by the connection's end: complete only then, not kept.
        assert_eq!(r(b"HTTP/1.1 200 OK\r\n\r\nbody", false), Err(String::new()));
        let eof = r(b"HTTP/1.1 200 OK\r\n\r\nbody", true).expect("eof");
        assert_eq!((&eof.body[..], eof.keep), (&b"body"[..], false));
        let none = r(b"HTTP/1.1 204 No Content\r\n\r\n", false).expect("204");
        assert!(none.body.is_empty() && none.keep);
        let extra = r(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200",
            false,
        )
        .expect("extra");
        assert!(!extra.keep, "bytes past the response");
        assert!(
            r(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err_and(|e| !e.is_empty())
        );
        assert!(
            r(
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                false
            )
            .is_err_and(|e| !e.is_empty())
        );
    }
}
