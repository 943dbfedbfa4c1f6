//! Writing into a daemon's pinned maps from a test (raw bpf(2): the lab
//! needs no BPF library): to fill its flow table, for example.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: a zeroed bpf_attr large enough for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, 128usize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// A pinned map, opened.
pub struct PinnedMap(OwnedFd);

impl PinnedMap {
    pub fn open(path: &Path) -> Result<PinnedMap> {
        use std::os::unix::ffi::OsStrExt as _;
        let c = CString::new(path.as_os_str().as_bytes())?;
        let mut attr = Attr([0; 128]);
        attr.0[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
        let fd =
            bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a new fd nothing else owns.
        Ok(PinnedMap(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Inserts or replaces `key` -> `value` (their bytes as the map holds
    /// them).
    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut attr = Attr([0; 128]);
        // map_fd (u32) at 0, key (u64) at 8, value (u64) at 16, flags at 24.
        attr.0[..4].copy_from_slice(&(self.0.as_raw_fd() as u32).to_ne_bytes());
        attr.0[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
        attr.0[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("map update")?;
        Ok(())
    }

    /// The value of `key` (its bytes as the map holds them), `len` bytes.
    pub fn lookup(&self, key: &[u8], len: usize) -> Result<Vec<u8>> {
        let mut value = vec![0u8; len];
        let mut attr = Attr([0; 128]);
        attr.0[..4].copy_from_slice(&(self.0.as_raw_fd() as u32).to_ne_bytes());
        attr.0[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
        attr.0[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("map lookup")?;
        Ok(value)
    }

    /// Reads every entry once (next key, then its value), as a daemon
    /// walking the map from user space does; returns how many there were.
    pub fn walk(&self, key_len: usize, value_len: usize) -> Result<usize> {
        let fd = (self.0.as_raw_fd() as u32).to_ne_bytes();
        let mut key = vec![0u8; key_len];
        let mut next = vec![0u8; key_len];
        let mut value = vec![0u8; value_len];
        let mut first = true;
        let mut n = 0;
        loop {
            let mut attr = Attr([0; 128]);
            attr.0[..4].copy_from_slice(&fd);
            // key at 8 (0 asks for the first key), next_key at 16.
            if !first {
                attr.0[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
            }
            attr.0[16..24].copy_from_slice(&(next.as_mut_ptr() as u64).to_ne_bytes());
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
                Err(e) => return Err(e).context("map next key"),
            }
            first = false;
            std::mem::swap(&mut key, &mut next);
            let mut attr = Attr([0; 128]);
            attr.0[..4].copy_from_slice(&fd);
            attr.0[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
            attr.0[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
            // An entry evicted meanwhile is skipped.
            if bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).is_ok() {
                n += 1;
            }
        }
    }
}
