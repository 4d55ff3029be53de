//! Fuzz a resource entry's URI pattern against the URI an agent asks to read: any bytes, never
//! a panic, and a pattern never admits a URI outside it, however the URI is spelled or encoded.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warden_policy::fuzz::resource_uri(data);
});
