//! Fuzz target: the invariants of `director::fuzzing::bfd_control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::bfd_control(data));
