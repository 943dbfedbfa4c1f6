//! What the kernel says of a pinned XDP link (aya 0.14 does not expose a
//! link's target): its interface index, 0 once the interface is gone.

use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

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

/// The interface index of the XDP link pinned at `path` (0 when its
/// interface was deleted: the link is defunct).
pub fn xdp_ifindex(path: &Path) -> std::io::Result<u32> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = Attr([0; 128]);
    // BPF_OBJ_GET: pathname (u64) at 0.
    attr.0[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    use std::os::fd::AsRawFd as _;
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
    Ok(word(16))
}
