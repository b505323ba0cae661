#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| helmetd_fuzz::sedna_body(data));
