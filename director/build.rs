//! Builds the XDP program (`director-ebpf`) for the BPF target and puts the
//! objects (`director`, the daemon's; `director-bench`, the benchmark's) in
//! OUT_DIR, where `src/dataplane` and the benchmark embed them.
//! `AYA_BUILD_SKIP=1` skips it (for `cargo check` without nightly).
//!
//! The BPF build is shared by every build of this crate in one target
//! directory (debug, release, check, with or without the `testing`
//! feature): each has its own OUT_DIR, and a BPF build of its own from
//! scratch (`core` included) would cost a minute each. It runs in
//! `<target>/bpf` under a file lock, and its objects are copied into this
//! build's OUT_DIR.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The objects the BPF crate builds (its `[[bin]]`s).
const OBJECTS: [&str; 2] = ["director", "director-bench"];

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("director crate has no parent directory"))?
        .join("director-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<crate-hash>/out.
    let shared = out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").exists())
        .map(|target| target.join("bpf"))
        .unwrap_or_else(|| out_dir.clone());
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let lock = std::fs::File::create(shared.join(".lock"))
        .with_context(|| format!("creating {}/.lock", shared.display()))?;
    lock.lock().context("locking the shared BPF build")?;
    // SAFETY: a build script is single-threaded; aya-build reads OUT_DIR
    // for where to build and put the objects.
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    aya_build::build_ebpf(
        [Package {
            name: "director-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the XDP program (run `cargo xtask setup` first if bpf-linker or nightly rust-src is missing)")?;
    if shared != out_dir {
        for object in OBJECTS {
            let built = shared.join(object);
            // Absent only with AYA_BUILD_SKIP (the embedding then fails
            // with a clear "file not found").
            if built.exists() {
                std::fs::copy(&built, out_dir.join(object))
                    .with_context(|| format!("copying {object} into {}", out_dir.display()))?;
            }
        }
    }
    Ok(())
}
