#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| syncstead_fuzz::hawk_header(data));
