//! The egress proxy over real sockets: a CONNECT tunnel to an allowed host, IP literals judged
//! like resolved names, payload caps, the connection rate, malformed and oversized heads; every
//! allowed and refused connection recorded. Also replays the fuzz seeds (`fuzz/seeds/egress_head`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use warden_sandbox::egress::{Event, HostRule, Net, Policy, Proxy, StaticResolver};

/// An echo server on loopback; returns its port.
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

struct Fixture {
    socket: PathBuf,
    events: Arc<Mutex<Vec<Event>>>,
    _dir: tempfile::TempDir,
}

fn proxy(policy: Policy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("egress.sock");
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = Arc::clone(&events);
    let table = StaticResolver(BTreeMap::from([
        ("echo.allowed.test".to_owned(), "127.0.0.1".parse().unwrap()),
        (
            "meta.allowed.test".to_owned(),
            "169.254.169.254".parse().unwrap(),
        ),
    ]));
    let p = Proxy::new(
        policy,
        Arc::new(table),
        Arc::new(move |e| sink.lock().unwrap().push(e)),
    );
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(p.serve(listener));
    Fixture {
        socket,
        events,
        _dir: dir,
    }
}

fn policy() -> Policy {
    Policy {
        allow: vec![
            HostRule::parse("*.allowed.test").unwrap(),
            HostRule::parse("169.254.169.254").unwrap(),
        ],
        private_allow: vec![Net::parse("127.0.0.1/32").unwrap()],
        ..Policy::default()
    }
}

/// Sends `head`, returns the first response bytes and the stream.
async fn ask(socket: &Path, head: &[u8]) -> (String, UnixStream) {
    let mut c = UnixStream::connect(socket).await.unwrap();
    c.write_all(head).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), c)
}

#[tokio::test]
async fn a_connect_tunnel_reaches_an_allowed_host_at_the_checked_address() {
    let port = echo_server().await;
    let f = proxy(policy());
    let head = format!("CONNECT echo.allowed.test:{port} HTTP/1.1\r\n\r\n");
    let (answer, mut c) = ask(&f.socket, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    c.write_all(b"through the tunnel").await.unwrap();
    let mut buf = [0u8; 18];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"through the tunnel");
    let events = f.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert!(events[0].allowed);
    assert_eq!(
        events[0].address,
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    );
}

#[tokio::test]
async fn metadata_addresses_are_refused_by_name_and_as_literals() {
    let f = proxy(policy());
    for head in [
        "CONNECT meta.allowed.test:80 HTTP/1.1\r\n\r\n",
        // Even when the operator put the literal on the allowlist: the address is judged.
        "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
    ] {
        let (answer, _) = ask(&f.socket, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("169.254.169.254 (link-local"), "{answer}");
    }
    let (answer, _) = ask(&f.socket, b"CONNECT other.test:443 HTTP/1.1\r\n\r\n").await;
    assert!(answer.contains("not on the egress allowlist"), "{answer}");
    let events = f.events.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| !e.allowed && e.address.is_none()));
}

#[tokio::test]
async fn payload_caps_cut_the_connection_and_are_recorded() {
    let port = echo_server().await;
    let f = proxy(Policy {
        max_bytes_out: 1024,
        ..policy()
    });
    let head = format!("CONNECT echo.allowed.test:{port} HTTP/1.1\r\n\r\n");
    let (answer, mut c) = ask(&f.socket, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"));
    let _ = c.write_all(&[b'x'; 4096]).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut sink)).await;
    assert!(sink.len() <= 1024, "{} bytes came back", sink.len());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let events = f.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| !e.allowed && e.reason.contains("payload cap exceeded (out)")),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_connection_rate_is_capped() {
    let port = echo_server().await;
    let f = proxy(Policy {
        connections_per_minute: 2,
        ..policy()
    });
    let head = format!("CONNECT echo.allowed.test:{port} HTTP/1.1\r\n\r\n");
    let mut open = Vec::new();
    for _ in 0..2 {
        let (answer, c) = ask(&f.socket, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        open.push(c);
    }
    let (answer, _) = ask(&f.socket, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("more than 2 connections in a minute"));
}

#[tokio::test]
async fn bad_heads_get_a_400_that_names_the_problem() {
    let f = proxy(policy());
    let (answer, _) = ask(&f.socket, b"GET /relative HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("only CONNECT and absolute http://"),
        "{answer}"
    );
    let mut huge = b"CONNECT a.allowed.test:443 HTTP/1.1\r\nX: ".to_vec();
    // Over the limit, all of it read by the proxy before it answers (unread bytes would
    // reset the socket before the answer is read).
    huge.resize(9_000, b'a');
    let mut c = UnixStream::connect(&f.socket).await.unwrap();
    let _ = c.write_all(&huge).await;
    let mut out = String::new();
    let _ = c.read_to_string(&mut out).await;
    assert!(out.contains("request head over 8192 bytes"), "{out}");
    let events = f.events.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
}

#[test]
fn fuzz_seeds_parse_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/egress_head");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        assert!(warden_sandbox::egress::parse_head(&data).is_ok());
        // Every prefix, and the bytes flipped, fail cleanly or parse.
        for cut in 0..data.len() {
            let _ = warden_sandbox::egress::parse_head(&data[..cut]);
        }
        let flipped: Vec<u8> = data.iter().map(|b| b ^ 0x80).collect();
        assert!(warden_sandbox::egress::parse_head(&flipped).is_err());
        n += 1;
    }
    assert!(n >= 3);
}
