//! The benchmarks' clock for CPU: the process's CPU time, every thread.

use std::time::Duration;

/// The process's CPU time (user + system, every thread), from `/proc/self/stat` (clock ticks
/// of 10 ms).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = stat.rsplit(')').next().unwrap();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / 100.0)
}
