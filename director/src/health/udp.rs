//! `udp_check`: a datagram; a reply, or (unless one is required) no port
//! unreachable.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::UdpSocket;

use super::{CheckSpec, Outcome};

/// A UDP socket connected to the target (from `bindto` when set).
pub(super) async fn udp_socket(spec: &CheckSpec) -> Result<UdpSocket, String> {
    let local = spec.bindto.unwrap_or(if spec.target.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    });
    let s = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    s.connect(spec.target)
        .await
        .map_err(|e| format!("connect {}: {e}", spec.target))?;
    Ok(s)
}

pub(super) async fn udp(spec: &CheckSpec, payload: &[u8], require_reply: bool) -> Outcome {
    let s = match udp_socket(spec).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(e),
    };
    if let Err(e) = s.send(payload).await {
        return Outcome::fail(format!("send: {e}"));
    }
    let mut buf = [0u8; 2048];
    // Without a required reply, success is "no port unreachable came back"
    // within a short wait.
    let wait = if require_reply {
        spec.timeout
    } else {
        spec.timeout.min(Duration::from_millis(500))
    };
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(_)) => Outcome::ok(),
        Ok(Err(e)) => Outcome::fail(format!("{e}")),
        Err(_) if require_reply => Outcome::fail("no reply"),
        Err(_) => Outcome::ok(),
    }
}
