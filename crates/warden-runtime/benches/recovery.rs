//! What the start-up scan for calls a crash cut off costs ([`warden_runtime::recovery`]): a
//! ledger holding N entries appended since the previous start (allowed decisions and their
//! receipts, in pairs, and 1 in 1,000 decisions left without one), scanned as `warden serve`
//! does before serving. Run in release:
//!
//! ```sh
//! cargo bench -p warden-runtime --bench recovery
//! ```
//!
//! `WARDEN_BENCH_ENTRIES` (default 1,000,000) sets N; `WARDEN_BENCH_DIR` the directory the
//! ledger is written in (default: a temporary directory).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "benchmark harness"
)]

use std::time::Instant;
use warden_core::Verdict;
use warden_ledger::{DecisionRecord, Entry, Receipt, ReceiptStatus};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::var("WARDEN_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = match std::env::var("WARDEN_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let ledger = warden_runtime::witness::open_ledger(
        dir.path(),
        None,
        &Default::default(),
        Default::default(),
    )
    .unwrap();
    // A first start: the scan of the next one stops at its mark.
    warden_runtime::recovery::close_interrupted(&ledger, 1_800_000_000_000).unwrap();
    let mut tickets = Vec::new();
    let mut cut_off = 0u64;
    for i in 0..n / 2 {
        let request_id = format!("{i:032x}");
        let d = DecisionRecord {
            decision: Verdict::Allow,
            rules: vec![
                "policy:coder-reads".into(),
                "tier.low.auto".into(),
                "trust.junior.autonomous".into(),
            ],
            policies: vec!["coder-reads".into()],
            rationale: "`coder-1` may call `fs.read_file` (low-tier, automatic; trust `junior`; permitted by `coder-reads`)".into(),
            escalation: None,
            manifest_version: 3,
            policy_hash: format!("sha256:{}", "ab".repeat(32)),
            agent: "coder-1".into(),
            lineage: vec!["alice@acme.example".into(), "coder-1".into()],
            tenant: "acme".into(),
            session: "s-0001".into(),
            trace_id: format!("{i:032x}"),
            request_id: request_id.clone(),
            tool: "fs.read_file".into(),
            operation: warden_core::Operation::Use,
            arguments_hash: format!("sha256:{}", "cd".repeat(32)),
            time: 1_800_000_000,
            provenance: Vec::new(),
        };
        tickets.push(ledger.submit(&Entry::Decision(d)).unwrap());
        if i % 1000 == 999 {
            cut_off += 1;
        } else {
            let r = Receipt {
                trace_id: format!("{i:032x}"),
                request_id,
                tenant: "acme".into(),
                agent: "coder-1".into(),
                action: "fs.read_file".into(),
                arguments_hash: format!("sha256:{}", "cd".repeat(32)),
                grant: format!("{i:032x}"),
                approval: None,
                started_at_ms: 1_800_000_000_000,
                ended_at_ms: 1_800_000_000_004,
                status: ReceiptStatus::Ok,
                result_hash: format!("sha256:{}", "ef".repeat(32)),
                executor: "mcp:fs".into(),
                sandbox_profile: "bwrap+landlock+seccomp+cgroup".into(),
                redactions: 0,
            };
            tickets.push(ledger.submit(&Entry::Receipt(r)).unwrap());
        }
        if tickets.len() >= 16_384 {
            for t in tickets.drain(..) {
                t.wait().unwrap();
            }
        }
    }
    for t in tickets {
        t.wait().unwrap();
    }
    let started = Instant::now();
    let r = warden_runtime::recovery::close_interrupted(&ledger, 1_800_000_600_000).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r.interrupted as u64, cut_off);
    println!(
        "start-up scan: {} entries since the previous start in {secs:.2} s = {:.2} s per million entries; {} calls closed as interrupted",
        r.scanned,
        secs * 1e6 / r.scanned as f64,
        r.interrupted
    );
}
