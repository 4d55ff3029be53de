//! What metrics and traces cost a governed call, measured side by side in one run (issue 24).
//! Three `warden serve` over one `@modelcontextprotocol/server-everything` (Streamable HTTP):
//!
//! - **off**: `--no-metrics`, no traces;
//! - **metrics**: the default (metrics on, no traces);
//! - **metrics + traces**: metrics on and every call's spans exported over OTLP/HTTP to a live
//!   receiver (an OTLP endpoint in this process that decodes every export with the OpenTelemetry
//!   protobuf definitions, counts its spans and answers 200), the SDK's default batching.
//!
//! The same rmcp client calls `everything.echo` through each, in interleaved rounds (each
//! starting with another gateway) so that machine noise hits all three alike: sequential calls (p50 latency) and 50 concurrent calls
//! (throughput, and Warden's CPU per call from `/proc`). Medians of the rounds are printed,
//! with the differences to **off**.
//!
//! ```sh
//! WARDEN_E2E_NPM=$HOME/.cache/warden-e2e/npm cargo bench -p warden-cli --bench observability
//! ```
//!
//! Optional: `WARDEN_BENCH_ROUNDS` (default 5), `WARDEN_BENCH_CALLS` (sequential calls per
//! round, default 1000), `WARDEN_BENCH_SECS` (seconds per concurrent round, default 6).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "a benchmark fails loudly on purpose"
)]

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/rmcp_client.rs"]
mod rmcp_client;
use common::{bench_dir, enroll, everything_http, http_manifest, serve, serve_with, Proc};
use rmcp_client::{concurrent, connect, cpu_ms, sequential, Client};

/// What the receiver got: export requests, and spans in them.
#[derive(Default)]
struct Received {
    exports: AtomicU64,
    spans: AtomicU64,
}

/// An OTLP/HTTP trace endpoint on a free port: decodes each export, counts it, answers 200.
fn receiver() -> (u16, Arc<Received>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Received::default());
    let counts = Arc::clone(&got);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || serve_exports(conn, &counts));
        }
    });
    (port, got)
}

/// Answers the export requests of one connection.
fn serve_exports(conn: std::net::TcpStream, got: &Received) {
    let mut out = conn.try_clone().unwrap();
    let mut r = std::io::BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).unwrap();
        let request = <opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as prost::Message>::decode(body.as_slice()).unwrap();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        got.exports.fetch_add(1, Ordering::Relaxed);
        got.spans.fetch_add(spans as u64, Ordering::Relaxed);
        out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One gateway under test.
struct Variant {
    name: &'static str,
    _proc: Proc,
    pid: String,
    client: Arc<Client>,
}

fn main() {
    warden_executor::tls::install_provider();
    let Ok(npm) = std::env::var("WARDEN_E2E_NPM") else {
        eprintln!("notice: WARDEN_E2E_NPM not set (the server-everything install): skipping");
        return;
    };
    let rounds = env_or("WARDEN_BENCH_ROUNDS", 5);
    let calls = usize::try_from(env_or("WARDEN_BENCH_CALLS", 1000)).unwrap();
    let secs = env_or("WARDEN_BENCH_SECS", 6);
    let (_tmp, dir) = bench_dir();
    let (_upstream, up_port) =
        everything_http(&Path::new(&npm).join("node_modules/.bin/mcp-server-everything"));
    let m = http_manifest(&dir, "manifest.yaml", up_port);
    let (otlp, received) = receiver();
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let start = |name: &str, extra: &[&str], vars: &[(&str, &str)]| {
        let data = dir.join(name);
        let bearer = std::fs::read_to_string(enroll(&data, &m))
            .unwrap()
            .trim()
            .to_owned();
        let (p, port) = if vars.is_empty() {
            serve(&data, &m, extra)
        } else {
            serve_with(&data, &m, extra, vars)
        };
        (p, port, bearer)
    };
    let gateways = [
        ("off", start("off", &["--no-metrics"], &[])),
        ("metrics", start("metrics", &[], &[])),
        (
            "metrics + traces",
            start(
                "traced",
                &[],
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
            ),
        ),
    ];

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut variants = Vec::new();
        for (name, (p, port, bearer)) in gateways {
            let client =
                Arc::new(connect(&format!("http://127.0.0.1:{port}/mcp"), Some(&bearer)).await);
            variants.push(Variant {
                name,
                pid: p.0.id().to_string(),
                _proc: p,
                client,
            });
        }
        let n = variants.len();
        let (mut p50, mut rate, mut cpu) = (vec![Vec::new(); n], vec![Vec::new(); n], vec![Vec::new(); n]);
        let mut offset = 0;
        for round in 0..rounds {
            // Each round starts with another gateway: none is always last.
            let order: Vec<usize> = (0..n).map(|k| (k + round as usize) % n).collect();
            for &i in &order {
                let v = &variants[i];
                offset += 10_000_000;
                let (m50, _) = sequential(&v.client, "everything.echo", calls, offset).await;
                p50[i].push(m50.as_secs_f64() * 1e6);
            }
            for &i in &order {
                let v = &variants[i];
                offset += 100_000_000;
                let before = cpu_ms(&v.pid);
                let r = concurrent(Arc::clone(&v.client), "everything.echo", secs, offset).await;
                let used = cpu_ms(&v.pid) - before;
                rate[i].push(r);
                cpu[i].push(used * 1e3 / (r * secs as f64));
            }
            eprintln!("round {} of {rounds} done", round + 1);
        }
        // Whatever is still queued is exported within the batch delay (5 s).
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (b50, brate, bcpu) = (median(p50[0].clone()), median(rate[0].clone()), median(cpu[0].clone()));
        println!(
            "{rounds} interleaved rounds: {calls} sequential calls, then 50 concurrent for {secs} s, through each gateway; medians"
        );
        println!("| gateway | p50 sequential | added p50 | calls/s (50 concurrent) | throughput vs off | Warden CPU per call | added CPU |");
        println!("|---|---|---|---|---|---|---|");
        for (i, v) in variants.iter().enumerate() {
            let (m50, r, c) = (median(p50[i].clone()), median(rate[i].clone()), median(cpu[i].clone()));
            println!(
                "| {} | {m50:.0} µs | {:+.1} µs | {r:.0} | {:.3} | {c:.1} µs | {:+.1} µs |",
                v.name,
                m50 - b50,
                r / brate,
                c - bcpu
            );
        }
        println!("rounds, p50 µs: {p50:.0?}");
        println!("rounds, calls/s: {rate:.0?}");
        println!("rounds, CPU µs per call: {cpu:.1?}");
        // Every traced call is 7 spans: the call, decide, ledger append, execute, the upstream
        // call, redaction, receipt (the warm-up calls included).
        let traced = rounds as f64 * (calls + 50) as f64 + rate[2].iter().sum::<f64>() * secs as f64;
        println!(
            "receiver: {} exports, {} spans of the {:.0} expected (spans the batch queue dropped are the difference)",
            received.exports.load(Ordering::Relaxed),
            received.spans.load(Ordering::Relaxed),
            traced * 7.0
        );
    });
}
