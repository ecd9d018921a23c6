#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enrollgate::fuzzing::name_template(data));
