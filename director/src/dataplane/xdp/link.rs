//! What the kernel says of a pinned XDP link and of an interface's XDP
//! attachment. aya 0.14 exposes neither a link's target nor an
//! interface's program, and both are needed to tell whose a pinned link
//! is: interface indexes repeat across network namespaces, so a link on
//! "ifindex 2" may be another namespace's interface.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// `union bpf_attr`, large enough for the commands used here (the kernel
/// requires the bytes it does not know to be zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zeroed, correctly sized bpf_attr for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// A pinned XDP link, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedXdpLink {
    /// The program it runs.
    pub program_id: u32,
    /// Its interface in the namespace it was created in; 0 once that
    /// interface is gone (the link is defunct).
    pub ifindex: u32,
}

/// Reads the XDP link pinned at `path`.
pub fn pinned(path: &Path) -> std::io::Result<PinnedXdpLink> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = Attr([0; 128]);
    // BPF_OBJ_GET: pathname (u64) at 0.
    attr.0[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id (u32 each), then the union
    // (8-aligned) whose `xdp.ifindex` is its first u32.
    #[repr(C, align(8))]
    struct Info([u8; 256]);
    let mut info = Info([0; 256]);
    let mut attr = Attr([0; 128]);
    // info: bpf_fd (u32) at 0, info_len (u32) at 4, info (u64) at 8.
    attr.0[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(info.0.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.0.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |at: usize| {
        u32::from_ne_bytes([info.0[at], info.0[at + 1], info.0[at + 2], info.0[at + 3]])
    };
    if word(0) != BPF_LINK_TYPE_XDP {
        return Err(std::io::Error::other(format!(
            "{} is a link of type {}, not XDP",
            path.display(),
            word(0)
        )));
    }
    Ok(PinnedXdpLink {
        program_id: word(8),
        ifindex: word(16),
    })
}

/// The XDP program attached to interface `ifindex` of this network
/// namespace (`None`: no such interface, or nothing attached).
pub fn attached_program(ifindex: u32) -> std::io::Result<Option<u32>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
    msg.header.flags = NLM_F_REQUEST;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (data, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                }),
                _ => None,
            })
        }
        // ENODEV: no such interface here.
        _ => None,
    })
}
