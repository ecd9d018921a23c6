#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enrollgate_proto::fuzzing::enroll(data));
