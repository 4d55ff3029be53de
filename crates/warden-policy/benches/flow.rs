//! Information-flow control's cost in `decide` (issue 23): the same calls decided with and
//! without a session flow, in the same run, on a session that has read 100 outputs (about
//! 50 KB in all). Run in release:
//!
//! ```sh
//! cargo bench -p warden-policy --bench flow
//! ```
//!
//! Reports p50/p99/mean per decision for both, the difference, what labelling one 500-byte
//! output costs, and the flow's size (marks held).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "benchmark harness"
)]

use serde_json::json;
use std::hint::black_box;
use std::time::Instant;
use warden_core::flow::SessionFlow;
use warden_core::Proposal;
use warden_policy::{parse_manifest, Evidence, Governor, PolicySource};
use warden_state::MemoryState;

const NOW: i64 = 1_795_341_600;

fn percentiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        mean,
    )
}

/// A 500-byte page of text: words, a URL, an address, a number, all different per page.
fn page(i: usize) -> String {
    let mut s = format!(
        "Page {i}. Contact sales{i}@vendor{i}.example or visit https://www.site{i}.example/path/{i} \
         for the offer; call +41 79 {:03} {:02} {:02}. ",
        i % 1000,
        i % 100,
        (i * 7) % 100
    );
    let words = [
        "quarterly",
        "report",
        "shipping",
        "delayed",
        "customer",
        "invoice",
        "meeting",
        "schedule",
        "project",
        "update",
        "review",
        "budget",
        "approval",
        "network",
    ];
    let mut k = i;
    while s.len() < 500 {
        s.push_str(words[k % words.len()]);
        s.push_str(&format!("{} ", k % 97));
        k = k.wrapping_mul(31).wrapping_add(7);
    }
    s
}

fn main() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agentdojo/slack");
    let text = std::fs::read_to_string(dir.join("manifest.yaml")).unwrap();
    let m = parse_manifest("manifest.yaml", &text).unwrap();
    let p = PolicySource {
        name: "policies/permit.cedar".into(),
        text: std::fs::read_to_string(dir.join("policies/permit.cedar")).unwrap(),
    };
    let g = Governor::new(m, &[p]).unwrap();
    let mut flow = SessionFlow::default();
    warden_policy::flow::declare_task(
        &mut flow,
        "Summarize the articles posted in general and send the summary to Alice.",
    )
    .unwrap();
    let mut bytes = 0;
    let label_start = Instant::now();
    for i in 0..100 {
        let t = page(i);
        bytes += t.len();
        let args = json!({"url": format!("www.site{i}.example")});
        g.label_output("assistant", &mut flow, "get_webpage", &args, &t, None);
    }
    let label_us = label_start.elapsed().as_nanos() as f64 / 1000.0 / 100.0;
    let state = MemoryState::new();
    let n = 100_000;
    let calls = [
        (
            "send_direct_message",
            json!({"recipient": "Alice", "body": "A summary of the week: shipping is delayed, the budget review is on Monday."}),
        ),
        ("get_webpage", json!({"url": "www.site42.example/path/42"})),
    ];
    // The sets' tables: each slot holds the entry and one control byte.
    let table = flow.task_marks.capacity() * 17
        + flow.trusted.capacity() * 17
        + flow.untrusted.capacity() * (std::mem::size_of::<(u128, u32)>() + 1);
    println!(
        "flow: {} outputs, {bytes} bytes read, {} marks held, about {} KiB of tables",
        flow.outputs,
        flow.marks(),
        table / 1024
    );
    println!("labelling one ~500-byte output: {label_us:.1} µs (mean of 100)");
    for (tool, args) in calls {
        let mut with = Vec::with_capacity(n);
        let mut without = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let p = Proposal {
                agent: "assistant".into(),
                session: format!("s{i}"),
                tool: tool.into(),
                arguments: args.clone(),
                tenant: None,
                kind: warden_core::ActionKind::Tool,
                operation: warden_core::Operation::Use,
            };
            let e = Evidence {
                flow: Some(&flow),
                ..Evidence::default()
            };
            let t = Instant::now();
            black_box(g.decide_with(&p, &state, NOW, &e));
            let a = t.elapsed().as_nanos() as f64 / 1000.0;
            let t = Instant::now();
            black_box(g.decide_with(&p, &state, NOW, &Evidence::default()));
            let b = t.elapsed().as_nanos() as f64 / 1000.0;
            if i >= n / 10 {
                with.push(a);
                without.push(b);
            }
        }
        let (w50, w99, wm) = percentiles(with);
        let (o50, o99, om) = percentiles(without);
        println!(
            "{tool}: with flow p50 {w50:.1} µs p99 {w99:.1} µs mean {wm:.1}; without p50 {o50:.1} p99 {o99:.1} mean {om:.1}; added p50 {:.1} p99 {:.1} µs",
            w50 - o50,
            w99 - o99
        );
    }
}
