//! The floor a governed call is measured against: a bare MCP relay with no governance, run by the
//! benchmark binary itself (`BENCH relay-stdio ...` or `BENCH relay-http ...`). It does what any
//! gateway must do on a call and nothing more: read the client's message and parse it as JSON,
//! optionally append it to a log and `fdatasync` it before passing it on (the one sync a durable
//! decision costs), pass it to the upstream, and pass the upstream's answer back unparsed.
//!
//! - `relay-stdio LOG CMD ARGS...`: the upstream is the child `CMD ARGS...` over stdio; two
//!   plain threads with blocking pipes (the cheapest shape a stdio relay can take).
//! - `relay-http PORT UPSTREAM_URL LOG`: listens on `127.0.0.1:PORT`; each POST is sent on to
//!   `UPSTREAM_URL` with reqwest and answered from the upstream's whole answer (axum on tokio's
//!   multi-thread runtime, the stack Warden serves with). A GET gets 405 (no standalone stream,
//!   which the protocol allows).
//!
//! `LOG` is a file to sync each client message into, or `-` for none. Like Warden's ledger, the
//! log's file is extended with zeros ahead of what is written, a megabyte at a time, so that each
//! sync writes data alone (not the file's new length too).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Runs the relay and exits if the command line asks for one; returns otherwise.
pub fn run_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("relay-stdio") => {
            stdio(log(&args[2]), &args[3..]);
            std::process::exit(0);
        }
        Some("relay-http") => {
            let port: u16 = args[2].parse().unwrap();
            http(port, args[3].clone(), log(&args[4]));
            std::process::exit(0);
        }
        _ => {}
    }
}

/// The log file, where the next message goes, and how far the file's zeros reach.
struct LogFile {
    file: File,
    at: u64,
    allocated: u64,
}

type Log = Option<Arc<Mutex<LogFile>>>;

fn log(path: &str) -> Log {
    (path != "-").then(|| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(Path::new(path))
            .unwrap();
        Arc::new(Mutex::new(LogFile {
            file,
            at: 0,
            allocated: 0,
        }))
    })
}

/// Parses `message` as JSON (a gateway must read what it is asked) and, with a log, makes it
/// durable before it goes on.
fn record(log: &Log, message: &[u8]) {
    let parsed: serde_json::Value = serde_json::from_slice(message).unwrap_or_default();
    std::hint::black_box(&parsed);
    if let Some(file) = log {
        let mut f = file.lock().unwrap();
        let end = f.at + message.len() as u64 + 1;
        while end > f.allocated {
            let zeros = vec![0u8; 1 << 20];
            f.file.write_all_at(&zeros, f.allocated).unwrap();
            f.allocated += zeros.len() as u64;
        }
        let mut line = message.to_vec();
        line.push(b'\n');
        f.file.write_all_at(&line, f.at).unwrap();
        f.at = end;
        f.file.sync_data().unwrap();
    }
}

fn stdio(log: Log, command: &[String]) {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_upstream = child.stdin.take().unwrap();
    let from_upstream = BufReader::new(child.stdout.take().unwrap());
    let answers = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        for line in from_upstream.split(b'\n') {
            let Ok(mut line) = line else { break };
            line.push(b'\n');
            if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    for line in std::io::stdin().lock().split(b'\n') {
        let Ok(mut line) = line else { break };
        record(&log, &line);
        line.push(b'\n');
        if to_upstream.write_all(&line).is_err() {
            break;
        }
    }
    drop(to_upstream);
    let _ = child.wait();
    let _ = answers.join();
}

fn http(port: u16, upstream: String, log: Log) {
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::IntoResponse as _;
    // reqwest is built without a default TLS provider (the relay speaks plain HTTP anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::new();
        let relay = move |method: Method, headers: HeaderMap, body: axum::body::Bytes| {
            let (client, upstream, log) = (client.clone(), upstream.clone(), log.clone());
            async move {
                if method == Method::GET {
                    return StatusCode::METHOD_NOT_ALLOWED.into_response();
                }
                if method == Method::POST {
                    record(&log, &body);
                }
                let mut req = client.request(method, &upstream).body(body);
                for (name, value) in &headers {
                    if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                        req = req.header(name, value);
                    }
                }
                let Ok(answer) = req.send().await else {
                    return StatusCode::BAD_GATEWAY.into_response();
                };
                let status = answer.status();
                let mut out = HeaderMap::new();
                for name in ["content-type", "mcp-session-id"] {
                    if let Some(v) = answer.headers().get(name) {
                        out.insert(name, v.clone());
                    }
                }
                let body = answer.bytes().await.unwrap_or_default();
                (status, out, body).into_response()
            }
        };
        let app = axum::Router::new().route("/mcp", axum::routing::any(relay));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}
