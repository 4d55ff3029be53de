//! Fuzz the W3C `traceparent` parser (an HTTP header or `_meta` value a caller sends): any
//! bytes, never a panic; what parses prints back to a value that parses to the same context.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(t) = warden_core::trace::TraceParent::parse(s) {
            assert_eq!(
                warden_core::trace::TraceParent::parse(&t.to_string()),
                Some(t)
            );
        }
    }
});
