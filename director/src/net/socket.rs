//! Socket plumbing shared by VRRP's raw sockets and BFD's UDP sockets:
//! integer socket options, and `recvmsg` with the ancillary data the
//! protocols read (the sender, the TTL / hop limit from IP_RECVTTL /
//! IPV6_RECVHOPLIMIT, the IPv6 destination from IPV6_RECVPKTINFO).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

/// Sets an integer socket option.
pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a plain int option on a socket the caller owns.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One received datagram.
#[derive(Debug, Clone)]
pub struct Message {
    pub payload: Vec<u8>,
    /// The sender's address.
    pub src: Option<IpAddr>,
    /// TTL or hop limit on arrival (0 when not reported).
    pub ttl: u8,
    /// The IPv6 destination (IPV6_PKTINFO), when reported.
    pub dst6: Option<Ipv6Addr>,
    /// When the kernel received it (SO_TIMESTAMPNS), as an instant of this
    /// process's monotonic clock; `None` when not reported.
    pub arrived: Option<std::time::Instant>,
}

/// The instant the kernel's receive timestamp (`CLOCK_REALTIME`) names: its
/// age on the realtime clock taken back from now on the monotonic one. An
/// age that is negative or over a second (the realtime clock stepped) is
/// not trusted.
fn arrival(stamp: libc::timespec) -> Option<std::time::Instant> {
    let stamp = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(stamp.tv_sec).ok()?,
            u32::try_from(stamp.tv_nsec).ok()?,
        );
    let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
    let age = wall.duration_since(stamp).ok()?;
    if age > std::time::Duration::from_secs(1) {
        return None;
    }
    now.checked_sub(age)
}

/// Asks the kernel to stamp each datagram's arrival (read by [`recv`] as
/// [`Message::arrived`]).
pub fn stamp_arrivals(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Reads one datagram from `fd` (non-blocking sockets: WouldBlock when
/// there is none).
pub fn recv(fd: RawFd, capacity: usize) -> io::Result<Message> {
    let mut buf = vec![0u8; capacity];
    // cmsghdr needs 8-byte alignment: a u64 buffer gives it.
    let mut ctrl = [0u64; 32];
    // SAFETY: a zeroed sockaddr_storage is valid.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr, then every pointer set to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut from as *mut libc::sockaddr_storage as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&ctrl);
    // SAFETY: msg points at buffers that outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let src = match i32::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a = unsafe { *(&from as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a = unsafe { *(&from as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
        }
        _ => None,
    };
    let mut ttl = 0u8;
    let mut dst6 = None;
    let mut arrived = None;
    // SAFETY: walking the control buffer the kernel filled, with its macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let v = std::ptr::read_unaligned(data as *const libc::c_int);
                    ttl = v.clamp(0, 255) as u8;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    dst6 = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS) => {
                    arrived = arrival(std::ptr::read_unaligned(data as *const libc::timespec));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Message {
        payload: buf,
        src,
        ttl,
        dst6,
        arrived,
    })
}

/// SCHED_FIFO for the VRRP thread when permitted (keepalived does the same
/// with `vrrp_rt_priority`): adverts leave on time on a busy machine.
pub fn raise_priority() {
    // Lock the process's memory too (keepalived does the same): a page
    // fault on this thread would wait for the address-space lock, which a
    // normal-priority thread may hold while the machine is busy.
    // SAFETY: plain syscall; failure only costs determinism.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "memory not locked");
    }
    let param = libc::sched_param { sched_priority: 10 };
    // SCHED_RESET_ON_FORK: scripts we start run with normal scheduling.
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: plain syscall on the current thread.
    let r = unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &param) };
    if r != 0 {
        tracing::debug!(errno = r, "VRRP thread keeps normal scheduling");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        net::UdpSocket,
        os::fd::AsRawFd as _,
        time::{Duration, Instant},
    };

    #[test]
    fn a_datagram_read_late_is_dated_by_its_arrival() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        stamp_arrivals(rx.as_raw_fd()).expect("SO_TIMESTAMPNS");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The kernel turns receive stamping on for the whole host a moment
        // after the first socket asks (deferred work); until then a
        // datagram is dated when it is read. Give it that moment, and a
        // few tries: a dating by the read fails every one of them.
        std::thread::sleep(Duration::from_millis(100));
        let mut seen = Vec::new();
        for _ in 0..5 {
            let sent = Instant::now();
            tx.send_to(b"advert", rx.local_addr().expect("address"))
                .expect("send");
            // Read 200 ms after it arrived: the arrival, not the read, is
            // what `arrived` says.
            std::thread::sleep(Duration::from_millis(200));
            let m = recv(rx.as_raw_fd(), 64).expect("recv");
            let read = Instant::now();
            assert_eq!(m.payload, b"advert");
            let arrived = m.arrived.expect("a timestamp");
            assert!(
                arrived >= sent - Duration::from_millis(1),
                "{arrived:?} before {sent:?}"
            );
            let age = read.duration_since(arrived);
            if age >= Duration::from_millis(190) {
                seen.clear();
                break;
            }
            seen.push(age);
        }
        assert!(
            seen.is_empty(),
            "dated {seen:?} before it was read: the read, not the arrival"
        );
        // Without the option there is no stamp (the caller falls back to
        // the time it read it).
        let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"x", plain.local_addr().expect("address"))
            .expect("send");
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(recv(plain.as_raw_fd(), 64).expect("recv").arrived, None);
    }
}
