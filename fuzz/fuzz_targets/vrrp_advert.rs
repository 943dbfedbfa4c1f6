//! Fuzz target: the invariants of `director::fuzzing::vrrp_advert`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::fuzzing::vrrp_advert(data));
