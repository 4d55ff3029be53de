//! One test suite, run against every brake bus: what is announced reaches every listener (two
//! here: two instances), each scope as it was sent, quickly; a listener stops when asked; a bus
//! that cannot be reached is an error, never a silent success.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden_core::brakes::BrakeBus;
use warden_core::state::HoldScope;
use warden_state::{MemoryBrakes, RedisBrakes};

/// A listener on its own thread: what it heard, and when.
struct Listener {
    heard: Arc<Mutex<Vec<(HoldScope, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start(bus: Arc<dyn BrakeBus>) -> Listener {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&heard), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            bus.listen(
                &mut |scope| h.lock().unwrap().push((scope, Instant::now())),
                &|| s.load(Ordering::Relaxed),
            )
            .unwrap();
        });
        Listener {
            heard,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits up to 5 s until `n` scopes were heard.
    fn heard(&self, n: usize) -> Vec<(HoldScope, Instant)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let h = self.heard.lock().unwrap().clone();
            if h.len() >= n || Instant::now() > deadline {
                return h;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asks it to stop; it must within a second.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let asked = Instant::now();
        self.thread.take().unwrap().join().unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "the listener did not stop"
        );
    }
}

/// Waits up to 10 s until `n` listeners are subscribed to `channel` (a subscription exists only
/// once the listener is in).
fn subscribed(url: &str, channel: &str, n: i64) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_connection().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut c)
            .unwrap();
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} of {n} listeners subscribed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn suite(name: &str, a: Arc<dyn BrakeBus>, b: Arc<dyn BrakeBus>, ready: &dyn Fn()) {
    let (la, lb) = (
        Listener::start(Arc::clone(&a)),
        Listener::start(Arc::clone(&b)),
    );
    ready();
    let scopes = [
        HoldScope::Agent("coder-1".into()),
        HoldScope::Tenant("acme".into()),
        HoldScope::Session("coder-1/s-\"quoted\"".into()),
        HoldScope::Global,
    ];
    let mut sent = Vec::new();
    for (i, s) in scopes.iter().enumerate() {
        // Announced through either instance, heard by both.
        let through = if i % 2 == 0 { &a } else { &b };
        sent.push(Instant::now());
        through.announce(s).unwrap();
    }
    for l in [&la, &lb] {
        let heard = l.heard(scopes.len());
        let got: Vec<HoldScope> = heard.iter().map(|(s, _)| s.clone()).collect();
        assert_eq!(got, scopes, "{name}: what a listener heard");
        for ((_, at), sent) in heard.iter().zip(&sent) {
            let delay = at.duration_since(*sent);
            // Generous: a loaded CI machine; the benchmark measures the real delay.
            assert!(
                delay < Duration::from_secs(2),
                "{name}: heard after {delay:?}"
            );
        }
    }
    la.stop();
    lb.stop();
}

#[test]
fn memory_brakes_pass_the_suite() {
    // One process: both "instances" share the bus, as one instance's operator and Executor do.
    let bus: Arc<dyn BrakeBus> = Arc::new(MemoryBrakes::new());
    // In process, a listener hears what is announced after it starts listening; give both a
    // moment to be in.
    suite("memory", Arc::clone(&bus), bus, &|| {
        std::thread::sleep(Duration::from_millis(300));
    });
}

/// The Redis of `WARDEN_TEST_REDIS_URL` and a prefix of this call's own; `None` after a
/// notice when unset.
fn redis() -> Option<(String, String)> {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis brake bus");
        return None;
    };
    let prefix = format!(
        "warden-test:brakes:{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    Some((url, prefix))
}

#[test]
fn redis_brakes_pass_the_suite() {
    let Some((url, prefix)) = redis() else { return };
    // Two instances: two buses on the same Redis and prefix.
    let a: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let b: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let channel = format!("{prefix}brakes");
    suite("redis", a, b, &|| subscribed(&url, &channel, 2));
}

#[test]
fn a_fleet_hears_only_its_own_brakes_and_ignores_what_is_not_a_scope() {
    let Some((url, prefix)) = redis() else { return };
    let ours: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let other = RedisBrakes::new(&url, &format!("{prefix}other:")).unwrap();
    let l = Listener::start(Arc::clone(&ours));
    subscribed(&url, &format!("{prefix}brakes"), 1);
    other.announce(&HoldScope::Global).unwrap();
    // Garbage on the fleet's own channel (anyone with access to the Redis can publish).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}brakes"))
        .arg("{\"scope\":\"everything\"}")
        .query(&mut c)
        .unwrap();
    ours.announce(&HoldScope::Agent("a1".into())).unwrap();
    let heard: Vec<HoldScope> = l.heard(1).into_iter().map(|(s, _)| s).collect();
    std::thread::sleep(Duration::from_millis(200));
    let heard_later: Vec<HoldScope> = l.heard(1).into_iter().map(|(s, _)| s).collect();
    assert_eq!(heard, [HoldScope::Agent("a1".into())]);
    assert_eq!(heard_later, heard);
    l.stop();
}

#[test]
fn an_unreachable_redis_is_an_error_not_a_silent_success() {
    let bus = RedisBrakes::new("redis://127.0.0.1:1/", "warden-test:").unwrap();
    assert!(bus.announce(&HoldScope::Global).is_err());
    assert!(bus.listen(&mut |_| {}, &|| false).is_err());
}
