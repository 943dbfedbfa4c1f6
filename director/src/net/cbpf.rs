//! Classic BPF opcodes of the socket filters the health checks attach
//! (`linux/filter.h`: class | size | mode, or class | op | source).

/// `ld #k` into X.
pub const LDX_IMM: u16 = 0x01;
/// `ldxb 4*([k]&0xf)`: X = an IPv4 header's length.
pub const LDX_B_MSH: u16 = 0xb1;
/// `ld [k]`, 32 bits.
pub const LD_W_ABS: u16 = 0x20;
/// `ldh [k]`.
pub const LD_H_ABS: u16 = 0x28;
/// `ldb [k]`.
pub const LD_B_ABS: u16 = 0x30;
/// `ldh [x + k]`.
pub const LD_H_IND: u16 = 0x48;
/// `ldb [x + k]`.
pub const LD_B_IND: u16 = 0x50;
/// `and #k`.
pub const AND_K: u16 = 0x54;
/// `jeq #k`.
pub const JEQ_K: u16 = 0x15;
/// `jset #k`.
pub const JSET_K: u16 = 0x45;
/// `ret #k`: keep k bytes (0: drop).
pub const RET_K: u16 = 0x06;
