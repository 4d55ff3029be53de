//! Fuzz the information-flow scanner (tool outputs and tasks are untrusted text): any bytes,
//! never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warden_policy::fuzz::flow(data));
