//! The operator's side of the daemon: `control` (the control socket and
//! its typed requests), `status` (the status document, a contract),
//! `metrics` (Prometheus, and the HTTP server of `/metrics` and `/status`),
//! `writeback` (`real-server --persist`: edits written back into the config
//! file, comments kept), `limits` (the descriptor budget each listener that
//! strangers can reach may take), `doctor` (the real servers' DR setup,
//! checked from the director).

pub mod control;
pub mod doctor;
pub mod limits;
pub mod metrics;
pub mod status;
pub mod writeback;
