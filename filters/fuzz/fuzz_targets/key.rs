#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sg_fuzzprops::key(data));
