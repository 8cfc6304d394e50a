#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lakeledger_fuzz::audit_notes(data));
