//! The director daemon as a library: the binary in `main.rs` is a thin CLI.
//!
//! One folder per concern: `config/` (the file, typed and validated),
//! `daemon/` (start-up, the event loop, reloads), `dataplane/` (XDP and
//! IPVS, Maglev, flow sync), `vrrp/`, `health/`, `bfd/`, `bgp` (through
//! BIRD), `handover` (restarts without a failover), `import/`
//! (`import-keepalived`), `manage/` (the operator's side: control socket,
//! status document, metrics, config write-back, descriptor budgets),
//! `net/` (socket and packet helpers), `scripts/` (running operator
//! scripts, the notify queue); `testing/` (frame builders and fuzzing
//! invariants) is built only with the `testing` feature.

pub mod bfd;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod handover;
pub mod health;
pub mod import;
pub mod logging;
pub mod manage;
pub mod net;
pub mod scripts;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vrrp;
