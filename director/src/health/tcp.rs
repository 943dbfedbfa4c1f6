//! `tcp_check` (a connection) and `smtp_check` (banner, HELO, QUIT).

use std::net::SocketAddr;

use tokio::{io::AsyncReadExt as _, net::TcpSocket};

use super::{CheckSpec, Outcome};

/// A TCP connection to the target (from `bindto` when set).
pub(super) async fn connect(spec: &CheckSpec) -> Result<tokio::net::TcpStream, String> {
    let socket = if spec.target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(b) = spec.bindto {
        socket
            .bind(SocketAddr::new(b, 0))
            .map_err(|e| format!("bind {b}: {e}"))?;
    }
    socket
        .connect(spec.target)
        .await
        .map_err(|e| format!("connect {}: {e}", spec.target))
}

/// One SMTP exchange: banner 220, HELO answered 250, QUIT.
pub(super) async fn smtp(spec: &CheckSpec, helo: &str) -> Outcome {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let stream = match connect(spec).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(e),
    };
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read.take(8192)).lines();
    // The last line of a reply: "NNN text" (continuation lines: "NNN-").
    async fn reply(
        lines: &mut tokio::io::Lines<
            tokio::io::BufReader<tokio::io::Take<tokio::net::tcp::OwnedReadHalf>>,
        >,
    ) -> Result<String, String> {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.len() >= 4 && l.as_bytes()[3] == b'-' => continue,
                Ok(Some(l)) => return Ok(l),
                Ok(None) => return Err("connection closed".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    match reply(&mut lines).await {
        Ok(l) if l.starts_with("220") => {}
        Ok(l) => return Outcome::fail(format!("banner: {l}")),
        Err(e) => return Outcome::fail(format!("banner: {e}")),
    }
    if let Err(e) = write.write_all(format!("HELO {helo}\r\n").as_bytes()).await {
        return Outcome::fail(format!("HELO: {e}"));
    }
    let verdict = match reply(&mut lines).await {
        Ok(l) if l.starts_with("250") => Outcome::ok(),
        Ok(l) => Outcome::fail(format!("HELO answered: {l}")),
        Err(e) => Outcome::fail(format!("HELO: {e}")),
    };
    let _ = write.write_all(b"QUIT\r\n").await;
    verdict
}
