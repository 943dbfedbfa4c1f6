//! The XDP program under random and crafted input (BPF_PROG_TEST_RUN):
//! hundreds of thousands of generated frames - random bytes, valid headers
//! with random fields, every truncation, IPv4 options, IPv6 extension
//! headers, VLAN tags, fragments, ICMP errors with bogus inner headers.
//! For every frame: the verdict is never XDP_ABORTED, a frame is only
//! rewritten (XDP_TX) when it is addressed to a configured VIP, a rewrite
//! changes nothing but the MAC addresses, and a passed frame is untouched
//! (the checks live in `common::run`). Seeded, so a failure is reproducible:
//! the seed and the frame are printed. `DIRECTOR_PROPERTY_FRAMES` sets the
//! number of frames per family (default 60,000).

mod common;

use std::net::IpAddr;

use common::*;
use director::net::frames::{self, ACK, Frag, SYN};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

const VIP4: [u8; 4] = [10, 0, 0, 100];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00];

fn frames_per_family() -> usize {
    std::env::var("DIRECTOR_PROPERTY_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000)
}

/// `DIRECTOR_PROPERTY_SEED`, or a fresh one; said at the start, so even
/// a run that hangs or crashes names the seed that reproduces it.
fn seed() -> u64 {
    let seed = match std::env::var("DIRECTOR_PROPERTY_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DIRECTOR_PROPERTY_SEED={v:?} is not a number")),
        Err(_) => rand::rng().random(),
    };
    eprintln!("seed {seed}: {}", rerun(seed));
    seed
}

/// How to run exactly this input again.
fn rerun(seed: u64) -> String {
    format!("rerun with DIRECTOR_PROPERTY_SEED={seed} cargo test -p director --test xdp_property")
}

/// Random bytes, as many as `range` draws.
fn some_bytes(rng: &mut StdRng, range: std::ops::Range<usize>) -> Vec<u8> {
    let n = rng.random_range(range);
    bytes(rng, n)
}

fn bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// The frame's IP destination, read by the test's own parser (untagged
/// Ethernet only: the program passes tagged frames).
fn destination(f: &[u8]) -> Option<IpAddr> {
    match f.get(12..14)? {
        [0x08, 0x00] => {
            let d: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        [0x86, 0xdd] => {
            let d: [u8; 16] = f.get(38..54)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        _ => None,
    }
}

/// The real servers (indexes for `mac_of`) a rewritten frame may go to,
/// by the services of `web()`: TCP 80 on both VIPs has servers 1-3, UDP 53
/// on the IPv4 VIP servers 1-2. An unfragmented IPv4 TCP or UDP frame must
/// be for the service's port; fragments follow their VIP and protocol;
/// ICMP errors follow the flow they quote (any service of the VIP).
fn allowed_servers(f: &[u8]) -> Vec<u8> {
    let all = vec![1, 2, 3];
    if f.get(12..14) != Some(&[0x08, 0x00]) {
        // IPv6: only TCP 80 is served.
        return all;
    }
    let ihl = usize::from(f.get(14).copied().unwrap_or(0x45) & 0x0f) * 4;
    let protocol = f.get(23).copied().unwrap_or(0);
    let frag = u16::from_be_bytes([
        f.get(20).copied().unwrap_or(0),
        f.get(21).copied().unwrap_or(0),
    ]);
    let fragment = frag & 0x3fff != 0;
    let dport = f
        .get(14 + ihl + 2..14 + ihl + 4)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    match protocol {
        6 if fragment || dport == Some(80) => all,
        17 if fragment || dport == Some(53) => vec![1, 2],
        1 => all,
        // A TCP/UDP frame to a port no service has, or another protocol:
        // nothing may take it.
        _ => Vec::new(),
    }
}

/// An address: the VIP half the time (so the interesting paths run).
fn v4(rng: &mut StdRng) -> [u8; 4] {
    if rng.random_bool(0.5) {
        VIP4
    } else {
        [10, 0, 0, rng.random()]
    }
}

fn v6(rng: &mut StdRng) -> [u8; 16] {
    if rng.random_bool(0.5) {
        VIP6
    } else {
        let mut a = VIP6;
        a[15] = rng.random();
        a
    }
}

/// A transport header with random fields (ports biased to the services').
fn l4(rng: &mut StdRng, protocol: u8) -> Vec<u8> {
    let port = |rng: &mut StdRng| match rng.random_range(0..4) {
        0 => 80,
        1 => 53,
        _ => rng.random(),
    };
    let mut h = match protocol {
        6 => frames::tcp(rng.random(), port(rng), rng.random()),
        17 => frames::udp(rng.random(), port(rng), &some_bytes(rng, 0..16)),
        _ => some_bytes(rng, 0..40),
    };
    // Random sequence numbers, offsets, lengths, checksums.
    if rng.random_bool(0.5) {
        for b in h.iter_mut().skip(4) {
            if rng.random_bool(0.2) {
                *b = rng.random();
            }
        }
    }
    h.extend(some_bytes(rng, 0..32));
    h
}

fn protocol(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..6) {
        0..=2 => 6,
        3 => 17,
        4 => 1,
        _ => rng.random(),
    }
}

/// A valid-looking IPv4 frame with random fields: options, fragments,
/// lengths that lie, any protocol.
fn ipv4_frame(rng: &mut StdRng) -> Vec<u8> {
    let p = protocol(rng);
    let words = rng.random_range(0..=10);
    let options = bytes(rng, words * 4);
    let frag = Frag {
        more: rng.random_bool(0.2),
        offset: if rng.random_bool(0.2) {
            rng.random_range(0..8192)
        } else {
            0
        },
    };
    let mut ip = frames::ipv4(
        [10, 1, 0, rng.random()],
        v4(rng),
        p,
        frag,
        &options,
        &l4(rng, p),
    );
    if rng.random_bool(0.2) {
        // Total length, IHL or version lying.
        match rng.random_range(0..3) {
            0 => ip[2..4].copy_from_slice(&rng.random::<u16>().to_be_bytes()),
            1 => ip[0] = (ip[0] & 0xf0) | rng.random_range(0..16),
            _ => ip[0] = (rng.random_range(0..16) << 4) | (ip[0] & 0x0f),
        }
    }
    frames::ethernet(0x0800, &ip)
}

/// A valid-looking IPv6 frame, with a random chain of extension headers
/// (hop-by-hop, routing, fragment, destination options).
fn ipv6_frame(rng: &mut StdRng) -> Vec<u8> {
    let p = protocol(rng);
    let mut payload = l4(rng, if p == 1 { 58 } else { p });
    let mut next = if p == 1 { 58 } else { p };
    for _ in 0..rng.random_range(0..4) {
        let kind = [0u8, 43, 44, 60][rng.random_range(0..4)];
        let mut h = if kind == 44 {
            frames::ipv6_fragment(
                next,
                rng.random_range(0..8192),
                rng.random_bool(0.5),
                rng.random(),
            )
        } else {
            let len = rng.random_range(0..4usize);
            let mut h = bytes(rng, 8 + 8 * len);
            h[0] = next;
            h[1] = if rng.random_bool(0.9) {
                len as u8
            } else {
                rng.random()
            };
            h
        };
        h.extend(payload);
        payload = h;
        next = kind;
    }
    frames::ethernet(
        0x86dd,
        &frames::ipv6(
            [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, rng.random()],
            v6(rng),
            next,
            &payload,
        ),
    )
}

/// An ICMP / ICMPv6 error whose quoted packet is random, truncated or lies.
fn icmp_error(rng: &mut StdRng) -> Vec<u8> {
    let quoted = {
        let inner = if rng.random_bool(0.5) {
            ipv4_frame(rng)
        } else {
            ipv6_frame(rng)
        };
        let mut q = inner[14..].to_vec();
        q.truncate(rng.random_range(0..=q.len()));
        q
    };
    if rng.random_bool(0.5) {
        frames::icmp_error_frame(
            IpAddr::from([10, 0, 0, rng.random::<u8>()]),
            IpAddr::from(v4(rng)),
            [3, 11, 12][rng.random_range(0..3)],
            rng.random_range(0..16),
            &quoted,
        )
    } else {
        frames::icmp_error_frame(
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, rng.random::<u16>()]),
            IpAddr::from(v6(rng)),
            [1, 2, 3, 4][rng.random_range(0..4)],
            rng.random(),
            &quoted,
        )
    }
}

/// A VLAN tag (or two) in front of a frame.
fn vlan(rng: &mut StdRng, inner: Vec<u8>) -> Vec<u8> {
    let mut f = inner[..12].to_vec();
    for _ in 0..rng.random_range(1..=2) {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&rng.random::<u16>().to_be_bytes());
    }
    f.extend_from_slice(&inner[12..]);
    f
}

/// Runs a frame and checks the properties.
fn check(
    dp: &director::dataplane::xdp::XdpDataplane,
    frame: &[u8],
    seed: u64,
    stats: &mut [u64; 4],
) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(dp, frame)));
    let (verdict, mac) = result.unwrap_or_else(|_| {
        panic!(
            "seed {seed}: the frame that broke a property: {frame:02x?} ({})",
            rerun(seed)
        )
    });
    if verdict == XDP_TX {
        let to_vip = matches!(destination(frame), Some(IpAddr::V4(a)) if a.octets() == VIP4)
            || matches!(destination(frame), Some(IpAddr::V6(a)) if a.octets() == VIP6);
        assert!(
            to_vip,
            "seed {seed}: rewrote a frame not addressed to a VIP: {frame:02x?} ({})",
            rerun(seed)
        );
        let allowed = allowed_servers(frame);
        assert!(
            allowed.iter().any(|i| mac_of(*i).0 == mac),
            "seed {seed}: sent to {mac:02x?}, not a real server of the frame's service (servers {allowed:?}): {frame:02x?} ({})",
            rerun(seed)
        );
    } else {
        assert_eq!(
            verdict,
            XDP_PASS,
            "seed {seed}: verdict {verdict} for {frame:02x?} ({})",
            rerun(seed)
        );
    }
    stats[verdict as usize] += 1;
}

#[test]
fn random_and_crafted_frames_keep_every_property() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dp = loaded(&web());
    let n = frames_per_family();
    let mut stats = [0u64; 4];
    let mut total = 0u64;
    // Random bytes, and random bytes behind a real Ethernet + IP start.
    for _ in 0..n {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
        // (no driver hands those to XDP either).
        let len = rng.random_range(14..256);
        let f = bytes(&mut rng, len);
        check(&dp, &f, seed, &mut stats);
        let mut g = if rng.random_bool(0.5) {
            ipv4_frame(&mut rng)
        } else {
            ipv6_frame(&mut rng)
        };
        let cut = rng.random_range(14..=g.len());
        let tail = bytes(&mut rng, g.len() - cut);
        g[cut..].copy_from_slice(&tail);
        check(&dp, &g, seed, &mut stats);
        total += 2;
    }
    // Valid-looking frames with random fields, VLAN-tagged copies, ICMP
    // errors, and every truncation of some of them.
    for i in 0..n {
        let f = match i % 3 {
            0 => ipv4_frame(&mut rng),
            1 => ipv6_frame(&mut rng),
            _ => icmp_error(&mut rng),
        };
        check(&dp, &f, seed, &mut stats);
        let tagged = vlan(&mut rng, f.clone());
        check(&dp, &tagged, seed, &mut stats);
        total += 2;
        if i % 64 == 0 {
            for cut in 14..f.len() {
                check(&dp, &f[..cut], seed, &mut stats);
                total += 1;
            }
        }
    }
    // Established flows and SYNs to the VIPs must still be forwarded after
    // all that (the garbage did not poison the tables).
    let syn = frames::tcp_frame(
        "10.1.0.1".parse().expect("ip"),
        4242,
        IpAddr::from(VIP4),
        80,
        SYN,
    );
    assert_eq!(run(&dp, &syn).0, XDP_TX, "seed {seed}: {}", rerun(seed));
    let ack = frames::tcp_frame(
        "10.1.0.1".parse().expect("ip"),
        4242,
        IpAddr::from(VIP4),
        80,
        ACK,
    );
    assert_eq!(run(&dp, &ack).0, XDP_TX, "seed {seed}: {}", rerun(seed));
    eprintln!(
        "seed {seed}: {total} frames, {} passed, {} rewritten (XDP_TX), 0 aborted",
        stats[XDP_PASS as usize], stats[XDP_TX as usize]
    );
    assert!(total >= 4 * n as u64);
    assert!(
        stats[XDP_TX as usize] > 1000,
        "too few frames reached the rewrite path: {stats:?}"
    );
}

/// A seed names one input: the generators draw only from the seeded
/// generator, so two runs of one seed make the same frames, byte for
/// byte (what makes a printed seed worth rerunning).
#[test]
fn a_seed_reproduces_its_frames() {
    let frames = |seed: u64| -> Vec<Vec<u8>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..300)
            .map(|i| match i % 4 {
                0 => ipv4_frame(&mut rng),
                1 => ipv6_frame(&mut rng),
                2 => icmp_error(&mut rng),
                _ => {
                    let f = ipv4_frame(&mut rng);
                    vlan(&mut rng, f)
                }
            })
            .collect()
    };
    assert_eq!(frames(7), frames(7));
    assert_ne!(frames(7), frames(8));
}
