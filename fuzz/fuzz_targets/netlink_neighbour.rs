//! Fuzz target: the invariants of `director::fuzzing::netlink_neighbour`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::netlink_neighbour(data));
