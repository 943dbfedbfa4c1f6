//! The BFD control packet (RFC 5880 section 4.1): 24 bytes without
//! authentication. Parsing checks what section 6.8.6 says a receiver must
//! check before anything else; every refusal has a reason, counted.

/// Session states (RFC 5880 section 4.1, "Sta").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    /// Lower-case name, as in the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "admin_down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

/// Diagnostic codes (RFC 5880 section 4.1) we set.
pub const DIAG_NONE: u8 = 0;
/// Control Detection Time Expired.
pub const DIAG_EXPIRED: u8 = 1;
/// Neighbor Signaled Session Down.
pub const DIAG_NEIGHBOR_DOWN: u8 = 3;
/// Administratively Down.
pub const DIAG_ADMIN_DOWN: u8 = 7;

/// Length of a control packet without authentication.
pub const LEN: usize = 24;

/// One control packet. Intervals in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet was dropped (RFC 5880 section 6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    Short,
    Version,
    Length,
    DetectMult,
    Multipoint,
    MyDiscriminator,
    /// Authentication present: none is configured.
    Authentication,
    /// Single hop: the TTL must be 255 (RFC 5881 section 5).
    Ttl,
    /// No session for it (unknown discriminator or source).
    NoSession,
    /// `your_disc` zero while our session is not Down.
    YourDiscriminator,
}

impl Drop {
    /// Every reason, so that metrics export each (at 0 until it happens).
    pub const ALL: [Drop; 10] = [
        Drop::Short,
        Drop::Version,
        Drop::Length,
        Drop::DetectMult,
        Drop::Multipoint,
        Drop::MyDiscriminator,
        Drop::Authentication,
        Drop::Ttl,
        Drop::NoSession,
        Drop::YourDiscriminator,
    ];

    /// The reason's name in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Short => "short",
            Drop::Version => "version",
            Drop::Length => "length",
            Drop::DetectMult => "detect_mult",
            Drop::Multipoint => "multipoint",
            Drop::MyDiscriminator => "my_discriminator",
            Drop::Authentication => "authentication",
            Drop::Ttl => "ttl",
            Drop::NoSession => "no_session",
            Drop::YourDiscriminator => "your_discriminator",
        }
    }
}

impl Control {
    /// Parses and checks a received packet (bytes from the network: any
    /// content is refused cleanly, never trusted).
    pub fn parse(b: &[u8]) -> Result<Control, Drop> {
        if b.len() < LEN {
            return Err(Drop::Short);
        }
        if b[0] >> 5 != 1 {
            return Err(Drop::Version);
        }
        let length = usize::from(b[3]);
        if length < LEN || length > b.len() {
            return Err(Drop::Length);
        }
        let flags = b[1];
        if flags & 0x04 != 0 {
            return Err(Drop::Authentication);
        }
        if flags & 0x01 != 0 {
            return Err(Drop::Multipoint);
        }
        if b[2] == 0 {
            return Err(Drop::DetectMult);
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let my_disc = word(4);
        if my_disc == 0 {
            return Err(Drop::MyDiscriminator);
        }
        Ok(Control {
            diag: b[0] & 0x1f,
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: b[2],
            my_disc,
            your_disc: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
        })
    }

    /// The packet's bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = (self.state.bits() << 6)
            | if self.poll { 0x20 } else { 0 }
            | if self.final_ { 0x10 } else { 0 }
            | if self.demand { 0x02 } else { 0 };
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Control {
        Control {
            diag: DIAG_EXPIRED,
            state: State::Init,
            poll: true,
            final_: false,
            demand: false,
            detect_mult: 3,
            my_disc: 0x1234_5678,
            your_disc: 7,
            desired_min_tx: 10_000,
            required_min_rx: 20_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn round_trips_and_matches_the_rfc_layout() {
        let c = sample();
        let b = c.encode();
        // Version 1, diag 1; state Init (2) in the top bits, P set.
        assert_eq!(b[0], 0x21);
        assert_eq!(b[1], 0x80 | 0x20);
        assert_eq!((b[2], b[3]), (3, 24));
        assert_eq!(&b[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(Control::parse(&b), Ok(c));
    }

    #[test]
    fn refuses_what_the_rfc_says_to_discard() {
        let good = sample().encode();
        assert_eq!(Control::parse(&good[..23]), Err(Drop::Short));
        let mut b = good;
        b[0] = 0x41; // version 2
        assert_eq!(Control::parse(&b), Err(Drop::Version));
        let mut b = good;
        b[3] = 23;
        assert_eq!(Control::parse(&b), Err(Drop::Length));
        b[3] = 48; // longer than the datagram
        assert_eq!(Control::parse(&b), Err(Drop::Length));
        let mut b = good;
        b[2] = 0;
        assert_eq!(Control::parse(&b), Err(Drop::DetectMult));
        let mut b = good;
        b[1] |= 0x01;
        assert_eq!(Control::parse(&b), Err(Drop::Multipoint));
        let mut b = good;
        b[1] |= 0x04;
        assert_eq!(Control::parse(&b), Err(Drop::Authentication));
        let mut b = good;
        b[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(Control::parse(&b), Err(Drop::MyDiscriminator));
        // Garbage never panics.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = Control::parse(&junk);
        }
    }
}
