#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| syncstead_fuzz::key_id(data));
