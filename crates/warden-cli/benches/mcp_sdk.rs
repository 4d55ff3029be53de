//! Warden's cost on a call made by the client people use: the official MCP Python SDK (in its
//! default `auto` mode unless `WARDEN_E2E_MODE` says otherwise) calls `echo` on
//! `@modelcontextprotocol/server-everything`, directly and through Warden, over stdio (`warden
//! stdio`, upstream over stdio) and over Streamable HTTP (`warden serve` `/mcp`, upstream over
//! HTTP), interleaved round by round so that machine noise hits both sides alike.
//!
//! Beside them, in the same rounds, the floor: a bare relay with no governance (`common/relay.rs`,
//! run by this binary), once as it is and once syncing each client message to a file before it
//! goes on (the one `fdatasync` a durable decision costs). Warden's CPU per call is reported as a
//! ratio to the synced relay's: what governance costs beyond the protocol, the hops and the sync
//! on this machine. Over stdio, a peer too: the governance proxy one would write in TypeScript on
//! the official SDK (`benches/peer_proxy.mjs`: an allow-list and an audit log, synced per
//! decision or not), run under `node`.
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
#[path = "common/relay.rs"]
mod relay;
use common::{bench_dir, enroll, everything_http, free_port, manifest, serve, wait_port, Proc};

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

/// The floor's two sides for one transport: the bare relay, and the relay syncing each message;
/// and the peers measured beside them (named).
struct Floor<'a> {
    bare: &'a [Figures],
    synced: &'a [Figures],
    peers: Vec<(&'a str, &'a [Figures])>,
}

fn report(transport: &str, direct: &[Figures], via: &[Figures], floor: &Floor<'_>) {
    let m = |side: &[Figures], f: fn(&Figures) -> f64| median(side.iter().map(f).collect());
    let (d, w) = (direct, via);
    println!("{transport} (median of {} rounds):", d.len());
    let line = |name: &str, side: &[Figures]| {
        println!(
            "  {name:<20} p50 {:.3} ms  {:.0} calls/s sequential  {:.0} calls/s at 50 concurrent",
            m(side, |f| f.p50),
            m(side, |f| f.seq_rate),
            m(side, |f| f.conc_rate)
        );
    };
    line("direct", d);
    line("bare relay", floor.bare);
    line("bare relay + 1 sync", floor.synced);
    for (name, side) in &floor.peers {
        line(name, side);
    }
    line("via Warden", w);
    let added = |side: &[Figures]| median(d.iter().zip(side).map(|(a, b)| b.p50 - a.p50).collect());
    let ratios =
        |f: fn(&Figures) -> f64| median(d.iter().zip(w).map(|(a, b)| f(b) / f(a)).collect());
    println!(
        "  added p50 {:.3} ms   sequential throughput x{:.2}   concurrent throughput x{:.2}",
        added(w),
        ratios(|f| f.seq_rate),
        ratios(|f| f.conc_rate)
    );
    println!(
        "  the floor's added p50: {:.3} ms (bare relay), {:.3} ms (+ 1 sync)",
        added(floor.bare),
        added(floor.synced),
    );
    for (name, side) in &floor.peers {
        println!(
            "  {name}: added p50 {:.3} ms   sequential throughput x{:.2}   concurrent throughput x{:.2}",
            added(side),
            median(d.iter().zip(*side).map(|(a, b)| b.seq_rate / a.seq_rate).collect()),
            median(d.iter().zip(*side).map(|(a, b)| b.conc_rate / a.conc_rate).collect()),
        );
    }
    println!(
        "  Warden per call: CPU {:.3} ms sequential, {:.3} ms concurrent; context switches {:.1} voluntary + {:.1} involuntary (sequential)",
        m(w, |f| f.seq_cpu),
        m(w, |f| f.conc_cpu),
        m(w, |f| f.seq_vol),
        m(w, |f| f.seq_invol)
    );
    let sides = [
        ("bare relay", floor.bare),
        ("bare relay + 1 sync", floor.synced),
    ];
    for (name, side) in sides.iter().chain(&floor.peers) {
        println!(
            "  {name} per call: CPU {:.3} ms sequential, {:.3} ms concurrent; context switches {:.1} + {:.1}",
            m(side, |f| f.seq_cpu),
            m(side, |f| f.conc_cpu),
            m(side, |f| f.seq_vol),
            m(side, |f| f.seq_invol)
        );
    }
    let over = |f: fn(&Figures) -> f64| {
        median(
            floor
                .synced
                .iter()
                .zip(w)
                .map(|(a, b)| f(b) / f(a))
                .collect(),
        )
    };
    println!(
        "  Warden's CPU per call / the synced relay's: x{:.2} sequential, x{:.2} concurrent",
        over(|f| f.seq_cpu),
        over(|f| f.conc_cpu)
    );
    for (name, side) in &floor.peers {
        let ratio =
            |f: fn(&Figures) -> f64| median(side.iter().zip(w).map(|(a, b)| f(b) / f(a)).collect());
        println!(
            "  Warden's CPU per call / the {name}'s: x{:.2} sequential, x{:.2} concurrent",
            ratio(|f| f.seq_cpu),
            ratio(|f| f.conc_cpu)
        );
    }
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

/// The bare relay over HTTP (see `common/relay.rs`) in front of `upstream`, syncing each
/// message into `log` if given; and its port.
fn http_relay(upstream: &str, log: Option<&Path>) -> (Proc, u16) {
    let port = free_port();
    let log = log.map_or_else(|| "-".into(), |p| p.display().to_string());
    let relay = Proc(
        Command::new(std::env::current_exe().unwrap())
            .args(["relay-http", &port.to_string(), upstream, &log])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    (relay, port)
}

fn main() {
    relay::run_if_asked();
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
    let me = std::env::current_exe().unwrap();
    let my_name = me.file_name().unwrap().to_string_lossy().into_owned();
    let relay_log = dir.join("relay.log");
    let relay_target =
        |log: &str| serde_json::json!([me, "relay-stdio", log, everything, "stdio"]).to_string();
    let (bare_target, synced_target) = (
        relay_target("-"),
        relay_target(&relay_log.display().to_string()),
    );
    let relay_watch = format!("child:{my_name}");
    // The peer: a TypeScript proxy on the official SDK (`benches/peer_proxy.mjs`), its audit
    // log synced per decision or not.
    let peer_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer_proxy.mjs");
    let peer_log = dir.join("peer.log");
    let peer_target = |sync: &str| {
        serde_json::json!([
            "node",
            peer_script,
            peer_log,
            sync,
            "echo",
            everything,
            "stdio"
        ])
        .to_string()
    };
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    let (mut bare, mut synced) = (Vec::new(), Vec::new());
    let (mut peer, mut peer_synced) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(client.run(
            &format!("stdio:{direct_target}"),
            "echo",
            "child:node",
            None,
        ));
        bare.push(client.run(&format!("stdio:{bare_target}"), "echo", &relay_watch, None));
        synced.push(client.run(
            &format!("stdio:{synced_target}"),
            "echo",
            &relay_watch,
            None,
        ));
        peer.push(client.run(
            &format!("stdio:{}", peer_target("nosync")),
            "echo",
            "child:node",
            None,
        ));
        peer_synced.push(client.run(
            &format!("stdio:{}", peer_target("sync")),
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
    let floor = Floor {
        bare: &bare,
        synced: &synced,
        peers: vec![
            ("TypeScript proxy", &peer),
            ("TypeScript proxy + 1 sync", &peer_synced),
        ],
    };
    report("stdio", &direct, &via, &floor);

    let (gateway, port) = serve(&data, &http_manifest, &["--receipts", &receipts]);
    let (up_pid, pid) = (upstream.0.id().to_string(), gateway.0.id().to_string());
    let up_url = format!("http://127.0.0.1:{up_port}/mcp");
    let (bare_relay, bare_port) = http_relay(&up_url, None);
    let (synced_relay, synced_port) = http_relay(&up_url, Some(&relay_log));
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    let (mut bare, mut synced) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(client.run(&up_url, "echo", &up_pid, None));
        bare.push(client.run(
            &format!("http://127.0.0.1:{bare_port}/mcp"),
            "echo",
            &bare_relay.0.id().to_string(),
            None,
        ));
        synced.push(client.run(
            &format!("http://127.0.0.1:{synced_port}/mcp"),
            "echo",
            &synced_relay.0.id().to_string(),
            None,
        ));
        via.push(client.run(
            &format!("http://127.0.0.1:{port}/mcp"),
            "everything.echo",
            &pid,
            Some(&bearer),
        ));
    }
    let floor = Floor {
        bare: &bare,
        synced: &synced,
        peers: Vec::new(),
    };
    report("Streamable HTTP", &direct, &via, &floor);
}
