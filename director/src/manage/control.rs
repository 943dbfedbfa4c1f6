//! The control socket: a Unix stream socket in the state directory
//! (`director.sock`, mode 0600). One request per connection, one line of
//! JSON each way: `{"command":"status"}` answers the [`Status`] document.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::{config::Protocol, manage::status::Status};

/// File name of the socket in the state directory.
pub const SOCKET: &str = "director.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Re-read the config file and apply the difference.
    Reload,
    /// Change one real server at runtime, without editing the file.
    RealServer(RealServerChange),
    /// Withdraw every BGP route, wait `withdraw_wait`, then stop.
    Drain,
    /// Hand the VRRP state over and execute the binary again in place
    /// (a restart or binary upgrade that moves no VIP).
    Restart,
}

/// `director real-server ACTION ...`: the same fields on the command line
/// and on the control socket (JSON: `"action": "drain"`, `"protocol":
/// "tcp"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RealServerChange {
    /// What to do to the real server.
    #[arg(value_enum)]
    pub action: RealServerAction,
    /// The virtual server's address.
    #[arg(long)]
    pub vip: std::net::IpAddr,
    /// The virtual server's port.
    #[arg(long)]
    pub port: u16,
    /// The virtual server's protocol (tcp or udp).
    #[serde(default)]
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// The real server's address.
    #[arg(long)]
    pub address: std::net::IpAddr,
    /// For add and weight.
    #[arg(long)]
    pub weight: Option<u32>,
    /// Also write the change into the daemon's config file (comments and
    /// layout kept), so a reload or restart keeps it.
    #[serde(default)]
    #[arg(long)]
    pub persist: bool,
}

/// What `director real-server` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RealServerAction {
    /// Add it (with --weight, default 1).
    Add,
    /// Remove it.
    Remove,
    /// Set its weight (--weight).
    Weight,
    /// Weight 0, remembering the weight: no new flows, existing ones go on.
    Drain,
    /// Back to the weight it had before `drain`.
    Enable,
}

impl RealServerAction {
    /// The word on the command line and on the socket.
    pub fn as_str(self) -> &'static str {
        match self {
            RealServerAction::Add => "add",
            RealServerAction::Remove => "remove",
            RealServerAction::Weight => "weight",
            RealServerAction::Drain => "drain",
            RealServerAction::Enable => "enable",
        }
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("`{s}`: tcp or udp")),
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Status(Box<Status>),
    Error { error: String },
    Ok { ok: bool },
}

/// A request waiting for the event loop's answer.
pub type Pending = (Request, oneshot::Sender<Response>);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", connect_advice(path, error))]
    Connect {
        path: PathBuf,
        /// (Not a `source`: the advice says it all, once.)
        error: std::io::Error,
    },
    #[error("bad answer from the daemon: {0}")]
    Answer(String),
}

/// What failed reaching the daemon, and what to do, said once.
fn connect_advice(path: &Path, e: &std::io::Error) -> String {
    let dir = path.parent().unwrap_or(path).display();
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no director daemon runs with state directory {dir} (no control socket {}); start it (`systemctl start director`, or `director run --config FILE`), or name another daemon with --config or --state-dir",
            path.display()
        ),
        std::io::ErrorKind::ConnectionRefused => format!(
            "the director daemon of {dir} is not running (its control socket {} is left from a daemon that died); start it again (`systemctl start director`)",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to use the control socket {} (Permission denied: root only, or members of global.control_group): run as root (sudo)",
            path.display()
        ),
        _ => format!("cannot reach the daemon at {}: {e}", path.display()),
    }
}

/// Binds the socket (replacing a stale one) and serves it until the
/// returned task is aborted, at most `max_connections` at once (more are
/// closed at once). Requests go to `tx`.
pub fn serve(
    state_dir: &Path,
    group: Option<&str>,
    tx: mpsc::Sender<Pending>,
    max_connections: usize,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let path = state_dir.join(SOCKET);
    let err = |source| ControlError::Socket {
        path: path.clone(),
        source,
    };
    // The socket is bound in a directory only we can enter, given its
    // final owner and mode there, then renamed into place: at no moment
    // does it exist at its path with the umask's permissions.
    let private = state_dir.join(format!(".control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(err)?;
    let staged = private.join(SOCKET);
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        // Root only, or root and one group.
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        if let Some(name) = group {
            let gid = nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| std::io::Error::other(format!("no group named {name}")))?
                .gid;
            nix::unistd::chown(&staged, None, Some(gid))
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
        }
        std::fs::rename(&staged, &path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound.map_err(err)?;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    Ok(tokio::spawn(async move {
        let mut logged: Option<std::time::Instant> = None;
        let mut log_once = |what: &str, error: &dyn std::fmt::Display| {
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                warn!(%error, limit = max_connections, "control socket: {what}");
                logged = Some(std::time::Instant::now());
            }
        };
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors: wait for some to be freed (the
                    // listener stays ready; retrying at once would spin).
                    log_once("accept failed, backing off", &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // At most `max_connections` at once: a client that connects
            // and sends nothing holds one for the 5 s read timeout only,
            // and a crowd of them cannot take the daemon's descriptors.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                log_once("too many connections, closing new ones", &"at the limit");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = handle(stream, tx).await {
                    debug!(error = %e, "control connection ended");
                }
            });
        }
    }))
}

async fn handle(stream: tokio::net::UnixStream, tx: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let response =
        match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
            Err(_) => Response::Error {
                error: "timed out reading the request".into(),
            },
            Ok(Err(e)) => Response::Error {
                error: format!("cannot read the request: {e}"),
            },
            Ok(Ok(_)) => match parse_request(&line) {
                Err(error) => Response::Error { error },
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if tx.send((request, reply)).await.is_err() {
                        Response::Error {
                            error: "the daemon is stopping".into(),
                        }
                    } else {
                        answer.await.unwrap_or(Response::Error {
                            error: "the daemon dropped the request".into(),
                        })
                    }
                }
            },
        };
    let mut text = serde_json::to_string(&response)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the answer: {e}\"}}"));
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Parses one request line (`{"command":"status"}`, or the bare word).
pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim();
    match line {
        "status" => return Ok(Request::Status),
        "reload" => return Ok(Request::Reload),
        "drain" => return Ok(Request::Drain),
        _ => {}
    }
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// Sends `request` to the daemon whose state directory is `state_dir`.
pub fn request(state_dir: &Path, request: &Request) -> Result<Response, ControlError> {
    let path = state_dir.join(SOCKET);
    let mut stream = UnixStream::connect(&path).map_err(|error| ControlError::Connect {
        path: path.clone(),
        error,
    })?;
    let io = |source| ControlError::Socket {
        path: path.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ControlError::Answer(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Answer(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request("{\"command\":\"status\"}\n"),
            Ok(Request::Status)
        );
        assert_eq!(parse_request("status\n"), Ok(Request::Status));
        assert!(parse_request("{\"command\":\"reboot\"}").is_err());
        assert!(parse_request("\u{0}\u{1}garbage").is_err());
        assert!(parse_request("").is_err());
    }

    #[test]
    fn error_answers_are_json() {
        let text = serde_json::to_string(&Response::Error {
            error: "nope".into(),
        })
        .expect("encodes");
        assert_eq!(text, "{\"error\":\"nope\"}");
    }
}
