#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lakeledger_fuzz::ingest_json(data));
