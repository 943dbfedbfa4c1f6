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

use std::net::IpAddr;

// What VRRP needs of the dataplane: handles it defines and the dataplane
// implements (the XDP dataplane fills `Served` and honours `VmacHook`; IPVS
// leaves `Served` empty and has no hook).

/// The virtual addresses whose services the XDP program forwards before
/// the kernel's stack sees a frame: it needs neither the address on an
/// interface nor anything else of the host to serve them. A VRRP instance
/// whose every address is here announces them (gratuitous ARP, unsolicited
/// NA) as soon as it becomes master and adds them after, so clients move
/// a netlink round trip sooner. Empty (the safe order: add, then announce)
/// until the XDP dataplane has applied a plan, and with IPVS.
pub type Served = std::sync::Arc<std::sync::RwLock<std::collections::BTreeSet<IpAddr>>>;

/// Told when a virtual MAC (`use_vmac`) becomes ours (`true`: we are
/// master) or stops being ours: the XDP dataplane accepts frames addressed
/// to it only meanwhile, so a backup never forwards what a switch floods.
pub type VmacHook = std::sync::Arc<dyn Fn([u8; 6], bool) + Send + Sync>;
