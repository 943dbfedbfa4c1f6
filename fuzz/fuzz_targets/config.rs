//! Fuzz target: the invariants of `director::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::config(data));
