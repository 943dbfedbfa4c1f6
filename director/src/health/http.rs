//! `http_get` and `ssl_get`: one GET per URL, the response read to its
//! end (bounded), its head parsed by `httparse`, status, digest and regex
//! checked.

use md5::{Digest as _, Md5};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::rustls::pki_types::ServerName;

use super::{CheckSpec, TlsSpec, UrlSpec, tcp::connect, tls::tls_config};

/// Longest HTTP response read (headers and body).
const MAX_HTTP: usize = 1 << 20;

/// Most header lines a response may have.
const MAX_HEADERS: usize = 64;

pub(super) async fn http_once(
    spec: &CheckSpec,
    u: &UrlSpec,
    host: Option<&str>,
    tls: Option<&TlsSpec>,
) -> Result<(), String> {
    let s = connect(spec).await?;
    let host = host
        .map(str::to_string)
        .unwrap_or_else(|| spec.target.to_string());
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: director-check\r\nConnection: close\r\n\r\n",
        u.path
    );
    let raw = match tls {
        None => exchange(s, req.as_bytes()).await?,
        Some(t) => {
            let config = tls_config(t)?;
            let name = match &t.sni {
                Some(n) => {
                    ServerName::try_from(n.clone()).map_err(|e| format!("server name {n}: {e}"))?
                }
                // No name: no SNI; a verified certificate must then name
                // the address.
                None => ServerName::IpAddress(spec.target.ip().into()),
            };
            let s = tokio_rustls::TlsConnector::from(config)
                .connect(name, s)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            exchange(s, req.as_bytes()).await?
        }
    };
    let (status, body) = parse_http(&raw)?;
    if !u.ranges.iter().any(|(a, b)| (*a..=*b).contains(&status)) {
        return Err(format!("status {status}"));
    }
    if let Some(want) = &u.digest {
        let got = hex(&Md5::digest(body));
        if &got != want {
            return Err(format!("digest {got}, expected {want}"));
        }
    }
    if let Some(re) = &u.regex
        && !re.is_match(&String::from_utf8_lossy(body))
    {
        return Err(format!("body does not match /{}/", re.as_str()));
    }
    Ok(())
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
}
