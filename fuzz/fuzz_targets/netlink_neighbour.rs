//! Fuzz target: the invariants of `director::testing::fuzzing::netlink_neighbour`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::netlink_neighbour(data));
