//! Checksums.

use super::*;

/// A one's complement sum folded to 16 bits (not inverted).
#[inline(always)]
pub(crate) fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The IPv4 header checksum of the 20 bytes of `h` (its checksum field
/// zero).
#[inline(always)]
pub(crate) fn ipv4_checksum(h: &[u8]) -> [u8; 2] {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < IPV4_LEN && i + 1 < h.len() {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    (!fold(sum)).to_be_bytes()
}
