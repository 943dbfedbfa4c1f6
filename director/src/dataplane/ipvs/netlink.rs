//! The kernel's IPVS generic-netlink family ("IPVS", version 1), as laid
//! out in `include/uapi/linux/ip_vs.h`: commands, attribute numbers, and a
//! small blocking client (netlink-sys socket, netlink-packet-generic
//! framing). Attributes are a tree of raw values; which ones nest is fixed
//! by the family (service and destination under the command, statistics
//! under both).

use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    Nla, NlaBuffer, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

// Commands (enum IPVS_CMD_*).
pub const CMD_NEW_SERVICE: u8 = 1;
pub const CMD_SET_SERVICE: u8 = 2;
pub const CMD_DEL_SERVICE: u8 = 3;
pub const CMD_GET_SERVICE: u8 = 4;
pub const CMD_NEW_DEST: u8 = 5;
pub const CMD_SET_DEST: u8 = 6;
pub const CMD_DEL_DEST: u8 = 7;
pub const CMD_GET_DEST: u8 = 8;
pub const CMD_SET_CONFIG: u8 = 12;
pub const CMD_GET_INFO: u8 = 15;

// Command attributes (IPVS_CMD_ATTR_*).
pub const CMD_ATTR_SERVICE: u16 = 1;
pub const CMD_ATTR_DEST: u16 = 2;
pub const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
pub const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
pub const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

// Service attributes (IPVS_SVC_ATTR_*).
pub const SVC_ATTR_AF: u16 = 1;
pub const SVC_ATTR_PROTOCOL: u16 = 2;
pub const SVC_ATTR_ADDR: u16 = 3;
pub const SVC_ATTR_PORT: u16 = 4;
pub const SVC_ATTR_FWMARK: u16 = 5;
pub const SVC_ATTR_SCHED_NAME: u16 = 6;
pub const SVC_ATTR_FLAGS: u16 = 7;
pub const SVC_ATTR_TIMEOUT: u16 = 8;
pub const SVC_ATTR_NETMASK: u16 = 9;
pub const SVC_ATTR_STATS: u16 = 10;
pub const SVC_ATTR_STATS64: u16 = 12;

// Destination attributes (IPVS_DEST_ATTR_*).
pub const DEST_ATTR_ADDR: u16 = 1;
pub const DEST_ATTR_PORT: u16 = 2;
pub const DEST_ATTR_FWD_METHOD: u16 = 3;
pub const DEST_ATTR_WEIGHT: u16 = 4;
pub const DEST_ATTR_U_THRESH: u16 = 5;
pub const DEST_ATTR_L_THRESH: u16 = 6;
pub const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const DEST_ATTR_INACT_CONNS: u16 = 8;
pub const DEST_ATTR_STATS: u16 = 10;
pub const DEST_ATTR_ADDR_FAMILY: u16 = 11;
pub const DEST_ATTR_STATS64: u16 = 12;

// Statistics attributes (IPVS_STATS_ATTR_*): u32 in STATS, u64 in STATS64.
pub const STATS_ATTR_CONNS: u16 = 1;
pub const STATS_ATTR_INPKTS: u16 = 2;
pub const STATS_ATTR_INBYTES: u16 = 4;

/// IP-in-IP tunnelling (IP_VS_CONN_F_TUNNEL).
pub const FWD_TUNNEL: u32 = 0x0002;
/// Direct routing (IP_VS_CONN_F_DROUTE).
pub const FWD_DROUTE: u32 = 0x0003;
/// Persistent service (IP_VS_SVC_F_PERSISTENT).
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// IP_VS_SVC_F_SCHED2: for `mh` (and `sh`), hash the source port too
/// (IP_VS_SVC_F_SCHED_MH_PORT): IPVS's mh then hashes the flow, as ours.
pub const SVC_F_SCHED_PORT: u32 = 0x0010;

/// One attribute: a raw value, or nested attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    Raw(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    pub fn u16(kind: u16, v: u16) -> Attr {
        Attr::Raw(kind, v.to_ne_bytes().to_vec())
    }
    /// A port: network byte order.
    pub fn port(kind: u16, v: u16) -> Attr {
        Attr::Raw(kind, v.to_be_bytes().to_vec())
    }
    pub fn u32(kind: u16, v: u32) -> Attr {
        Attr::Raw(kind, v.to_ne_bytes().to_vec())
    }
    /// An address: `union nf_inet_addr`, 16 bytes (IPv4 in the first 4).
    pub fn addr(kind: u16, a: IpAddr) -> Attr {
        let mut b = vec![0u8; 16];
        match a {
            IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => b.copy_from_slice(&a.octets()),
        }
        Attr::Raw(kind, b)
    }
    /// A NUL-terminated string.
    pub fn string(kind: u16, s: &str) -> Attr {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        Attr::Raw(kind, b)
    }

    pub fn kind_of(&self) -> u16 {
        match self {
            Attr::Raw(k, _) | Attr::Nested(k, _) => *k,
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Raw(_, v) => v.len(),
            Attr::Nested(_, children) => children.as_slice().buffer_len(),
        }
    }
    fn kind(&self) -> u16 {
        self.kind_of()
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Raw(_, v) => buffer[..v.len()].copy_from_slice(v),
            Attr::Nested(_, children) => children.as_slice().emit(buffer),
        }
    }
    fn is_nested(&self) -> bool {
        matches!(self, Attr::Nested(..))
    }
}

/// Which attributes nest, at each level of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Command,
    Service,
    Dest,
    Stats,
}

fn nested(level: Level, kind: u16) -> Option<Level> {
    match (level, kind) {
        (Level::Command, CMD_ATTR_SERVICE) => Some(Level::Service),
        (Level::Command, CMD_ATTR_DEST) => Some(Level::Dest),
        (Level::Service, SVC_ATTR_STATS | SVC_ATTR_STATS64) => Some(Level::Stats),
        (Level::Dest, DEST_ATTR_STATS | DEST_ATTR_STATS64) => Some(Level::Stats),
        _ => None,
    }
}

/// Parses attributes at `level` (bounded by the buffer; never panics).
pub fn parse_attrs(buf: &[u8], level: Level) -> Result<Vec<Attr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let nla: NlaBuffer<&[u8]> = nla?;
        let kind = nla.kind();
        let value = nla.value();
        out.push(match nested(level, kind) {
            Some(inner) => Attr::Nested(kind, parse_attrs(value, inner)?),
            None => Attr::Raw(kind, value.to_vec()),
        });
    }
    Ok(out)
}

/// An IPVS message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        "IPVS"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs: parse_attrs(buf, Level::Command)?,
        })
    }
}

/// Finds a raw attribute.
pub fn raw(attrs: &[Attr], kind: u16) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match a {
        Attr::Raw(k, v) if *k == kind => Some(v.as_slice()),
        _ => None,
    })
}

/// Finds nested attributes.
pub fn nest(attrs: &[Attr], kind: u16) -> Option<&[Attr]> {
    attrs.iter().find_map(|a| match a {
        Attr::Nested(k, v) if *k == kind => Some(v.as_slice()),
        _ => None,
    })
}

pub fn get_u16(attrs: &[Attr], kind: u16) -> Option<u16> {
    raw(attrs, kind)?
        .get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
}

pub fn get_port(attrs: &[Attr], kind: u16) -> Option<u16> {
    raw(attrs, kind)?
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

pub fn get_u32(attrs: &[Attr], kind: u16) -> Option<u32> {
    raw(attrs, kind)?
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn get_u64(attrs: &[Attr], kind: u16) -> Option<u64> {
    let b = raw(attrs, kind)?.get(..8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_ne_bytes(a))
}

pub fn get_addr(attrs: &[Attr], kind: u16, v6: bool) -> Option<IpAddr> {
    let b = raw(attrs, kind)?;
    if v6 {
        let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(IpAddr::from(a))
    } else {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(IpAddr::from(a))
    }
}

pub fn get_string(attrs: &[Attr], kind: u16) -> Option<String> {
    let b = raw(attrs, kind)?;
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    Some(String::from_utf8_lossy(&b[..end]).to_string())
}

/// Errors talking to IPVS.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("generic netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the kernel has no IPVS (generic netlink family \"IPVS\" not found: load the ip_vs module, or use dataplane = \"xdp\")"
    )]
    NoFamily,
    #[error("IPVS refused {what}: {source}")]
    Kernel {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot decode a netlink reply: {0}")]
    Decode(String),
}

/// How long a missing IPVS family is waited for (a module still loading).
const FAMILY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A blocking generic-netlink client for the IPVS family.
pub struct Client {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl Client {
    /// Opens a socket and resolves the IPVS family id.
    pub fn open() -> Result<Client, NetlinkError> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let mut client = Client {
            socket,
            family: 0,
            seq: 0,
        };
        // A module being loaded (by us a moment ago, or by another process:
        // modprobe returns at once while another one's load runs) may not
        // have registered its family yet: the lookup says ENOENT for a
        // while. While the module is there (loaded or loading), asked
        // again for up to FAMILY_WAIT; then, or without the module, the
        // kernel has no IPVS.
        let started = std::time::Instant::now();
        let mut waited = false;
        client.family = loop {
            match client.resolve() {
                Err(NetlinkError::Kernel { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT)
                        && std::path::Path::new("/sys/module/ip_vs").exists()
                        && started.elapsed() < FAMILY_WAIT =>
                {
                    if !waited {
                        tracing::info!(
                            "the ip_vs module is still loading: waiting for its netlink family"
                        );
                        waited = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(NetlinkError::Kernel { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Err(NetlinkError::NoFamily);
                }
                other => break other?,
            }
        };
        Ok(client)
    }

    fn resolve(&mut self) -> Result<u16, NetlinkError> {
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("IPVS".to_owned())],
        }));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let replies = self.exchange(msg, "family lookup")?;
        replies
            .iter()
            .flat_map(|m: &GenlMessage<GenlCtrl>| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(NetlinkError::NoFamily)
    }

    /// Sends one IPVS command; `dump` asks for every object. Returns the
    /// replies' attributes.
    pub fn request(
        &mut self,
        cmd: u8,
        attrs: Vec<Attr>,
        dump: bool,
        what: &str,
    ) -> Result<Vec<Vec<Attr>>, NetlinkError> {
        let mut genl = GenlMessage::from_payload(IpvsMessage { cmd, attrs });
        genl.set_resolved_family_id(self.family);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let replies: Vec<GenlMessage<IpvsMessage>> = self.exchange(msg, what)?;
        Ok(replies.into_iter().map(|m| m.payload.attrs).collect())
    }

    fn exchange<F>(
        &mut self,
        mut msg: NetlinkMessage<GenlMessage<F>>,
        what: &str,
    ) -> Result<Vec<GenlMessage<F>>, NetlinkError>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode("zero-length message".into()));
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(NetlinkError::Kernel {
                                what: what.to_string(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NEW_SERVICE for 10.0.0.100:80/tcp, scheduler mh, as the kernel
    /// expects it (nla headers: u16 length, u16 type; 4-byte alignment).
    #[test]
    fn new_service_layout_matches_ip_vs_h() {
        let svc = Attr::Nested(
            CMD_ATTR_SERVICE,
            vec![
                Attr::u16(SVC_ATTR_AF, 2),
                Attr::u16(SVC_ATTR_PROTOCOL, 6),
                Attr::addr(SVC_ATTR_ADDR, "10.0.0.100".parse().expect("ip")),
                Attr::port(SVC_ATTR_PORT, 80),
                Attr::string(SVC_ATTR_SCHED_NAME, "mh"),
                Attr::Raw(
                    SVC_ATTR_FLAGS,
                    [0u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
                ),
                Attr::u32(SVC_ATTR_TIMEOUT, 0),
                Attr::u32(SVC_ATTR_NETMASK, u32::MAX),
            ],
        );
        let msg = IpvsMessage {
            cmd: CMD_NEW_SERVICE,
            attrs: vec![svc],
        };
        let mut b = vec![0u8; msg.buffer_len()];
        msg.emit(&mut b);
        let ne16 = |v: u16| v.to_ne_bytes();
        let mut want = Vec::new();
        let total = 4 + (4 + 4) * 2 + (4 + 16) + (4 + 4) + (4 + 4) + (4 + 8) + (4 + 4) * 2;
        want.extend(ne16(total as u16));
        // Nested attributes carry NLA_F_NESTED (the kernel masks it off).
        want.extend(ne16(CMD_ATTR_SERVICE | 0x8000));
        for (kind, value) in [
            (SVC_ATTR_AF, vec![2, 0, 0, 0]),
            (SVC_ATTR_PROTOCOL, vec![6, 0, 0, 0]),
        ] {
            want.extend(ne16(6));
            want.extend(ne16(kind));
            want.extend(value);
        }
        want.extend(ne16(20));
        want.extend(ne16(SVC_ATTR_ADDR));
        want.extend([10, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(ne16(6));
        want.extend(ne16(SVC_ATTR_PORT));
        want.extend([0, 80, 0, 0]);
        want.extend(ne16(7));
        want.extend(ne16(SVC_ATTR_SCHED_NAME));
        want.extend([b'm', b'h', 0, 0]);
        want.extend(ne16(12));
        want.extend(ne16(SVC_ATTR_FLAGS));
        want.extend([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        want.extend(ne16(8));
        want.extend(ne16(SVC_ATTR_TIMEOUT));
        want.extend([0, 0, 0, 0]);
        want.extend(ne16(8));
        want.extend(ne16(SVC_ATTR_NETMASK));
        want.extend([0xff, 0xff, 0xff, 0xff]);
        assert_eq!(b, want);
        // And back.
        let parsed = parse_attrs(&b, Level::Command).expect("parse");
        let s = nest(&parsed, CMD_ATTR_SERVICE).expect("service");
        assert_eq!(get_u16(s, SVC_ATTR_AF), Some(2));
        assert_eq!(get_port(s, SVC_ATTR_PORT), Some(80));
        assert_eq!(get_string(s, SVC_ATTR_SCHED_NAME).as_deref(), Some("mh"));
        assert_eq!(
            get_addr(s, SVC_ATTR_ADDR, false),
            Some("10.0.0.100".parse().expect("ip"))
        );
    }

    /// A destination with its 64-bit statistics, as a dump reply carries it.
    #[test]
    fn dest_reply_with_stats64_decodes() {
        let dest = Attr::Nested(
            CMD_ATTR_DEST,
            vec![
                Attr::addr(DEST_ATTR_ADDR, "fd00::20".parse().expect("ip")),
                Attr::port(DEST_ATTR_PORT, 443),
                Attr::u32(DEST_ATTR_FWD_METHOD, FWD_DROUTE),
                Attr::u32(DEST_ATTR_WEIGHT, 7),
                Attr::u16(DEST_ATTR_ADDR_FAMILY, 10),
                Attr::Nested(
                    DEST_ATTR_STATS64,
                    vec![
                        Attr::Raw(STATS_ATTR_CONNS, 5u64.to_ne_bytes().to_vec()),
                        Attr::Raw(STATS_ATTR_INPKTS, 1234u64.to_ne_bytes().to_vec()),
                        Attr::Raw(STATS_ATTR_INBYTES, 99_999u64.to_ne_bytes().to_vec()),
                    ],
                ),
            ],
        );
        let mut b = vec![0u8; dest.buffer_len()];
        dest.emit(&mut b);
        let parsed = parse_attrs(&b, Level::Command).expect("parse");
        let d = nest(&parsed, CMD_ATTR_DEST).expect("dest");
        assert_eq!(
            get_addr(d, DEST_ATTR_ADDR, true),
            Some("fd00::20".parse().expect("ip"))
        );
        assert_eq!(get_u32(d, DEST_ATTR_WEIGHT), Some(7));
        assert_eq!(get_u32(d, DEST_ATTR_FWD_METHOD), Some(FWD_DROUTE));
        let st = nest(d, DEST_ATTR_STATS64).expect("stats");
        assert_eq!(get_u64(st, STATS_ATTR_INPKTS), Some(1234));
        assert_eq!(get_u64(st, STATS_ATTR_INBYTES), Some(99_999));
        // Truncated input: an error, never a panic.
        for n in 0..b.len() {
            let _ = parse_attrs(&b[..n], Level::Command);
        }
    }
}
