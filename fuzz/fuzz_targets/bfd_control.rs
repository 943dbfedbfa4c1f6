//! Fuzz target: the invariants of `director::testing::fuzzing::bfd_control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::bfd_control(data));
