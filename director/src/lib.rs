//! The director daemon as a library: the binary in `main.rs` is a thin CLI.

pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod neighbor;
