//! Fuzz the manifest parser and validator: any bytes, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_policy::fuzz::manifest(data));
