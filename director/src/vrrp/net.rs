//! VRRP on the wire and on the interface: the raw IP-protocol-112 socket,
//! the virtual addresses (rtnetlink), and their announcement (gratuitous
//! ARP, unsolicited neighbour advertisement).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd as _,
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

use super::packet::{IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, TTL};
use crate::net::socket::setsockopt_int;
use crate::net::wire::link_addr;
use crate::{config::VirtualAddress, net::neighbor::Mac};

/// Errors of the VRRP network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("interface {0} has no usable {1} address")]
    NoAddress(String, &'static str),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// A received IP packet carrying VRRP.
#[derive(Debug, Clone)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL / hop limit on arrival.
    pub ttl: u8,
    pub payload: Vec<u8>,
    /// When the kernel received it (falls back to when it was read): the
    /// master-down interval counts from here, not from when this thread
    /// got to it.
    pub arrived: std::time::Instant,
}

/// The raw VRRP sockets of one instance, bound to its interface: one to
/// receive (not bound to an address: a raw socket bound to an address only
/// sees packets sent to that address, not to the multicast group) and one
/// to send from our address.
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    tx: Socket,
    v6: bool,
    ifindex: u32,
    src: IpAddr,
}

/// Receive buffer of a VRRP socket, bytes.
const RECV_BUFFER: libc::c_int = 4 << 20;

const IPV6_RECVPKTINFO: libc::c_int = 49;
const IPV6_RECVHOPLIMIT: libc::c_int = 51;

impl VrrpSocket {
    /// Opens the socket on `interface` with source address `src`; joins the
    /// VRRP multicast group unless `multicast` is false (unicast peers).
    pub fn open(
        interface: &str,
        ifindex: u32,
        src: IpAddr,
        multicast: bool,
    ) -> Result<VrrpSocket, NetError> {
        Self::build(interface, ifindex, src, multicast, true, false)
    }

    /// [`VrrpSocket::open`] on an interface that does not hold `src` (the
    /// virtual-MAC interface, so adverts carry the virtual MAC): the bound
    /// device, not the source address, picks the way out.
    pub fn open_on_device(
        interface: &str,
        ifindex: u32,
        src: IpAddr,
        multicast: bool,
    ) -> Result<VrrpSocket, NetError> {
        Self::build(interface, ifindex, src, multicast, true, true)
    }

    /// A receive-only socket for watching a link's adverts (multicast group
    /// joined); `send` is not meant to be used on it.
    pub fn listen(interface: &str, ifindex: u32, v6: bool) -> Result<VrrpSocket, NetError> {
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        Self::build(interface, ifindex, any, true, false, false)
    }

    /// The receive socket (joined to the group when `join`) and the send
    /// socket (bound to `src` when `bind_tx`).
    fn build(
        interface: &str,
        ifindex: u32,
        src: IpAddr,
        join: bool,
        bind_tx: bool,
        by_device: bool,
    ) -> Result<VrrpSocket, NetError> {
        let tx = Self::raw(interface, ifindex, src, false, bind_tx, false, !by_device)?;
        let rx = Self::raw(interface, ifindex, src, join, false, true, !by_device)?;
        rx.set_nonblocking(true).map_err(io_err("non-blocking"))?;
        // SAFETY: the socket is owned by the AsyncFd and closed only with it.
        let fd = unsafe { AsyncFd::register_with_interest(rx, Interest::READABLE) }
            .map_err(|e| io_err("registering the socket")(e.into()))?;
        Ok(VrrpSocket {
            fd,
            tx,
            v6: src.is_ipv6(),
            ifindex,
            src,
        })
    }

    fn raw(
        interface: &str,
        ifindex: u32,
        src: IpAddr,
        join: bool,
        bind: bool,
        receive: bool,
        multicast_if: bool,
    ) -> Result<Socket, NetError> {
        let multicast = join;
        let v6 = src.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(
            domain,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )
        .map_err(io_err("raw VRRP socket (needs CAP_NET_RAW)"))?;
        s.bind_device(Some(interface.as_bytes()))
            .map_err(io_err(format!("binding to {interface}")))?;
        if v6 {
            s.set_multicast_hops_v6(u32::from(TTL))
                .map_err(io_err("hop limit"))?;
            s.set_unicast_hops_v6(u32::from(TTL))
                .map_err(io_err("hop limit"))?;
            s.set_multicast_loop_v6(false)
                .map_err(io_err("multicast loop"))?;
            s.set_multicast_if_v6(ifindex)
                .map_err(io_err("multicast interface"))?;
            let fd = s.as_raw_fd();
            setsockopt_int(fd, libc::IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                .map_err(io_err("IPV6_RECVPKTINFO"))?;
            setsockopt_int(fd, libc::IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                .map_err(io_err("IPV6_RECVHOPLIMIT"))?;
            if multicast {
                s.join_multicast_v6(&MULTICAST_V6, ifindex)
                    .map_err(io_err("joining ff02::12"))?;
            }
            if bind {
                let IpAddr::V6(a) = src else { unreachable!() };
                let scope = if a.is_unicast_link_local() {
                    ifindex
                } else {
                    0
                };
                s.bind(&SockAddr::from(SocketAddrV6::new(a, 0, 0, scope)))
                    .map_err(io_err(format!("binding to {src}")))?;
            }
        } else {
            s.set_ttl_v4(u32::from(TTL)).map_err(io_err("TTL"))?;
            s.set_multicast_ttl_v4(u32::from(TTL))
                .map_err(io_err("multicast TTL"))?;
            s.set_multicast_loop_v4(false)
                .map_err(io_err("multicast loop"))?;
            let IpAddr::V4(a) = src else { unreachable!() };
            if multicast_if {
                s.set_multicast_if_v4(&a)
                    .map_err(io_err("multicast interface"))?;
            }
            if multicast {
                s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))
                    .map_err(io_err("joining 224.0.0.18"))?;
            }
            if bind {
                s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                    .map_err(io_err(format!("binding to {src}")))?;
            }
        }
        if receive {
            // The receiving socket: room for a flood's worth of packets
            // (~0.5 s at 10,000/s) so that a moment's stall of this thread
            // loses no advert to a full queue. As root the limit of
            // net.core.rmem_max does not apply (SO_RCVBUFFORCE).
            // The kernel's arrival stamp on each advert: the master-down
            // interval counts from it, not from when this thread woke up.
            crate::net::socket::stamp_arrivals(s.as_raw_fd()).map_err(io_err("SO_TIMESTAMPNS"))?;
            let size: libc::c_int = RECV_BUFFER;
            if setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err()
            {
                let _ = s.set_recv_buffer_size(RECV_BUFFER as usize);
            }
        } else {
            // The sending socket never reads: keep its queue empty.
            let _ = s.set_recv_buffer_size(0);
        }
        Ok(s)
    }

    /// Our source address.
    pub fn source(&self) -> IpAddr {
        self.src
    }

    /// Sends one VRRP message to `dst`.
    pub fn send(&self, dst: IpAddr, message: &[u8]) -> Result<(), NetError> {
        let addr = match dst {
            IpAddr::V6(a) => {
                let scope = if a.is_multicast() || a.is_unicast_link_local() {
                    self.ifindex
                } else {
                    0
                };
                SockAddr::from(SocketAddrV6::new(a, 0, 0, scope))
            }
            IpAddr::V4(_) => SockAddr::from(SocketAddr::new(dst, 0)),
        };
        self.tx
            .send_to(message, &addr)
            .map_err(io_err(format!("sending an advert to {dst}")))?;
        Ok(())
    }

    /// Waits for the next packet.
    pub async fn recv(&self) -> Result<Received, NetError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(io_err("waiting for adverts"))?;
            match guard.try_io(|fd| self.recv_now(fd.get_ref())) {
                Ok(r) => return r.map_err(io_err("receiving an advert")),
                Err(_would_block) => continue,
            }
        }
    }

    /// A packet already queued, if any (never waits).
    pub fn try_recv(&self) -> Result<Option<Received>, NetError> {
        match self.recv_now(self.fd.get_ref()) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io_err("receiving an advert")(e)),
        }
    }

    fn recv_now(&self, s: &Socket) -> io::Result<Received> {
        let m = crate::net::socket::recv(s.as_raw_fd(), 2048)?;
        let arrived = m.arrived.unwrap_or_else(std::time::Instant::now);
        if self.v6 {
            // The source from the address, the destination and hop limit
            // from ancillary data.
            let dst = m.dst6.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "no destination address")
            })?;
            let src = m
                .src
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no source address"))?;
            return Ok(Received {
                src,
                dst: IpAddr::V6(dst),
                ttl: m.ttl,
                payload: m.payload,
                arrived,
            });
        }
        // An IPv4 raw socket delivers the IP header.
        let b = m.payload;
        if b.len() < 20 || b[0] >> 4 != 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short IPv4 packet",
            ));
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if ihl < 20 || b.len() < ihl {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad IPv4 header length",
            ));
        }
        Ok(Received {
            src: IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
            dst: IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
            ttl: b[8],
            payload: b[ihl..].to_vec(),
            arrived,
        })
    }
}

/// The interface's primary address of a family: IPv4 non-secondary, IPv6
/// link-local (RFC 5798 5.1.2.1: adverts come from the link-local address).
pub async fn primary_address(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    v6: bool,
) -> Result<Option<IpAddr>, NetError> {
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    let mut found = None;
    while let Some(msg) = stream.try_next().await? {
        let secondary = msg.header.flags.contains(AddressHeaderFlags::Secondary);
        for a in &msg.attributes {
            let addr = match (a, v6) {
                (AddressAttribute::Local(ip @ IpAddr::V4(_)), false) => *ip,
                (AddressAttribute::Address(ip @ IpAddr::V6(v)), true)
                    if v.is_unicast_link_local() =>
                {
                    *ip
                }
                _ => continue,
            };
            if !secondary && found.is_none() {
                found = Some(addr);
            }
        }
    }
    Ok(found)
}

/// Adds a virtual address (IPv6 without duplicate address detection, so it
/// is usable at once). An address already present is fine.
pub async fn add_address(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    a: VirtualAddress,
) -> Result<(), NetError> {
    let mut req = handle.address().add(ifindex, a.address, a.prefix).replace();
    if a.address.is_ipv6() {
        let attrs = &mut req.message_mut().attributes;
        attrs.push(AddressAttribute::Flags(AddressFlags::Nodad));
        // Preferred lifetime 0 (valid forever): the VIP is never chosen as
        // the source of our own connections - a health check sent from the
        // VIP would be answered to the real server itself, which holds it.
        let mut lifetimes = netlink_packet_route::address::CacheInfo::default();
        lifetimes.ifa_preferred = 0;
        lifetimes.ifa_valid = u32::MAX;
        attrs.push(AddressAttribute::CacheInfo(lifetimes));
    }
    req.execute().await?;
    Ok(())
}

/// Removes a virtual address. An address already gone is fine.
pub async fn remove_address(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    a: VirtualAddress,
) -> Result<(), NetError> {
    let mut msg = AddressMessage::default();
    msg.header.family = if a.address.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.prefix_len = a.prefix;
    msg.header.index = ifindex;
    msg.attributes.push(AddressAttribute::Local(a.address));
    msg.attributes.push(AddressAttribute::Address(a.address));
    match handle.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        // EADDRNOTAVAIL: not there.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates (or takes over, when one left by the previous process is
/// there as it should be: a restart must not drop the addresses on it) the
/// private-mode macvlan `name` on `base` with the virtual MAC. For IPv4 it
/// is brought up, with IPv6 off (it never speaks from the shared MAC on
/// its own), and it and the base interface get `arp_ignore = 1` (the base
/// would answer ARP for the VIP with its own MAC, a backup's macvlan ARP
/// for the director's own address with the shared MAC); for IPv6 it generates
/// no link-local address (one derived from the shared MAC would be the
/// same on every director), holds only the virtual addresses, and is up
/// only while master. Returns its index.
pub async fn create_vmac(
    handle: &rtnetlink::Handle,
    name: &str,
    base: u32,
    mac: Mac,
    v6: bool,
) -> Result<u32, NetError> {
    let index = match existing_vmac(handle, name, base, mac).await? {
        Some(index) => index,
        None => {
            delete_vmac(handle, name).await?;
            let msg = rtnetlink::LinkMacVlan::new(
                name,
                base,
                netlink_packet_route::link::MacVlanMode::Private,
            )
            .address(mac.0.to_vec())
            .build();
            handle.link().add(msg).execute().await?;
            link_index(handle, name)
                .await?
                .ok_or_else(|| NetError::NoAddress(name.to_string(), "link"))?
        }
    };
    let sysctl = |path: String, value: &str| {
        std::fs::write(&path, value).map_err(io_err(format!("writing {path}")))
    };
    // (A kernel without IPv6 has no such files: nothing to set.)
    let conf6 = |key: &str| format!("/proc/sys/net/ipv6/conf/{name}/{key}");
    if std::path::Path::new(&conf6("disable_ipv6")).exists() {
        if v6 {
            // IN6_ADDR_GEN_MODE_NONE before the link comes up.
            sysctl(conf6("addr_gen_mode"), "1")?;
            sysctl(conf6("disable_ipv6"), "0")?;
        } else {
            sysctl(conf6("disable_ipv6"), "1")?;
        }
    }
    // `arp_ignore = 1` where it is 0: on the base (or it would answer ARP
    // for the VIP with its own MAC) and on the virtual-MAC interface itself
    // (a broadcast ARP request for the director's own address reaches it
    // too, and a backup answering from the shared MAC would make the switch
    // send the virtual MAC's traffic to it).
    let arp_ignore = |ifname: &str| {
        let path = format!("/proc/sys/net/ipv4/conf/{ifname}/arp_ignore");
        if std::fs::read_to_string(&path)
            .map(|v| v.trim() == "0")
            .unwrap_or(false)
        {
            sysctl(path, "1")?;
        }
        Ok::<(), NetError>(())
    };
    arp_ignore(name)?;
    if !v6 && let Some(base_name) = link_name(handle, base).await? {
        arp_ignore(&base_name)?;
    }
    // An IPv6 one stays down until this director is master: a link that is
    // up speaks (MLD reports as addresses come and go) from the shared MAC,
    // and a switch would send the virtual MAC's traffic to a backup.
    if !v6 {
        set_link(handle, index, true).await?;
    }
    Ok(index)
}

/// Stops IGMP reports for the link-local groups (224.0.0.x) in this
/// network namespace (`net.ipv4.igmp_link_local_mcast_reports = 0`), as
/// keepalived's `disable_local_igmp` does. A backup joins 224.0.0.18 on its
/// virtual-MAC interface (the master's adverts, from the shared MAC, reach
/// only that interface), and its IGMP reports would carry the shared MAC:
/// a switch would then send the virtual MAC's traffic to the backup until
/// the master's next advert. Switches flood 224.0.0.x whatever the
/// reports say (RFC 4541 2.1.2), so the reports serve nothing. Returns
/// whether the setting was changed (it is left as found otherwise).
pub fn quiet_link_local_igmp() -> Result<bool, NetError> {
    const PATH: &str = "/proc/sys/net/ipv4/igmp_link_local_mcast_reports";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() != "0" => {
            std::fs::write(PATH, "0").map_err(io_err(format!("writing {PATH}")))?;
            Ok(true)
        }
        // Already off, or a kernel without the setting (before 4.3).
        _ => Ok(false),
    }
}

/// Brings interface `index` up or down.
pub async fn set_link(handle: &rtnetlink::Handle, index: u32, up: bool) -> Result<(), NetError> {
    let msg = rtnetlink::LinkUnspec::new_with_index(index);
    let msg = if up { msg.up() } else { msg.down() };
    handle.link().set(msg.build()).execute().await?;
    Ok(())
}

/// The index of interface `name` if it is a link on `base` with `mac`
/// (what [`create_vmac`] makes).
async fn existing_vmac(
    handle: &rtnetlink::Handle,
    name: &str,
    base: u32,
    mac: Mac,
) -> Result<Option<u32>, NetError> {
    use netlink_packet_route::link::LinkAttribute;
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = match links.try_next().await {
        Ok(Some(l)) => l,
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let on_base = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Link(b) if *b == base));
    let with_mac = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac.0.as_slice()));
    Ok((on_base && with_mac).then_some(link.header.index))
}

/// Removes the virtual-MAC interface `name` (nothing when it is gone).
pub async fn delete_vmac(handle: &rtnetlink::Handle, name: &str) -> Result<(), NetError> {
    if let Some(index) = link_index(handle, name).await? {
        match handle.link().del(index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The index of the interface `name`, if there is one.
async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV for an unknown name.
        Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The name of the interface with index `index`.
async fn link_name(handle: &rtnetlink::Handle, index: u32) -> Result<Option<String>, NetError> {
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.attributes.iter().find_map(|a| match a {
            netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })),
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `addr` is configured on the interface.
pub async fn has_address(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    addr: IpAddr,
) -> Result<bool, NetError> {
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    while let Some(msg) = stream.try_next().await? {
        if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(x) | AddressAttribute::Local(x) if *x == addr)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A gratuitous ARP for `vip` from `mac` (an ARP request for our own
/// address, broadcast), as keepalived sends.
pub fn garp_frame(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&vip.octets());
    f
}

/// Sockets for announcing addresses, opened once per instance: closing a
/// packet socket waits for an RCU grace period, which can take tens of
/// milliseconds on a busy machine - too long for a VRRP loop at 10 ms.
pub struct Announcer {
    ifindex: u32,
    mac: Mac,
    arp: Socket,
    arp_to: SockAddr,
    na: Option<Socket>,
}

impl Announcer {
    pub fn open(interface: &str, ifindex: u32, mac: Mac, v6: bool) -> Result<Announcer, NetError> {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // Protocol 0: a send-only packet socket receives nothing.
        let arp = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
            .map_err(io_err("packet socket for gratuitous ARP"))?;
        let arp_to = link_addr(ifindex, proto, Mac([0xff; 6])).map_err(io_err("sockaddr_ll"))?;
        let na = if v6 {
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                .map_err(io_err("ICMPv6 socket for neighbour advertisements"))?;
            s.bind_device(Some(interface.as_bytes()))
                .map_err(io_err("binding the ICMPv6 socket"))?;
            s.set_multicast_hops_v6(255).map_err(io_err("hop limit"))?;
            s.set_multicast_if_v6(ifindex)
                .map_err(io_err("multicast interface"))?;
            // Send-only: filter out every ICMPv6 type on receive.
            let _ = s.set_recv_buffer_size(0);
            Some(s)
        } else {
            None
        };
        Ok(Announcer {
            ifindex,
            mac,
            arp,
            arp_to,
            na,
        })
    }

    /// Gratuitous ARPs for `vips`.
    pub fn garps(&self, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        for vip in vips {
            self.arp
                .send_to(&garp_frame(self.mac, *vip), &self.arp_to)
                .map_err(io_err(format!("gratuitous ARP for {vip}")))?;
        }
        Ok(())
    }

    /// Unsolicited NAs for `vips` to all-nodes.
    pub fn nas(&self, vips: &[Ipv6Addr]) -> Result<(), NetError> {
        let Some(s) = &self.na else {
            return Ok(());
        };
        let all_nodes = SockAddr::from(SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            0,
            0,
            self.ifindex,
        ));
        for vip in vips {
            s.send_to(&unsolicited_na(self.mac, *vip), &all_nodes)
                .map_err(io_err(format!("neighbour advertisement for {vip}")))?;
        }
        Ok(())
    }
}

/// An unsolicited neighbour advertisement for `vip` (RFC 4861 7.2.6):
/// override flag, target link-layer address option. The kernel fills in
/// the ICMPv6 checksum.
pub fn unsolicited_na(mac: Mac, vip: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    m.extend_from_slice(&vip.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&mac.0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_layout() {
        let f = garp_frame(Mac([2, 0, 0, 0, 0, 1]), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "an ARP request");
        assert_eq!(&f[28..32], &[10, 0, 0, 100], "sender = VIP");
        assert_eq!(&f[38..42], &[10, 0, 0, 100], "target = VIP");
    }

    #[test]
    fn na_layout() {
        let m = unsolicited_na(Mac([2, 0, 0, 0, 0, 1]), "fd00::100".parse().expect("ip"));
        assert_eq!(m[0], 136);
        assert_eq!(m[4] & 0x20, 0x20, "override flag");
        assert_eq!(m.len(), 8 + 16 + 8);
        assert_eq!(&m[24..26], &[2, 1], "target link-layer address option");
    }
}
