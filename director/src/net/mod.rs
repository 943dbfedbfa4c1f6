//! Socket and packet helpers shared by VRRP, BFD, the health checks and the
//! dataplane: `cbpf` (classic BPF opcodes of socket filters), `frames` (Ethernet frames built byte by byte: `dr_check`'s
//! probes, and the XDP program's tests), `wire` (the Internet checksum and its pseudo-headers,
//! packet-socket addresses), `socket` (socket options, `recvmsg` with the
//! ancillary data the protocols read, real-time priority), `neighbor`
//! (MAC addresses from the kernel's neighbour table, over rtnetlink).

pub mod cbpf;
pub mod frames;
pub mod neighbor;
pub mod socket;
pub mod wire;
