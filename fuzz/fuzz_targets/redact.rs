//! Fuzz redaction of untrusted upstream output: any bytes, never a panic, and the exact secret
//! never survives (neither raw nor JSON-escaped).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let out = warden_executor::fuzz::redact(data);
    assert!(!out.contains(warden_executor::fuzz::SECRET), "the secret survived");
    assert!(!out.contains("fuzz-Secret-value\\/42+"), "the escaped secret survived");
});
