//! Fuzz the credential token decoder and chain verifier: any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_identity::fuzz::credential(data));
