//! Fuzz target: the invariants of `director::testing::fuzzing::control_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::control_request(data));
