//! Fleet load (issue 22), in release: `cargo bench -p warden-cli --bench fleet`.
//!
//! 10,000 agents (each with its own credential) call through one gateway: first one `warden
//! serve` on its embedded state (the baseline), then three `warden serve` sharing the machine's
//! Redis behind HAProxy (the configuration docs/fleet.md shows), all on this machine. Two loads,
//! each with 10,000 and with 10 agents calling:
//!
//! - `/v1/decide`: the Governor's decision for a proposal (a dry run: holds read, nothing
//!   charged or recorded);
//! - `/mcp`: a governed `tools/call` of `demo.echo` on the demo upstream (decided, recorded in the
//!   instance's ledger with fsync, granted, run, receipted), as a client without an MCP session
//!   sends it.
//!
//! `WARDEN_BENCH_CONNECTIONS` clients (default 32, each one keep-alive connection and one call at
//! a time) first call once for every agent (each credential verified once, then cached), then
//! send for `WARDEN_BENCH_SECONDS` (default 5). Reported: calls per second in all, p50 and p99
//! latency, the Warden processes' CPU per call (all instances) and, apart, Redis's and HAProxy's,
//! and the ratio of throughput to the baseline. Needs `WARDEN_BENCH_REDIS_URL` (or
//! `WARDEN_TEST_REDIS_URL`) and `haproxy`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark harness"
)]

#[allow(
    dead_code,
    reason = "the fleet bench uses part of what the MCP benches share"
)]
mod common;
#[path = "common/cpu.rs"]
mod cpu;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bench_dir, free_port, serve_with, wait_port, Proc};
use cpu::cpu_ms;

const AGENTS: usize = 10_000;

/// The bench's manifest: `agents` agents allowed `demo.echo` on this binary's demo server.
fn manifest(agents: usize) -> String {
    let mut m = String::from(
        r#"version: 1
risk_tiers:
  low: { approval: { mode: auto } }
trust:
  intern: { autonomous: [low] }
  junior: { autonomous: [low] }
  senior: { autonomous: [low] }
  principal: { autonomous: [low] }
tenants: [{ id: bench }]
zones: [{ id: z }]
agents:
"#,
    );
    for i in 0..agents {
        m.push_str(&format!(
            "  - {{ id: agent-{i}, tenant: bench, owner: bench@example.org, zone: z, trust: senior }}\n"
        ));
    }
    m.push_str(&format!(
        r#"tools:
  - name: demo.echo
    tier: low
    zones: ["*"]
    arguments:
      type: object
      properties: {{ text: {{ type: string }} }}
      required: [text]
      additionalProperties: false
policies: [policies/base.cedar]
upstreams:
  - name: demo
    command: ["{}", demo-server]
    sandbox: {{ require: [] }}
"#,
        env!("CARGO_BIN_EXE_warden")
    ));
    m
}

/// Enrolls every agent of `manifest` in `data`; their bearer credentials, in order.
fn enroll_all(data: &Path, manifest: &Path, agents: usize) -> Vec<String> {
    // The first through the CLI, which makes the gateway's keys.
    let first = common::enroll_as(data, manifest, "agent-0");
    let m = warden_runtime::bundle::load_manifest(manifest).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (0..agents)
        .map(|i| {
            let agent = format!("agent-{i}");
            let path = if i == 0 {
                first.clone()
            } else {
                warden_runtime::agents::enroll(data, &m, &agent, now, 86_400).unwrap()
            };
            std::fs::read_to_string(path).unwrap().trim().to_owned()
        })
        .collect()
}

/// Copies `from`'s keys and credentials into `to` (one identity for the fleet).
fn share_identity(from: &Path, to: &Path) {
    fn copy_tree(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_file() {
                std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
            } else if kind.is_dir() {
                copy_tree(&entry.path(), &dst.join(entry.file_name()));
            }
        }
    }
    for dir in ["keys", "agents"] {
        copy_tree(&from.join(dir), &to.join(dir));
    }
}

/// HAProxy in front of `backends` with the configuration docs/fleet.md shows; its port.
fn haproxy(dir: &Path, backends: &[u16]) -> (Proc, u16) {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/fleet.md"))
            .unwrap();
    let section = &doc[doc.find("## Behind a load balancer").unwrap()..];
    let block = &section[section.find("```\n").unwrap() + 4..];
    let block = &block[..block.find("```").unwrap()];
    let port = free_port();
    let mut config = format!("global\n  maxconn 4096\n{block}")
        .replace("127.0.0.1:8700", &format!("127.0.0.1:{port}"));
    for (documented, b) in ["127.0.0.1:8710", "127.0.0.1:8720", "127.0.0.1:8730"]
        .iter()
        .zip(backends)
    {
        config = config.replace(documented, &format!("127.0.0.1:{b}"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("haproxy is not installed");
    let p = Proc(
        Command::new(bin)
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    // Every instance checked ready.
    std::thread::sleep(Duration::from_millis(800));
    (p, port)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// POSTs `body` to `path` with `headers`; the status and the body.
    fn post(&mut self, path: &str, headers: &str, body: &str) -> (u16, String) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).unwrap();
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[derive(Clone, Copy)]
enum Load {
    Decide,
    Mcp,
}

struct Result {
    calls: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_call: f64,
    /// Redis's and HAProxy's CPU per call (none for one instance).
    other_ms_per_call: f64,
}

/// One call of `load` for agent `i` (its credential `bearer`), the `n`th of client `c` (the
/// arguments differ from every other call: loop detection would pause a session otherwise).
fn call(conn: &mut Conn, load: Load, i: usize, bearer: &str, c: usize, n: usize) -> bool {
    let text = format!("c{c}-a{i}-{n}");
    match load {
        Load::Decide => {
            let body = format!(
                r#"{{"agent":"agent-{i}","session":"s{i}","tool":"demo.echo","arguments":{{"text":"{text}"}}}}"#
            );
            let (status, answer) = conn.post("/v1/decide", "", &body);
            let ok = status == 200 && answer.contains("\"allow\"");
            if !ok && n == 0 {
                eprintln!("/v1/decide answered {status}: {answer}");
            }
            ok
        }
        Load::Mcp => {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"demo.echo","arguments":{{"text":"{text}"}}}}}}"#
            );
            let headers = format!(
                "Authorization: Bearer {bearer}\r\nAccept: application/json, text/event-stream\r\n\
                 MCP-Protocol-Version: 2025-11-25\r\n"
            );
            let (status, answer) = conn.post("/mcp", &headers, &body);
            let ok =
                status == 200 && answer.contains(&text) && !answer.contains("\"isError\":true");
            if !ok && n == 0 {
                eprintln!("/mcp answered {status}: {answer}");
            }
            ok
        }
    }
}

/// Drives `load` on `port` from `agents` agents: every agent calls once (warm-up: each
/// credential is verified once, then cached), then every client calls for the bench's
/// duration. The CPU per call is that of the processes `pids` (Warden's) and, apart, `others`.
fn drive(
    port: u16,
    load: Load,
    bearers: &[String],
    agents: usize,
    pids: &[u32],
    others: &[u32],
) -> Result {
    let connections: usize = env_or("WARDEN_BENCH_CONNECTIONS", 32);
    let seconds: u64 = env_or("WARDEN_BENCH_SECONDS", 5);
    let cpu = |pids: &[u32]| -> f64 { pids.iter().map(|p| cpu_ms(&p.to_string())).sum() };
    let ready = std::sync::Barrier::new(connections + 1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut cpu0, mut other0, mut elapsed) = (0.0, 0.0, Duration::ZERO);
    let per_client: Vec<(Vec<f64>, usize)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..connections)
            .map(|c| {
                let (ready, stop) = (&ready, &stop);
                s.spawn(move || {
                    let mut conn = Conn::open(port);
                    let mut n = 0usize;
                    for i in (c..agents).step_by(connections) {
                        assert!(call(&mut conn, load, i, &bearers[i], c, n), "warm-up");
                        n += 1;
                    }
                    ready.wait();
                    let (mut samples, mut failed) = (Vec::new(), 0usize);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let i = (c + n * connections) % agents;
                        let t = Instant::now();
                        let ok = call(&mut conn, load, i, &bearers[i], c, n);
                        samples.push(t.elapsed().as_secs_f64() * 1000.0);
                        failed += usize::from(!ok);
                        n += 1;
                    }
                    (samples, failed)
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        cpu0 = cpu(pids);
        other0 = cpu(others);
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        elapsed = started.elapsed();
        clients.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let spent = cpu(pids) - cpu0;
    let other = cpu(others) - other0;
    let failed: usize = per_client.iter().map(|(_, f)| f).sum();
    let mut all: Vec<f64> = per_client.into_iter().flat_map(|(s, _)| s).collect();
    assert_eq!(failed, 0, "{failed} of {} calls failed", all.len());
    all.sort_by(f64::total_cmp);
    let calls = all.len();
    Result {
        calls,
        per_second: calls as f64 / elapsed.as_secs_f64(),
        p50_ms: all[calls / 2],
        p99_ms: all[calls * 99 / 100],
        cpu_ms_per_call: spent / calls as f64,
        other_ms_per_call: other / calls as f64,
    }
}

/// The process id of the Redis at `url` (`INFO server`).
fn redis_pid(url: &str) -> u32 {
    let out = Command::new("redis-cli")
        .args(["-u", url, "INFO", "server"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let Some(redis) = std::env::var("WARDEN_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("WARDEN_TEST_REDIS_URL"))
        .ok()
    else {
        eprintln!("notice: no WARDEN_BENCH_REDIS_URL: skipping the fleet benchmark");
        return;
    };
    let (_tmp, dir) = bench_dir();
    let m = dir.join("manifest.yaml");
    std::fs::write(&m, manifest(AGENTS)).unwrap();
    let first = dir.join("data-0");
    let started = Instant::now();
    let bearers = enroll_all(&first, &m, AGENTS);
    eprintln!("{AGENTS} agents enrolled in {:?}", started.elapsed());
    let datas: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("data-{i}"))).collect();
    for d in &datas[1..] {
        share_identity(&first, d);
    }
    let baseline_data = dir.join("data-alone");
    share_identity(&first, &baseline_data);

    let cells: Vec<(&str, Load, usize)> = vec![
        ("/v1/decide, 10,000 agents", Load::Decide, AGENTS),
        ("/v1/decide, 10 agents", Load::Decide, 10),
        ("/mcp tools/call, 10,000 agents", Load::Mcp, AGENTS),
        ("/mcp tools/call, 10 agents", Load::Mcp, 10),
    ];
    // One instance on its embedded state.
    let alone: Vec<Result> = {
        let (gateway, port) = serve_with(&baseline_data, &m, &[], &[]);
        let pids = [gateway.0.id()];
        cells
            .iter()
            .map(|(_, load, agents)| drive(port, *load, &bearers, *agents, &pids, &[]))
            .collect()
    };
    // Three on the machine's Redis, behind HAProxy.
    let prefix = format!("warden-bench:fleet:{}:", std::process::id());
    let fleet = [
        ("WARDEN_STATE", redis.as_str()),
        ("WARDEN_STATE_PREFIX", prefix.as_str()),
    ];
    let instances: Vec<(Proc, u16)> = datas
        .iter()
        .map(|d| serve_with(d, &m, &[], &fleet))
        .collect();
    let pids: Vec<u32> = instances.iter().map(|(p, _)| p.0.id()).collect();
    let ports: Vec<u16> = instances.iter().map(|(_, port)| *port).collect();
    let (lb, lb_port) = haproxy(&dir, &ports);
    let others = [redis_pid(&redis), lb.0.id()];
    let three: Vec<Result> = cells
        .iter()
        .map(|(_, load, agents)| drive(lb_port, *load, &bearers, *agents, &pids, &others))
        .collect();

    println!(
        "fleet benchmark: {} clients, {} s per row after 1 s warm-up",
        env_or("WARDEN_BENCH_CONNECTIONS", 32),
        env_or("WARDEN_BENCH_SECONDS", 5)
    );
    println!("| load | gateway | calls/s | p50 ms | p99 ms | Warden CPU ms per call | Redis + HAProxy CPU ms per call | calls/s vs one instance |");
    println!("|---|---|---|---|---|---|---|---|");
    for (((name, _, _), a), f) in cells.iter().zip(&alone).zip(&three) {
        println!(
            "| {name} | one instance, embedded state | {:.0} | {:.2} | {:.2} | {:.3} | — | 1.00 |",
            a.per_second, a.p50_ms, a.p99_ms, a.cpu_ms_per_call
        );
        println!(
            "| {name} | three instances, Redis, HAProxy | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} |",
            f.per_second,
            f.p50_ms,
            f.p99_ms,
            f.cpu_ms_per_call,
            f.other_ms_per_call,
            f.per_second / a.per_second
        );
    }
    for (label, rows) in [("one instance", &alone), ("three instances", &three)] {
        for (k, what) in [(0, "/v1/decide"), (2, "/mcp")] {
            println!(
                "{label}, {what}: CPU per call 10,000 agents / 10 agents = {:.2}",
                rows[k].cpu_ms_per_call / rows[k + 1].cpu_ms_per_call
            );
        }
    }
    let total: usize = alone.iter().chain(&three).map(|r| r.calls).sum();
    eprintln!("{total} calls measured");
}
