//! What a governed call's trace costs, in process: the spans of one allowed call (the call, its
//! stages, the execution's three) recorded and exported over OTLP/HTTP by the same code a
//! gateway runs ([`warden_runtime::traces::Traces::from_env`]) to a receiver thread that reads
//! each export and answers 200. CPU of the whole process (every thread: the callers, the
//! batch processor, the HTTP client, the receiver) per call, beside the same calls untraced.
//! Run in release:
//!
//! ```sh
//! cargo bench -p warden-runtime --bench traces
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

use std::io::{BufRead as _, Read as _, Write as _};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use warden_executor::{Executed, Interval, Stages, Timed};
use warden_runtime::traces::Traces;

const CALLS: usize = 200_000;

/// A receiver that reads each export and answers 200, on a free port.
fn receiver() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut r = std::io::BufReader::new(conn);
                loop {
                    let (mut length, mut line) = (0usize, String::new());
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line.trim_end().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    r.read_exact(&mut body).unwrap();
                    out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    port
}

/// One allowed call's trace, as the governed path records it.
fn one_call(traces: &Traces, i: usize) {
    let tp = warden_core::trace::TraceParent::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let started = Instant::now();
    let t = traces.begin(tp);
    t.stage("warden.decide", Interval::since(started), || {
        vec![KeyValue::new("warden.decision", "allow")]
    });
    t.stage("warden.ledger.append", Interval::since(started), || {
        vec![KeyValue::new("warden.ledger.index", i as i64)]
    });
    let ex = t.execution();
    let timed = Timed {
        result: Ok(Executed {
            result: warden_executor::Answer::Tool(rmcp::model::CallToolResult::success(vec![])),
            receipt_index: i as u64,
            redactions: 0,
        }),
        stages: Stages {
            upstream: Some(Interval::since(started)),
            redaction: Some(Interval::since(started)),
            receipt: Some(Interval::since(started)),
        },
    };
    if let Some(ex) = &ex {
        t.executed(ex, "everything.echo", Interval::since(started), &timed);
    }
    let attributes = || {
        let rules = vec!["policy:permit".to_owned(), "tier.low.auto".to_owned()];
        vec![
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("gen_ai.tool.name", "everything.echo".to_owned()),
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("warden.agent", "bench-agent".to_owned()),
            KeyValue::new("warden.tenant", "bench".to_owned()),
            KeyValue::new("warden.decision", "allow"),
            KeyValue::new(
                "warden.rules",
                opentelemetry::Value::Array(opentelemetry::Array::String(
                    rules.into_iter().map(Into::into).collect(),
                )),
            ),
            KeyValue::new("warden.request_id", format!("{i:032x}")),
            KeyValue::new("warden.ledger.index", i as i64),
            KeyValue::new("warden.receipt.index", i as i64 + 1),
            KeyValue::new("warden.outcome", "ran"),
        ]
    };
    t.finish("everything.echo", started, || (attributes(), None));
}

/// The process's CPU for `calls` calls' traces, and the p50 of the time each took on the
/// calling thread (what a call's answer waits for).
fn measure(traces: &Traces, calls: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(calls);
    let cpu0 = cpu_time();
    for i in 0..calls {
        let t = Instant::now();
        one_call(traces, i);
        took.push(t.elapsed());
        // Paced as a busy gateway's calls arrive, not faster than the exporter's queue drains.
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    // What is still queued is exported.
    traces.shutdown();
    let cpu = cpu_time() - cpu0;
    took.sort();
    (cpu, took[took.len() / 2])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let port = receiver();
    let (off, off50) = measure(&Traces::off(), CALLS);
    let endpoint = format!("http://127.0.0.1:{port}");
    let traced =
        Traces::from_lookup(|k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone()));
    let (on, on50) = measure(&traced.unwrap(), CALLS);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / CALLS as f64;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{CALLS} calls' traces: process CPU per call (every thread), p50 on the call's thread"
    );
    println!(
        "  traces off                          {:.2} µs  p50 {:.2} µs",
        per(off),
        us(off50)
    );
    println!(
        "  traces on, OTLP to a live receiver  {:.2} µs  p50 {:.2} µs",
        per(on),
        us(on50)
    );
    println!(
        "  added by the trace                  {:.2} µs  p50 {:.2} µs",
        per(on) - per(off),
        us(on50) - us(off50)
    );
}
