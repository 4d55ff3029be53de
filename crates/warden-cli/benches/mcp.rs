//! Warden's cost on the MCP path, measured side by side in one run: the same Rust MCP client
//! (rmcp) calls `echo` on the same `@modelcontextprotocol/server-everything` process (its
//! Streamable HTTP mode) directly, and through `warden serve` (whose upstream is that process).
//!
//! Run (release; needs the npm package, which `.ci/run` installs):
//!
//! ```sh
//! WARDEN_E2E_NPM=$HOME/.cache/warden-e2e/npm cargo bench -p warden-cli --bench mcp
//! ```
//!
//! Optional: `WARDEN_BENCH_DATA=/dev/shm/x` puts Warden's data directory (and so its ledger)
//! there instead of a temporary directory; `WARDEN_BENCH_CALLS` (default 2000) sequential calls;
//! `WARDEN_BENCH_CONNECTIONS=fresh` gives the client a new connection per call (rmcp's default
//! client) instead of keeping idle ones (what MCP clients' HTTP stacks do, and the default here).
//! Prints the table recorded in `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark fails loudly on purpose"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod common;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/rmcp_client.rs"]
mod rmcp_client;
use common::{bench_dir, enroll, everything_http, http_manifest, serve};
use rmcp_client::{concurrent, connect, cpu_ms, fresh_connections, sequential};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Opens an MCP session with a raw `initialize` (and `notifications/initialized`) and leaves
/// it idle.
fn open_session(addr: &str, bearer: &str) -> String {
    use std::io::{Read as _, Write as _};
    let post = |body: &str, session: Option<&str>| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let extra = session.map_or(String::new(), |id| format!("mcp-session-id: {id}\r\n"));
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    let resp = post(init, None);
    let id = resp
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("mcp-session-id:")
                .then(|| l.split_once(':').unwrap().1.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no session id: {resp}"));
    post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        Some(&id),
    );
    id
}

fn main() {
    // rmcp's HTTP client is reqwest built with rustls and no provider of its own: Warden's
    // (ring), as the gateway installs it.
    warden_executor::tls::install_provider();
    let Ok(npm) = std::env::var("WARDEN_E2E_NPM") else {
        eprintln!("notice: WARDEN_E2E_NPM not set (the server-everything install): skipping");
        return;
    };
    let calls: usize = std::env::var("WARDEN_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (_tmp, dir) = bench_dir();
    let (upstream, up_port) =
        everything_http(&Path::new(&npm).join("node_modules/.bin/mcp-server-everything"));
    let up_pid = upstream.0.id();
    let m = http_manifest(&dir, "manifest.yaml", up_port);
    let data = dir.join("data");
    let bearer = std::fs::read_to_string(enroll(&data, &m))
        .unwrap()
        .trim()
        .to_owned();
    let (gateway, port) = serve(&data, &m, &[]);
    let pid = gateway.0.id();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let direct = connect(&format!("http://127.0.0.1:{up_port}/mcp"), None).await;
        let via = connect(&format!("http://127.0.0.1:{port}/mcp"), Some(&bearer)).await;
        // Interleave the two so that machine noise hits both alike.
        let (d50, d99) = sequential(&direct, "echo", calls, 0).await;
        let (w50, w99) = sequential(&via, "everything.echo", calls, 10_000_000).await;
        let (d50b, d99b) = sequential(&direct, "echo", calls, 20_000_000).await;
        let (w50b, w99b) = sequential(&via, "everything.echo", calls, 30_000_000).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (d50, d99) = (ms(d50.min(d50b)), ms(d99.min(d99b)));
        let (w50, w99) = (ms(w50.min(w50b)), ms(w99.min(w99b)));
        println!(
            "client connections: {}",
            if fresh_connections() {
                "a new one per call"
            } else {
                "kept alive"
            }
        );
        println!("sequential echo, {calls} calls each (best of two rounds):");
        println!("  direct        p50 {d50:.3} ms  p99 {d99:.3} ms");
        println!("  via Warden    p50 {w50:.3} ms  p99 {w99:.3} ms");
        println!(
            "  added         p50 {:.3} ms (target <= 0.3)  p99 {:.3} ms (target <= 1)",
            w50 - d50,
            w99 - d99
        );
        let direct = Arc::new(direct);
        let via = Arc::new(via);
        // Where the CPU goes: the bench client, the upstream, Warden (all on this machine).
        let procs = ["self".to_owned(), up_pid.to_string(), pid.to_string()];
        let cpu = || procs.iter().map(|p| cpu_ms(p)).collect::<Vec<f64>>();
        let c0 = cpu();
        let td = concurrent(Arc::clone(&direct), "echo", 10, 40_000_000).await;
        let c1 = cpu();
        let tw = concurrent(Arc::clone(&via), "everything.echo", 10, 50_000_000).await;
        let c2 = cpu();
        println!("50 concurrent calls, 10 s each:");
        println!("  direct        {td:.0} calls/s");
        println!("  via Warden    {tw:.0} calls/s");
        println!("  ratio         {:.2} (target >= 0.90)", tw / td);
        let per_call = |a: &[f64], b: &[f64], rate: f64, i: usize| (b[i] - a[i]) / (rate * 10.0);
        println!(
            "  CPU ms per call, direct:     client {:.3}  upstream {:.3}",
            per_call(&c0, &c1, td, 0),
            per_call(&c0, &c1, td, 1)
        );
        println!(
            "  CPU ms per call, via Warden: client {:.3}  upstream {:.3}  Warden {:.3}",
            per_call(&c1, &c2, tw, 0),
            per_call(&c1, &c2, tw, 1),
            per_call(&c1, &c2, tw, 2)
        );
    });

    // Memory with 1,000 idle sessions.
    let before = rss_kib(pid);
    let addr = format!("127.0.0.1:{port}");
    let sessions: Vec<String> = (0..1000).map(|_| open_session(&addr, &bearer)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    println!("memory: {} sessions open", sessions.len());
    println!(
        "  RSS before {:.1} MiB, with 1,000 idle sessions {:.1} MiB (target <= 50 MiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
