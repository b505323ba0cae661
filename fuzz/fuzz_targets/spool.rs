#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| helmetd_fuzz::spool(data));
