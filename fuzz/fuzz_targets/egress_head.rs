//! The egress proxy's request-head parser: bytes from a sandboxed (untrusted) program.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((host, port)) = warden_sandbox::egress::parse_head(data) {
        // Whatever parses names a plausible host and a real port.
        assert!(port != 0);
        assert!(!host.is_empty() && host.len() <= 253);
        assert!(!host.contains(['/', '@', ' ', '\r', '\n']));
    }
});
