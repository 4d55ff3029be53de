//! Fuzz what a witness reads: add-checkpoint requests, witness keys, cosigned checkpoints.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_ledger::fuzz::witness(data));
