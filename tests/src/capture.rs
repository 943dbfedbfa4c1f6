//! Watching a namespace's wire and address table with the kernel's own
//! clock: frames from a packet socket with their receive (or transmit)
//! timestamps, and addresses as rtnetlink reports them being added. Run
//! each on a thread inside the namespace ([`crate::Netns::spawn_thread`]).
//! And the other side of a measurement: a link set down at a precise
//! instant ([`LinkSwitch`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, anyhow, ensure};

/// One frame seen by [`frames`].
#[derive(Clone, Debug)]
pub struct Frame {
    /// When the kernel saw it (its packet timestamp, as an instant of this
    /// process's monotonic clock): the moment it was sent, for a frame
    /// this namespace sent.
    pub at: Instant,
    /// Sent from this namespace (not received).
    pub outgoing: bool,
    /// The ethertype (ETH_P_IP, ETH_P_ARP...).
    pub protocol: u16,
    /// The frame without its link header (the first 256 bytes).
    pub data: Vec<u8>,
}

impl Frame {
    /// An ARP frame whose sender and target address are both `address`
    /// (a gratuitous ARP announcing it).
    pub fn is_garp_for(&self, address: Ipv4Addr) -> bool {
        self.protocol == libc::ETH_P_ARP as u16
            && self.data.len() >= 28
            && self.data[14..18] == address.octets()
            && self.data[24..28] == address.octets()
    }

    /// An IPv4 VRRP advert (protocol 112) and its source.
    pub fn vrrp_source(&self) -> Option<Ipv4Addr> {
        let d = &self.data;
        (self.protocol == libc::ETH_P_IP as u16 && d.len() >= 20 && d[0] >> 4 == 4 && d[9] == 112)
            .then(|| Ipv4Addr::new(d[12], d[13], d[14], d[15]))
    }
}

/// The instant a kernel timestamp (`CLOCK_REALTIME`) names.
fn instant_of(stamp: libc::timespec) -> Option<Instant> {
    let stamp = UNIX_EPOCH
        + Duration::new(
            u64::try_from(stamp.tv_sec).ok()?,
            u32::try_from(stamp.tv_nsec).ok()?,
        );
    let (now, wall) = (Instant::now(), SystemTime::now());
    now.checked_sub(wall.duration_since(stamp).ok()?)
}

/// Sets socket option `name` (at `SOL_SOCKET`) to `value`.
fn set_option<T>(fd: &OwnedFd, name: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: a value of the size given, read by the kernel only.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    ensure!(
        r == 0,
        "socket option {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A socket of `domain`, `kind`, `protocol`, whose receive calls time out
/// every 20 ms (so that a watcher sees its stop flag).
fn socket(domain: i32, kind: i32, protocol: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    set_option(&fd, libc::SO_RCVTIMEO, &timeout)?;
    Ok(fd)
}

/// Every frame this namespace sends or receives that `keep` (given the
/// ethertype and the frame without its link header) keeps, with the
/// kernel's timestamp, until `stop`.
pub fn frames(
    stop: &AtomicBool,
    keep: impl Fn(u16, &[u8]) -> bool,
    out: &Mutex<Vec<Frame>>,
) -> Result<()> {
    let fd = socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from((libc::ETH_P_ALL as u16).to_be()),
    )?;
    // Timestamps; and room for bursts (a takeover announces every address
    // several times at once): 16 MiB, past net.core.rmem_max as root.
    for (name, value) in [(libc::SO_TIMESTAMPNS, 1), (libc::SO_RCVBUFFORCE, 16 << 20)] {
        set_option::<libc::c_int>(&fd, name, &value)?;
    }
    let mut buf = [0u8; 256];
    // Room for one SCM_TIMESTAMPNS and then some (8-byte aligned).
    let mut control = [0u64; 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: zeroed sockaddr_ll and msghdr are valid values; the
        // header's pointers are set to buffers that outlive the call.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        if n <= 0 {
            continue;
        }
        let data = &buf[..n as usize];
        let protocol = u16::from_be(from.sll_protocol);
        if !keep(protocol, data) {
            continue;
        }
        let mut at = None;
        // SAFETY: walks the control messages the kernel wrote, within
        // msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                    at = instant_of(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        out.lock()
            .map_err(|_| anyhow!("frame list poisoned"))?
            .push(Frame {
                at: at.unwrap_or_else(Instant::now),
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                protocol,
                data: data.to_vec(),
            });
    }
    Ok(())
}

/// The addresses added in this namespace (rtnetlink's RTM_NEWADDR, IPv4
/// and IPv6), each with the instant this thread read the report: never
/// before the kernel added it, until `stop`. Netlink reports carry no
/// timestamp, so this thread runs at real-time priority 50 (above the
/// daemon's VRRP thread, 10): it reads each report within microseconds
/// even while the daemon is busy adding more.
pub fn added_addresses(stop: &AtomicBool, out: &Mutex<Vec<(Instant, IpAddr)>>) -> Result<()> {
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: plain call on the current thread.
    let r = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    ensure!(r == 0, "SCHED_FIFO for the address watcher: error {r}");
    let fd = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    // SAFETY: zeroed sockaddr_nl is valid; the groups are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: a sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    ensure!(r == 0, "netlink bind: {}", std::io::Error::last_os_error());
    set_option::<libc::c_int>(&fd, libc::SO_RCVBUFFORCE, &(16 << 20))?;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the buffer outlives the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A report lost to a full queue would make the list lie.
            ensure!(
                e.raw_os_error() != Some(libc::ENOBUFS),
                "address reports were lost (ENOBUFS)"
            );
            continue;
        }
        if n == 0 {
            continue;
        }
        let at = Instant::now();
        let mut rest = &buf[..n as usize];
        // nlmsghdr (16 bytes), ifaddrmsg (8), then attributes.
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                break;
            }
            if kind == libc::RTM_NEWADDR && len >= 24 {
                let family = i32::from(rest[16]);
                let mut attrs = &rest[24..len];
                while attrs.len() >= 4 {
                    let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
                    let akind = u16::from_ne_bytes([attrs[2], attrs[3]]);
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    let value = &attrs[4..alen];
                    if akind == libc::IFA_ADDRESS {
                        let ip = match (family, value.len()) {
                            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                                value[0], value[1], value[2], value[3],
                            ))),
                            (libc::AF_INET6, 16) => {
                                let mut o = [0u8; 16];
                                o.copy_from_slice(value);
                                Some(IpAddr::V6(Ipv6Addr::from(o)))
                            }
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            out.lock()
                                .map_err(|_| anyhow!("address list poisoned"))?
                                .push((at, ip));
                        }
                    }
                    attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
                }
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
    Ok(())
}

/// An interface of a namespace that can be set down within microseconds
/// of the call (an `ip link set` runs a process: milliseconds, and as
/// many of jitter): a socket made inside the namespace keeps it, and the
/// flags ioctl acts there.
pub struct LinkSwitch {
    fd: OwnedFd,
    request: libc::ifreq,
}

impl LinkSwitch {
    /// For `interface` of `ns`.
    pub fn new(ns: &crate::Netns, interface: &str) -> Result<LinkSwitch> {
        let fd = ns.run(|| socket(libc::AF_INET, libc::SOCK_DGRAM, 0))??;
        // SAFETY: a zeroed ifreq is valid; the name is copied in below.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        ensure!(
            interface.len() < request.ifr_name.len(),
            "interface name too long: {interface}"
        );
        for (d, s) in request.ifr_name.iter_mut().zip(interface.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(LinkSwitch { fd, request })
    }

    /// Sets the interface down.
    pub fn down(&mut self) -> Result<()> {
        // SAFETY: an ifreq naming the interface; the kernel fills its flags.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut self.request) };
        ensure!(r == 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
        // SAFETY: the flags the kernel just wrote, in the union it wrote.
        unsafe {
            self.request.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
        }
        // SAFETY: the same ifreq, with IFF_UP cleared.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCSIFFLAGS, &self.request) };
        ensure!(r == 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
        Ok(())
    }
}
