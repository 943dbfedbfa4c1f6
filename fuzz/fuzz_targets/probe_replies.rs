//! Fuzz target: the invariants of `director::testing::fuzzing::probe_replies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::probe_replies(data));
