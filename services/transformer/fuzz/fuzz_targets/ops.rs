#![no_main]
//! The operation language: parse, canonical form, parse again.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fms_transformer::fuzz::ops(data));
