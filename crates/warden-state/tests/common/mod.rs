//! What the backend suites share.

#[allow(dead_code, reason = "only the bus suites use it")]
pub mod bus;

/// The Redis of `WARDEN_TEST_REDIS_URL` (`.ci/run` sets it) and a key prefix of this run's own
/// for `what`; `None`, with a notice, without it.
pub fn redis_place(what: &str) -> Option<(String, String)> {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis {what}");
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Some((
        url,
        format!("warden-test:{what}:{}:{nanos}:", std::process::id()),
    ))
}
