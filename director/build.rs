//! Builds the XDP program (`director-ebpf`) for the BPF target and puts the
//! object in OUT_DIR, where `src/dataplane` embeds it.
//! `AYA_BUILD_SKIP=1` skips it (for `cargo check` without nightly).

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("director crate has no parent directory"))?
        .join("director-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "director-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the XDP program (run `cargo xtask setup` first if bpf-linker or nightly rust-src is missing)")
}
