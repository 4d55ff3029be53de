//! The HTTP API, served for real on a loopback port, over the starter bundle and the embedded
//! state store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warden_gateway::server::{serve, AppState};

async fn start(dir: &Path) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let manifest = warden_gateway::starter::write(dir).unwrap();
    let governor = warden_gateway::bundle::load_governor(&manifest).unwrap();
    let state =
        warden_state::FileState::open(&dir.join("state"), warden_gateway::now_unix()).unwrap();
    let app = AppState {
        governor: Arc::new(governor),
        state: Arc::new(state),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// Sends one HTTP/1.1 request and returns (status, body).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn decides_over_http_and_survives_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start(dir.path()).await;

    assert_eq!(request(addr, "GET", "/healthz", b"").await.0, 200);
    let (status, body) = request(addr, "GET", "/v1/manifest", b"").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"manifest_version\":1"), "{body}");

    let allow =
        br#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    let (status, body) = request(addr, "POST", "/v1/decide", allow).await;
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["decision"], "allow");

    let (status, body) = request(
        addr,
        "POST",
        "/v1/decide",
        br#"{"agent":"coder-1","session":"s","tool":"x"}"#,
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("tool.unknown"));

    // Malformed, truncated, deeply nested and oversized bodies: a clear 4xx, never a crash.
    let (status, body) = request(addr, "POST", "/v1/decide", b"{\"agent\":").await;
    assert_eq!(status, 400);
    assert!(body.contains("EOF"), "{body}");
    let deep = format!(
        "{{\"agent\":\"a\",\"session\":\"s\",\"tool\":\"t\",\"arguments\":{{\"x\":{}}}}}",
        "[".repeat(10_000)
    );
    let (status, body) = request(addr, "POST", "/v1/decide", deep.as_bytes()).await;
    assert_eq!(status, 400);
    assert!(body.contains("recursion limit"), "{body}");
    let huge = vec![b'x'; (1 << 20) + 1];
    let (status, _) = request(addr, "POST", "/v1/decide", &huge).await;
    assert_eq!(status, 413);

    // Still serving.
    let (status, _) = request(addr, "POST", "/v1/decide", allow).await;
    assert_eq!(status, 200);
    let _ = stop.send(());
}
