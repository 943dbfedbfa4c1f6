//! Fuzz target: the invariants of `director::testing::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::config(data));
