//! Fuzz target: the invariants of `director::fuzzing::probe_replies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::probe_replies(data));
