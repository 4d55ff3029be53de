//! What the bus suites share (brakes, session notices): a listener on a thread of its own, and
//! waiting until a Redis channel has its listeners.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a bus is listened to: `on` for each message, until `stop`; an error ends the listener.
pub type Listen<T> =
    Box<dyn FnOnce(&mut dyn FnMut(T), &dyn Fn() -> bool) -> Result<(), String> + Send>;

/// A listener on its own thread: what it heard, and when.
pub struct Listener<T> {
    heard: Arc<Mutex<Vec<(T, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Clone + Send + 'static> Listener<T> {
    pub fn start(listen: Listen<T>) -> Listener<T> {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&heard), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            listen(
                &mut |m| h.lock().unwrap().push((m, Instant::now())),
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

    /// Waits up to 5 s until `n` messages were heard.
    pub fn heard(&self, n: usize) -> Vec<(T, Instant)> {
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
    pub fn stop(mut self) {
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
pub fn subscribed(url: &str, channel: &str, n: i64) {
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

/// Publishes `payload` as it is on `channel` (anyone with access to the Redis can).
pub fn publish_raw(url: &str, channel: &str, payload: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query(&mut c)
        .unwrap();
}
