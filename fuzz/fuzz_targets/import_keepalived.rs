//! Fuzz target: the invariants of `director::fuzzing::import_keepalived`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::import_keepalived(data));
