#![no_main]
//! The image decode path with the service's limits (small ones).

libfuzzer_sys::fuzz_target!(|data: &[u8]| fms_transformer::fuzz::decode(data));
