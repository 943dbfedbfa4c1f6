//! Fuzz target: the invariants of `director::testing::fuzzing::vrrp_advert`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| director::testing::fuzzing::vrrp_advert(data));
