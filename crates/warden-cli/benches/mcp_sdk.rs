//! Warden's cost on a call made by the client people use: the official MCP Python SDK (in its
//! default `auto` mode unless `WARDEN_E2E_MODE` says otherwise) calls `echo` on
//! `@modelcontextprotocol/server-everything`, directly and through Warden, over stdio (`warden
//! stdio`, upstream over stdio) and over Streamable HTTP (`warden serve` `/mcp`, upstream over
//! HTTP), interleaved round by round so that machine noise hits both sides alike.
//!
//! Run (release; needs the SDK venv and the npm package, which `.ci/run` installs):
//!
//! ```sh
//! WARDEN_E2E_VENV=$HOME/.cache/warden-e2e/venv WARDEN_E2E_NPM=$HOME/.cache/warden-e2e/npm \
//!   cargo bench -p warden-cli --bench mcp_sdk
//! ```
//!
//! Optional: `WARDEN_BENCH_CALLS` (default 2000) calls per phase, `WARDEN_BENCH_ROUNDS`
//! (default 3), `WARDEN_BENCH_RECEIPTS` (`grouped`, the default, or `strict`),
//! `WARDEN_BENCH_DATA` (Warden's data directory, e.g. on tmpfs). For each side it prints the
//! median over rounds of the SDK client's p50 and throughput, and the CPU and context switches
//! per call of the watched process (Warden through Warden, the upstream directly). The client
//! is `benches/sdk_client.py`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark fails loudly on purpose"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{bench_dir, enroll, everything_http, manifest, serve};

/// One side's figures from `sdk_client.py`.
#[derive(Debug, Clone, Default)]
struct Figures {
    p50: f64,
    seq_rate: f64,
    seq_cpu: f64,
    seq_vol: f64,
    seq_invol: f64,
    conc_rate: f64,
    conc_cpu: f64,
    /// Voluntary context switches per call by thread name (sequential phase).
    threads: String,
}

struct Client {
    python: PathBuf,
    script: PathBuf,
    calls: usize,
}

impl Client {
    fn run(&self, target: &str, tool: &str, watch: &str, bearer: Option<&str>) -> Figures {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .args([target, tool, &self.calls.to_string(), "50", watch])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null());
        if let Some(b) = bearer {
            cmd.env("WARDEN_BENCH_BEARER", b);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "the SDK client failed on {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{e}: the SDK client printed {text}"));
        let f = |phase: &str, key: &str| v[phase][key].as_f64().unwrap();
        Figures {
            p50: f("sequential", "p50_ms"),
            seq_rate: f("sequential", "calls_per_s"),
            seq_cpu: f("sequential", "cpu_ms"),
            seq_vol: f("sequential", "voluntary"),
            seq_invol: f("sequential", "involuntary"),
            conc_rate: f("concurrent", "calls_per_s"),
            conc_cpu: f("concurrent", "cpu_ms"),
            threads: v["sequential"]["voluntary_by_thread"].to_string(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(transport: &str, direct: &[Figures], via: &[Figures]) {
    let m = |side: &[Figures], f: fn(&Figures) -> f64| median(side.iter().map(f).collect());
    let (d, w) = (direct, via);
    println!("{transport} (median of {} rounds):", d.len());
    println!(
        "  direct       p50 {:.3} ms  {:.0} calls/s sequential  {:.0} calls/s at 50 concurrent",
        m(d, |f| f.p50),
        m(d, |f| f.seq_rate),
        m(d, |f| f.conc_rate)
    );
    println!(
        "  via Warden   p50 {:.3} ms  {:.0} calls/s sequential  {:.0} calls/s at 50 concurrent",
        m(w, |f| f.p50),
        m(w, |f| f.seq_rate),
        m(w, |f| f.conc_rate)
    );
    let ratios =
        |f: fn(&Figures) -> f64| median(d.iter().zip(w).map(|(a, b)| f(b) / f(a)).collect());
    println!(
        "  added p50 {:.3} ms   sequential throughput x{:.2}   concurrent throughput x{:.2}",
        median(d.iter().zip(w).map(|(a, b)| b.p50 - a.p50).collect()),
        ratios(|f| f.seq_rate),
        ratios(|f| f.conc_rate)
    );
    println!(
        "  Warden per call: CPU {:.3} ms sequential, {:.3} ms concurrent; context switches {:.1} voluntary + {:.1} involuntary (sequential)",
        m(w, |f| f.seq_cpu),
        m(w, |f| f.conc_cpu),
        m(w, |f| f.seq_vol),
        m(w, |f| f.seq_invol)
    );
    if let Some(last) = w.last() {
        println!(
            "  Warden's voluntary switches per call by thread (last round): {}",
            last.threads
        );
    }
    println!(
        "  upstream per call, direct: CPU {:.3} ms sequential; context switches {:.1} + {:.1}",
        m(d, |f| f.seq_cpu),
        m(d, |f| f.seq_vol),
        m(d, |f| f.seq_invol)
    );
}

fn main() {
    let (Ok(venv), Ok(npm)) = (
        std::env::var("WARDEN_E2E_VENV"),
        std::env::var("WARDEN_E2E_NPM"),
    ) else {
        eprintln!("notice: WARDEN_E2E_VENV or WARDEN_E2E_NPM not set (the SDK installs): skipping");
        return;
    };
    let env_num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let client = Client {
        python: Path::new(&venv).join("bin/python"),
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sdk_client.py"),
        calls: env_num("WARDEN_BENCH_CALLS", 2000),
    };
    let rounds = env_num("WARDEN_BENCH_ROUNDS", 3);
    let receipts = std::env::var("WARDEN_BENCH_RECEIPTS").unwrap_or_else(|_| "grouped".into());
    let warden = env!("CARGO_BIN_EXE_warden");
    let everything = Path::new(&npm).join("node_modules/.bin/mcp-server-everything");
    let (_tmp, dir) = bench_dir();
    // The upstream over HTTP, for `serve`; over stdio (launched by Warden) for `stdio`.
    let (upstream, up_port) = everything_http(&everything);
    let http_manifest = common::http_manifest(&dir, "manifest-http.yaml", up_port);
    let stdio_manifest = dir.join("manifest-stdio.yaml");
    std::fs::write(
        &stdio_manifest,
        manifest(&format!(
            "    command: [\"{}\", stdio]\n    unsandboxed: \"the benchmark measures Warden, not the sandbox (benches/sandbox.rs does)\"",
            everything.display()
        )),
    )
    .unwrap();
    let data = dir.join("data");
    let credential = enroll(&data, &http_manifest);
    let bearer = std::fs::read_to_string(&credential)
        .unwrap()
        .trim()
        .to_owned();

    println!(
        "official MCP Python SDK client, mode {}, {} calls per phase, receipts {receipts}",
        std::env::var("WARDEN_E2E_MODE").unwrap_or_else(|_| "auto".into()),
        client.calls
    );

    // stdio: `warden stdio` holds the data directory while it runs, one process at a time.
    let direct_target = serde_json::json!([everything, "stdio"]).to_string();
    let via_target = serde_json::json!([
        warden,
        "stdio",
        "--data",
        data,
        "--manifest",
        stdio_manifest,
        "--credential",
        credential,
        "--receipts",
        receipts,
    ])
    .to_string();
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(client.run(
            &format!("stdio:{direct_target}"),
            "echo",
            "child:node",
            None,
        ));
        via.push(client.run(
            &format!("stdio:{via_target}"),
            "everything.echo",
            "child:warden",
            None,
        ));
    }
    report("stdio", &direct, &via);

    let (gateway, port) = serve(&data, &http_manifest, &["--receipts", &receipts]);
    let (up_pid, pid) = (upstream.0.id().to_string(), gateway.0.id().to_string());
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(client.run(
            &format!("http://127.0.0.1:{up_port}/mcp"),
            "echo",
            &up_pid,
            None,
        ));
        via.push(client.run(
            &format!("http://127.0.0.1:{port}/mcp"),
            "everything.echo",
            &pid,
            Some(&bearer),
        ));
    }
    report("Streamable HTTP", &direct, &via);
}
