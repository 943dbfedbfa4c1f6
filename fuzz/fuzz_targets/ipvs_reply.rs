//! Fuzz target: the invariants of `director::testing::fuzzing::ipvs_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::ipvs_reply(data));
