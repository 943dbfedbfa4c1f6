//! Fuzz target: the invariants of `director::fuzzing::control_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::control_request(data));
