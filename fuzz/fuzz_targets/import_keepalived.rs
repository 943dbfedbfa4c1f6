//! Fuzz target: the invariants of `director::testing::fuzzing::import_keepalived`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::import_keepalived(data));
