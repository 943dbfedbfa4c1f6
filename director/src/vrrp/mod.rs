//! VRRP (RFC 3768 v2, RFC 5798 v3): the pure state machine, the packet
//! codec, and the instance runtime that owns sockets, timers and the
//! virtual addresses.

pub mod fsm;
pub mod instance;
pub mod net;
pub mod packet;
pub mod routes;
pub mod timer;
pub mod trackers;
pub mod watch;
