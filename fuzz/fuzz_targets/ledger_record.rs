//! Fuzz the ledger's record decoder: any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_ledger::fuzz::record(data));
