//! A Redis that restarts under the Redis-backed ports: the connections they kept idle are closed
//! by it, and the first requests after it comes back must be served, not refused for a
//! connection the pool no longer has. Each test starts its own `redis-server` on a free
//! loopback port, keeping its data in a file of the test's own (`appendonly yes`, as a fleet's
//! Redis must: the state store refuses to decide on a Redis that lost its data), so that it
//! can kill and restart it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on purpose"
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use warden_core::events::{Event, EventQueue};
use warden_core::state::{HoldScope, StateStore};
use warden_state::{RedisEvents, RedisState};

/// A `redis-server` of this test's own, restartable on the same port.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl OwnRedis {
    /// `None` (after a notice) where there is no `redis-server` to start.
    fn start() -> Option<OwnRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("notice: no redis-server on this machine; skipping the restart tests");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, &dir);
        Some(OwnRedis { port, dir, child })
    }

    fn spawn(port: u16, dir: &tempfile::TempDir) -> Child {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server and starts it again on the same port.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, &self.dir);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_state_store_serves_the_first_requests_after_its_redis_restarts() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let store = RedisState::connect(&redis.url(), "t:").unwrap();
    // Several requests at once leave several connections idle in the pool.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| store.holds(&[HoldScope::Global]).unwrap());
        }
    });
    redis.restart();
    for i in 0..6 {
        let held = store.holds(&[HoldScope::Global]);
        assert!(held.is_ok(), "request {i} after the restart: {held:?}");
    }
}

#[test]
fn the_event_queue_serves_the_first_requests_after_its_redis_restarts() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let queue = RedisEvents::new(&redis.url(), "t:", 16).unwrap();
    let event = |n: i64| Event {
        kind: "brake.kill".into(),
        text: format!("event {n}"),
        details: serde_json::json!({ "n": n }),
        time: n,
    };
    queue.publish(event(1)).unwrap();
    assert_eq!(queue.take(10, Duration::ZERO).unwrap().len(), 1);
    redis.restart();
    queue.publish(event(2)).unwrap();
    let taken = queue.take(10, Duration::ZERO).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken.first().map(|e| e.time), Some(2));
}
