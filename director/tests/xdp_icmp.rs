//! The XDP program through BPF_PROG_TEST_RUN on crafted frames (root, no
//! network namespace): ICMP and ICMPv6 errors for a VIP follow the flow they
//! quote.

mod common;

use common::*;

#[test]
fn icmp_errors_follow_the_flow_they_quote() {
    let dp = loaded(&web());
    let client = ip("10.3.0.1");
    for port in 2000..2050u16 {
        let syn = frames::tcp_frame(client, port, ip("10.0.0.100"), 80, SYN);
        let (_, mac) = run(&dp, &syn);
        // The real server's reply VIP:80 -> client:port, quoted by a router.
        let quoted = frames::ipv4(
            [10, 0, 0, 100],
            [10, 3, 0, 1],
            6,
            Frag::default(),
            &[],
            &frames::tcp(80, port, ACK)[..8],
        );
        let err = frames::icmp_error_frame(ip("10.9.9.9"), ip("10.0.0.100"), 3, 4, &quoted);
        assert_eq!(run(&dp, &err), (XDP_TX, mac), "port {port}");
        // Other ICMP errors (port unreachable) are the kernel's.
        let other = frames::icmp_error_frame(ip("10.9.9.9"), ip("10.0.0.100"), 3, 3, &quoted);
        assert_eq!(run(&dp, &other).0, XDP_PASS);
    }
    // ICMPv6 packet too big.
    let client = ip("fd00::3:1");
    let syn = frames::tcp_frame(client, 3000, ip("fd00::100"), 80, SYN);
    let (_, mac) = run(&dp, &syn);
    let (IpAddr::V6(c), IpAddr::V6(v)) = (client, ip("fd00::100")) else {
        unreachable!()
    };
    let quoted = frames::ipv6(v.octets(), c.octets(), 6, &frames::tcp(80, 3000, ACK)[..8]);
    let err = frames::icmp_error_frame(ip("fd00::9"), ip("fd00::100"), 2, 0, &quoted);
    assert_eq!(run(&dp, &err), (XDP_TX, mac));
    // A bogus quoted header: passed.
    let err = frames::icmp_error_frame(ip("fd00::9"), ip("fd00::100"), 2, 0, &[0u8; 12]);
    assert_eq!(run(&dp, &err).0, XDP_PASS);
}
