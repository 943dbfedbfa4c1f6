//! A two-instruction `XDP_PASS` program for the switch-side veth peers of
//! directors: XDP_TX on a veth is dropped unless the peer runs XDP too.
//!
//! It is loaded with the raw `bpf()` system call (no object file needed),
//! pinned briefly in a bpffs so `ip link set ... xdpdrv pinned` can attach it,
//! then unpinned: the attachment keeps it alive until the veth is deleted.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, sh};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const XDP_PASS: i32 = 2;

/// `struct bpf_attr` for BPF_PROG_LOAD (the prefix we use; the kernel
/// accepts a shorter attr as long as the rest would be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `struct bpf_attr` for BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// One eBPF instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) as u64) << 8)
        | (((src & 0xf) as u64) << 12)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `r0 = XDP_PASS; exit`.
fn load() -> Result<OwnedFd> {
    let insns = [
        insn(0xb7, 0, 0, 0, XDP_PASS), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = 2
        insn(0x95, 0, 0, 0, 0),        // BPF_JMP | BPF_EXIT
    ];
    let license = CString::new("GPL").context("license")?;
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"lab_xpass");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("bpf(BPF_PROG_LOAD) of the XDP_PASS program")?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Where the lab pins its programs for a moment. Not /sys/fs/bpf: `ip -n`
/// remounts /sys in its own mount namespace and would not see pins there.
const PIN_DIR: &str = "/run/director-lab-bpf";

/// Makes sure a bpffs is mounted at `dir`.
pub fn ensure_bpffs(dir: &str) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir) && l.contains(" bpf "))
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    sh("mount", &["-t", "bpf", "bpf", dir])?;
    Ok(())
}

/// Attaches an `XDP_PASS` program in native mode to `dev` in `ns`.
pub fn attach(ns: &Netns, dev: &str, unique: &str) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    ensure_bpffs(PIN_DIR)?;
    let fd = load()?;
    let pin = format!("{PIN_DIR}/{unique}-xdp-pass");
    let cpin = CString::new(pin.clone()).context("pin path")?;
    let _ = std::fs::remove_file(&pin);
    let mut attr = ObjPinAttr {
        pathname: cpin.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr)
        .with_context(|| format!("pinning the XDP_PASS program at {pin}"))?;
    let result = ns.ip(&["link", "set", "dev", dev, "xdpdrv", "pinned", &pin]);
    let _ = std::fs::remove_file(Path::new(&pin));
    if let Err(e) = result {
        bail!("attaching XDP_PASS to {dev}: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_encoding() {
        // r0 = 2 is b7 00 00 00 02 00 00 00 in memory (little endian).
        assert_eq!(
            insn(0xb7, 0, 0, 0, 2).to_le_bytes(),
            [0xb7, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(
            insn(0x95, 0, 0, 0, 0).to_le_bytes(),
            [0x95, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(insn(0xbf, 1, 6, -1, 0).to_le_bytes()[1], 0x61);
    }
}
