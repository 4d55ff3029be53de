//! The sandbox's costs, each measured against its baseline in the same run (issue 6):
//!
//! - start-up: launching `/bin/true` through the full sandbox (cgroup, bubblewrap, uid drop,
//!   no_new_privs, Landlock, seccomp) until it exits, against spawning `/bin/true` directly;
//! - egress: one request (connect, 64 bytes out, 64 back) to a loopback echo server through the
//!   whole egress path (the forwarder on loopback → Unix socket → proxy, which checks the
//!   allowlist and the address and connects), against the same request made directly.
//!
//! Run (release, as root on Linux with bubblewrap):
//!
//! ```sh
//! cargo bench -p warden-cli --bench sandbox
//! ```
//!
//! `WARDEN_BENCH_RUNS` (default 200) runs of each. Prints the table in `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark fails loudly on purpose"
)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_sandbox::egress::{HostRule, Net, Policy, Proxy, SystemResolver};
use warden_sandbox::spec::{Guarantee, Spec};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn row(what: &str, base: &mut [Duration], with: &mut [Duration], target: &str) {
    let (b50, w50) = (pct(base, 0.5), pct(with, 0.5));
    println!(
        "| {what} | {} | {} | {} | {} | {} | {:.1}× |",
        ms(b50),
        ms(pct(base, 0.99)),
        ms(w50),
        ms(pct(with, 0.99)),
        target,
        w50.as_secs_f64() / b50.as_secs_f64()
    );
}

fn main() {
    let runs: usize = std::env::var("WARDEN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let helper = PathBuf::from(env!("CARGO_BIN_EXE_warden"));
    let host = warden_sandbox::Host::probe(helper.clone());
    let layers = warden_sandbox::doctor(&host).unwrap();
    let summary = warden_sandbox::spec::summarise(&layers);
    println!("sandbox here: {summary:?}");
    let work = tempfile::tempdir().unwrap();

    // Start-up.
    let mut direct = Vec::with_capacity(runs);
    let mut sandboxed = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        let s = Command::new("/bin/true").status().unwrap();
        direct.push(t.elapsed());
        assert!(s.success());
        let mut spec = Spec::new("/bin/true".into(), Vec::new(), work.path().join("w"));
        spec.require = Guarantee::ALL.to_vec();
        let t = Instant::now();
        let (cg, mut cmd) = host
            .prepare(&format!("bench-{}-{i}", std::process::id()), spec)
            .unwrap();
        let out = cmd.stdout(Stdio::null()).output().unwrap();
        sandboxed.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(cg);
    }

    // Egress.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in echo.incoming() {
            let mut c = c.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = work.path().join("egress.sock");
    let proxy = Proxy::new(
        Policy {
            allow: vec![HostRule::parse("127.0.0.1").unwrap()],
            private_allow: vec![Net::parse("127.0.0.1/32").unwrap()],
            connections_per_minute: u32::MAX,
            ..Policy::default()
        },
        Arc::new(SystemResolver),
        Arc::new(|_| {}),
    );
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(&socket).unwrap()
    };
    rt.spawn(proxy.serve(listener));
    let fwd_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut forwarder = Command::new(&helper)
        .args([
            "sandbox",
            "forward",
            "--port",
            &fwd_port.to_string(),
            "--socket",
        ])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 1];
    forwarder
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let payload = [7u8; 64];
    let mut direct_e = Vec::with_capacity(runs);
    let mut proxied = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_nodelay(true).unwrap();
        c.write_all(&payload).unwrap();
        let mut back = [0u8; 64];
        c.read_exact(&mut back).unwrap();
        direct_e.push(t.elapsed());

        let t = Instant::now();
        let mut c = TcpStream::connect(("127.0.0.1", fwd_port)).unwrap();
        c.set_nodelay(true).unwrap();
        write!(c, "CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        c.write_all(&payload).unwrap();
        c.read_exact(&mut back).unwrap();
        proxied.push(t.elapsed());
    }
    let _ = forwarder.kill();
    let _ = forwarder.wait();

    println!(
        "\n| what | baseline p50 | baseline p99 | Warden p50 | Warden p99 | target | ratio (p50) |"
    );
    println!("|---|---|---|---|---|---|---|");
    row(
        "process start-up (`/bin/true` to exit)",
        &mut direct,
        &mut sandboxed,
        "≤ 30 ms p50",
    );
    let (d50, p50) = (pct(&mut direct_e, 0.5), pct(&mut proxied, 0.5));
    row(
        "egress request (connect + 64 B echo)",
        &mut direct_e,
        &mut proxied,
        "≤ 1 ms p50 overhead",
    );
    println!(
        "\nstart-up p50 {}; egress overhead p50 {} ({runs} runs each)",
        ms(pct(&mut sandboxed, 0.5)),
        ms(p50.saturating_sub(d50))
    );
}
