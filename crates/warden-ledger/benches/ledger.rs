//! Ledger benchmarks (run in release: `cargo bench -p warden-ledger --bench ledger`).
//!
//! 1. Durable appends with group commit, against the baseline of one `fdatasync` per record,
//!    in the same run.
//! 2. Acknowledgment latency (p50/p99) at 50,000 records/s offered.
//! 3. `verify` throughput over a stored log.
//! 4. Inclusion-proof latency in a log of 10 million entries.
//!
//! Knobs (environment): `WARDEN_BENCH_APPEND_N` (default 1,000,000), `WARDEN_BENCH_VERIFY_N`
//! (1,000,000), `WARDEN_BENCH_PROOF_N` (10,000,000), `WARDEN_BENCH_DIR` (where the logs are
//! written; must be a real disk, not tmpfs, or fdatasync costs nothing).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark harness"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_ledger::file::{FileStore, Mode};
use warden_ledger::record::{DecisionRecord, Entry};
use warden_ledger::store::LedgerStore;
use warden_ledger::{proof, verify, Ledger, LedgerConfig, NoteSigner};

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var("WARDEN_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir_in(std::env::temp_dir()).unwrap(),
    }
}

/// A decision record of realistic size (~500 bytes canonical).
fn record(i: u64) -> Vec<u8> {
    Entry::Decision(DecisionRecord {
        decision: warden_core::Verdict::Allow,
        rules: vec![
            "policy:permit-reads".into(),
            "tier.low.auto".into(),
            "trust.junior.autonomous".into(),
        ],
        policies: vec!["permit-reads".into()],
        rationale: "allowed: tier `low` is automatic and policy permit-reads permits it".into(),
        escalation: None,
        manifest_version: 12,
        policy_hash: "sha256:9f2c4b7a1e3d5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef"
            .into(),
        agent: format!("agent-{}", i % 10_000),
        lineage: vec!["alice@acme.example".into()],
        tenant: "acme".into(),
        session: format!("session-{}", i % 50_000),
        trace_id: format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        request_id: format!("{i:032x}"),
        tool: "fs.read_file".into(),
        operation: warden_core::Operation::Use,
        arguments_hash: format!("sha256:{:064x}", i.wrapping_mul(0x2545_f491_4f6c_dd1d)),
        time: 1_795_341_600 + (i / 1000) as i64,
        provenance: Vec::new(),
    })
    .to_bytes()
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Lets the disk settle between phases: the previous phase's dirty pages (hundreds of MB) would
/// otherwise be written back during the next one and show up in its fdatasync latencies.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(1));
}

fn open_ledger(dir: &std::path::Path, config: LedgerConfig) -> Ledger {
    let store = Box::new(FileStore::open(dir, Mode::Write).unwrap());
    Ledger::open(
        store,
        NoteSigner::generate("warden.bench/ledger").unwrap(),
        config,
    )
    .unwrap()
}

/// Submits `n` records from `threads` producers, each keeping up to `window` in flight.
fn pipelined(ledger: &Arc<Ledger>, n: u64, threads: u64, window: usize) -> f64 {
    let entries: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(record).collect());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ledger = Arc::clone(ledger);
            let entries = Arc::clone(&entries);
            std::thread::spawn(move || {
                let mut inflight = std::collections::VecDeque::with_capacity(window);
                let mut i = t;
                while i < n {
                    if inflight.len() == window {
                        let tk: warden_ledger::Ticket = inflight.pop_front().unwrap();
                        tk.wait().unwrap();
                    }
                    inflight.push_back(ledger.submit_bytes(entries[i as usize].clone()));
                    i += threads;
                }
                for tk in inflight {
                    tk.wait().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run tiny sizes.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale = |n: u64| if quick { (n / 1000).max(200) } else { n };
    let append_n = scale(env_n("WARDEN_BENCH_APPEND_N", 1_000_000));
    let verify_n = scale(env_n("WARDEN_BENCH_VERIFY_N", 1_000_000));
    let proof_n = scale(env_n("WARDEN_BENCH_PROOF_N", 10_000_000));
    println!(
        "record size: {} bytes (canonical JSON)",
        record(123_456).len()
    );
    let only = std::env::var("WARDEN_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);

    // 1a. Baseline: one fdatasync per record (a batch of one).
    if run("append") {
        settle();
        let dir = bench_dir();
        let ledger = Arc::new(open_ledger(
            dir.path(),
            LedgerConfig {
                max_batch: 1,
                ..LedgerConfig::default()
            },
        ));
        let n = scale(20_000);
        let rate = pipelined(&ledger, n, 1, 1);
        println!("baseline: fdatasync per record: {rate:.0} records/s ({n} records)");
        let group = Arc::new(open_ledger(
            &dir.path().join("group"),
            LedgerConfig::default(),
        ));
        let grate = pipelined(&group, append_n, 4, 16_384);
        println!(
            "group commit: {grate:.0} records/s ({append_n} records, 4 producers) = {:.1}x the baseline",
            grate / rate
        );
    }

    // 2. Acknowledgment latency at 50,000 records/s offered.
    if run("latency") {
        settle();
        let dir = bench_dir();
        let interval = env_n("WARDEN_BENCH_CHECKPOINT_MS", 1000);
        let ledger = Arc::new(open_ledger(
            dir.path(),
            LedgerConfig {
                checkpoint_interval: Duration::from_millis(interval),
                ..LedgerConfig::default()
            },
        ));
        let rate = 50_000u64;
        let n = scale(150_000);
        let entries: Vec<Vec<u8>> = (0..n).map(record).collect();
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, warden_ledger::Ticket)>();
        let collector = std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(n as usize);
            for (at, tk) in rx {
                tk.wait().unwrap();
                lat.push(at.elapsed());
            }
            lat
        });
        let start = Instant::now();
        for (i, e) in entries.into_iter().enumerate() {
            let due = start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            // Latency counts from when the record was due, so falling behind is not hidden.
            tx.send((due, ledger.submit_bytes(e))).unwrap();
        }
        drop(tx);
        let mut lat = collector.join().unwrap();
        lat.sort_unstable();
        println!(
            "ack latency at {rate} records/s offered ({n} records): p50 {:?} p99 {:?} max {:?}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or_default()
        );
    }

    // 3. verify throughput.
    if run("verify") {
        settle();
        let dir = bench_dir();
        let signer = NoteSigner::generate("warden.bench/verify").unwrap();
        let verifier = signer.verifier();
        {
            let store = Box::new(FileStore::open(dir.path(), Mode::Write).unwrap());
            let ledger = Ledger::open(store, signer, LedgerConfig::default()).unwrap();
            let ledger = Arc::new(ledger);
            pipelined(&ledger, verify_n, 2, 16_384);
            ledger.checkpoint().unwrap();
        }
        // What a start costs: the writer's open re-reads every frame the checkpoint covers.
        let start = Instant::now();
        let store = FileStore::open(dir.path(), Mode::Write).unwrap();
        let secs = start.elapsed().as_secs_f64();
        drop(store);
        println!(
            "open for writing: {verify_n} records in {secs:.2} s = {:.2} s per million records (every covered frame re-read and checksummed; page cache warm)",
            secs * 1e6 / verify_n as f64
        );
        for records in [false, true] {
            let start = Instant::now();
            let mut store = FileStore::open(dir.path(), Mode::ReadOnly).unwrap();
            let report = verify::verify_store(&mut store, &verifier, None, records).unwrap();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "verify{}: {} records in {secs:.2} s = {:.0} records/s ({})",
                if records { " --records" } else { "" },
                report.entries,
                report.entries as f64 / secs,
                if records {
                    "also decodes every record and checks its canonical form"
                } else {
                    "open + frame checksums + every leaf and tree node recomputed + signed checkpoint"
                }
            );
        }
    }

    // 4. Inclusion proofs in a log of `proof_n` entries.
    if run("proof") {
        settle();
        let dir = bench_dir();
        let mut store = FileStore::open(dir.path(), Mode::Write).unwrap();
        let build = Instant::now();
        let batch = 65_536u64;
        let mut next = 0u64;
        while next < proof_n {
            let k = batch.min(proof_n - next);
            let entries: Vec<Vec<u8>> =
                (next..next + k).map(|i| i.to_le_bytes().to_vec()).collect();
            store.append(&entries).unwrap();
            next += k;
        }
        println!(
            "built a log of {proof_n} entries (8-byte entries) in {:.1} s",
            build.elapsed().as_secs_f64()
        );
        let mut lat = Vec::new();
        let mut x = 0x243f_6a88_85a3_08d3u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let index = x % proof_n;
            let t = Instant::now();
            let p = proof::inclusion(&mut store, index, proof_n).unwrap();
            lat.push(t.elapsed());
            std::hint::black_box(&p);
        }
        lat.sort_unstable();
        let p = proof::inclusion(&mut store, proof_n / 3, proof_n).unwrap();
        p.verify().unwrap();
        println!(
            "inclusion proof at size {proof_n} ({} hashes): p50 {:?} p99 {:?} (20,000 random indices, warm page cache)",
            p.proof.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
}
