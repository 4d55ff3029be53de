//! Fuzz the session lineage decoder and the signed-request header parser: never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_identity::fuzz::lineage_and_request(data));
