//! Types shared by the director daemon (user space) and its XDP program.
//!
//! Every struct here is `#[repr(C)]`, `Copy`, and laid out without implicit
//! padding (explicit `_pad` fields), so the kernel and user space agree on
//! its bytes. Capacities (map sizes) live here too, so both sides agree.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the
//! wire (network byte order), so the XDP program never swaps bytes.
#![no_std]

/// Maximum number of virtual services (VIP, port, protocol).
pub const MAX_SERVICES: u32 = 256;
/// Maximum number of real servers across all services.
pub const MAX_REAL_SERVERS: u32 = 4096;
/// Maximum number of real servers in one service.
pub const MAX_REAL_SERVERS_PER_SERVICE: u32 = 256;
/// Slots in the backend array: two banks per service, so the daemon writes
/// a service's new backend list into the idle bank and then switches the
/// service over with one atomic map update.
pub const BACKEND_SLOTS: u32 = MAX_SERVICES * 2 * MAX_REAL_SERVERS_PER_SERVICE;

/// First slot of `bank` (0 or 1) of the service with index `service_id`.
pub const fn bank_start(service_id: u32, bank: u32) -> u32 {
    (service_id * 2 + bank) * MAX_REAL_SERVERS_PER_SERVICE
}

/// Name of the service map in the eBPF object.
pub const MAP_SERVICES: &str = "SERVICES";
/// Name of the real-server (backend) array in the eBPF object.
pub const MAP_BACKENDS: &str = "BACKENDS";
/// Name of the per-CPU per-service counters in the eBPF object.
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
/// Name of the per-CPU per-backend counters in the eBPF object.
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
/// Name of the XDP entry point in the eBPF object.
pub const PROG_DIRECTOR: &str = "director";

/// IP protocol numbers used in [`ServiceKey::protocol`].
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Key of the service map: one virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Virtual IPv4 address, network byte order (as on the wire).
    pub vip: [u8; 4],
    /// Destination port, network byte order (as on the wire).
    pub port: [u8; 2],
    /// IP protocol number ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub protocol: u8,
    /// Always zero.
    pub _pad: u8,
}

impl ServiceKey {
    /// Builds a key from host-order values.
    pub const fn new(vip: [u8; 4], port: u16, protocol: u8) -> Self {
        Self {
            vip,
            port: port.to_be_bytes(),
            protocol,
            _pad: 0,
        }
    }
}

/// Value of the service map: where the service's real servers are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of this service in the per-service counter array.
    pub id: u32,
    /// Index of the first real server in the backend array.
    pub backend_start: u32,
    /// Number of consecutive usable real servers (MAC resolved) from
    /// `backend_start`; zero means "pass to the kernel".
    pub backend_count: u32,
}

/// One real server as the XDP program sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Destination MAC written into forwarded frames.
    pub mac: [u8; 6],
    /// Always zero.
    pub _pad: [u8; 2],
    /// Index of this real server in the per-backend counter array.
    pub id: u32,
}

/// Per-CPU traffic counters (summed over CPUs by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Frames forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole frames, as seen by XDP).
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), Copy, and has no implicit padding, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // The sum of the field sizes equals the struct size: no hidden bytes.
        assert_eq!(size_of::<ServiceKey>(), 4 + 2 + 1 + 1);
        assert_eq!(size_of::<ServiceValue>(), 3 * 4);
        assert_eq!(size_of::<Backend>(), 6 + 2 + 4);
        assert_eq!(size_of::<Counters>(), 2 * 8);
    }

    #[test]
    fn service_key_stores_port_in_network_order() {
        let key = ServiceKey::new([10, 0, 0, 100], 80, IPPROTO_TCP);
        assert_eq!(key.port, [0, 80]);
        assert_eq!(key.vip, [10, 0, 0, 100]);
        let key = ServiceKey::new([10, 0, 0, 100], 0x1f90, IPPROTO_UDP);
        assert_eq!(key.port, [0x1f, 0x90]);
        assert_eq!(key.protocol, 17);
    }

    #[test]
    fn capacities_are_consistent() {
        const { assert!(MAX_REAL_SERVERS_PER_SERVICE <= MAX_REAL_SERVERS) };
        const { assert!(MAX_SERVICES > 0) };
        // The last bank of the last service ends exactly at the array end.
        assert_eq!(
            bank_start(MAX_SERVICES - 1, 1) + MAX_REAL_SERVERS_PER_SERVICE,
            BACKEND_SLOTS
        );
        assert_eq!(bank_start(0, 1), MAX_REAL_SERVERS_PER_SERVICE);
    }
}
