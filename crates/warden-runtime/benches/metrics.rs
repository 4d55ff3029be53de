//! What `/metrics` costs a governed call (issue 24's speed target: at most 10 µs per call):
//! the instrumentation one call goes through — its decision counted under its labels, three
//! stage timings, the whole call's timing — from two threads at once, over 200 label sets
//! (tools × tenants × outcomes, as a manifest bounds them). Run in release:
//!
//! ```sh
//! cargo bench -p warden-runtime --bench metrics
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "benchmark harness"
)]

#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_time;

use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_runtime::metrics::{Metrics, Stage};

const CALLS: u64 = 2_000_000;
const THREADS: u64 = 2;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tools: Vec<String> = (0..20).map(|i| format!("tool.n{i}")).collect();
    let tenants: Vec<String> = (0..5).map(|i| format!("tenant-{i}")).collect();
    let m = Arc::new(Metrics::default());
    let started = Instant::now();
    let cpu0 = cpu_time();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (m, tools, tenants) = (Arc::clone(&m), tools.clone(), tenants.clone());
            std::thread::spawn(move || {
                for i in 0..CALLS / THREADS {
                    let k = (i + t) as usize;
                    let outcome = ["allow", "deny"][k % 2];
                    m.decided(
                        outcome,
                        "low",
                        (&tools[k % tools.len()], true),
                        (&tenants[k % tenants.len()], true),
                    );
                    m.stage(Stage::Decide, Duration::from_micros(20));
                    m.stage(Stage::LedgerAppend, Duration::from_micros(150));
                    m.stage(Stage::Execute, Duration::from_micros(300));
                    m.governed(Duration::from_micros(500));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu0;
    let scrape = Instant::now();
    let text = warden_runtime::metrics::Scrape::default().write(&m);
    let scrape = scrape.elapsed();
    println!(
        "metrics: {CALLS} calls on {THREADS} threads: {:.0} ns CPU per call, {:.0} ns wall per call; a scrape of {} bytes: {:.0} µs",
        cpu.as_nanos() as f64 / CALLS as f64,
        wall.as_nanos() as f64 * THREADS as f64 / CALLS as f64,
        text.len(),
        scrape.as_secs_f64() * 1e6
    );
}
