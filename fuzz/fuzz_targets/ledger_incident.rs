//! Fuzz the incident bundle reader and verifier: any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_ledger::fuzz::incident(data));
