//! How fast a brake reaches the other instances of a fleet (issue 22's target: p99 ≤ 100 ms):
//! instance A announces a scope on the brake bus, instance B's listener hears it. 1,000
//! announcements, 5 ms apart, from one bus to a listener on another (two `RedisBrakes` on the
//! Redis of `WARDEN_TEST_REDIS_URL`, as two instances hold them), beside the in-process bus.
//! Run in release:
//!
//! ```sh
//! WARDEN_TEST_REDIS_URL=redis://127.0.0.1:6379/ cargo bench -p warden-state --bench brake_bus
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark harness"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use warden_core::brakes::BrakeBus;
use warden_core::state::HoldScope;
use warden_state::{MemoryBrakes, RedisBrakes};

const N: usize = 1000;

/// Announces `N` scopes through `a`, each heard by a listener on `b`; the delays, sorted.
fn measure(a: Arc<dyn BrakeBus>, b: Arc<dyn BrakeBus>) -> Vec<Duration> {
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let listener = std::thread::spawn(move || {
        b.listen(
            &mut |scope| {
                if let HoldScope::Agent(id) = scope {
                    let _ = tx.send((id, Instant::now()));
                }
            },
            &|| s.load(Ordering::Relaxed),
        )
        .unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut delays = Vec::with_capacity(N);
    for i in 0..N {
        let sent = Instant::now();
        a.announce(&HoldScope::Agent(format!("agent-{i}"))).unwrap();
        let (id, heard) = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(id, format!("agent-{i}"));
        delays.push(heard.duration_since(sent));
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();
    delays.sort();
    delays
}

fn report(name: &str, d: &[Duration]) {
    let at = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    println!(
        "  {name:<34} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("{N} brakes announced through one bus, heard on another's listener:");
    let memory: Arc<dyn BrakeBus> = Arc::new(MemoryBrakes::new());
    report(
        "in process (one instance)",
        &measure(Arc::clone(&memory), memory),
    );
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; the Redis bus is not measured");
        return;
    };
    let prefix = format!("warden-bench:brakes:{}:", std::process::id());
    let a: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    let b: Arc<dyn BrakeBus> = Arc::new(RedisBrakes::new(&url, &prefix).unwrap());
    report("Redis pub/sub (instance to instance)", &measure(a, b));
}
