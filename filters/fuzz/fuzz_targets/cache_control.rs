#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sg_fuzzprops::cache_control(data));
