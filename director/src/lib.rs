//! The director daemon as a library: the binary in `main.rs` is a thin CLI.

pub mod bfd;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod flowsync;
pub mod frames;
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod health;
pub mod import;
pub mod limits;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod neighbor;
pub mod netmsg;
pub mod notify;
pub mod persist;
pub mod script;
pub mod status;
pub mod vrrp;
pub mod wire;
