//! Test support shared by Warden's crates. It is only ever a dev-dependency: nothing here is
//! part of the `warden` binary.
//!
//! [`OwnRedis`] is a real `redis-server` of a test's own, on a free loopback port, so that a
//! fault test can kill it and start it again without touching the machine's Redis (which other
//! tests share).

#![expect(
    clippy::panic,
    clippy::expect_used,
    reason = "test support: a server that cannot be started fails the test that asked for it, loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started `redis-server` has to accept connections.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` of this test's own on a loopback port, keeping its data in an append-only
/// file written through at every command (`appendonly yes`, `appendfsync always`, no RDB
/// snapshots), as a fleet's Redis must: the state store refuses to decide on a Redis that lost
/// its data. Its output goes nowhere (a child holding a test's output pipe would keep a
/// `cargo test | ...` pipeline open). Killed when dropped, so a failing assertion leaves no
/// server behind.
#[derive(Debug)]
pub struct OwnRedis {
    port: u16,
    dir: PathBuf,
    /// The data directory when the server owns it (removed when dropped).
    _own_dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl OwnRedis {
    /// Whether this machine has a `redis-server` to start (Debian's `redis-server` package).
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// A server on a free port with a data directory of its own; `None`, after a notice naming
    /// `what` is skipped, where this machine has no `redis-server`.
    pub fn start(what: &str) -> Option<OwnRedis> {
        if !Self::available() {
            eprintln!("notice: no redis-server on this machine; skipping {what}");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server's data");
        let mut redis = OwnRedis {
            port: free_port(),
            dir: dir.path().to_path_buf(),
            _own_dir: Some(dir),
            child: None,
        };
        redis.start_again();
        Some(redis)
    }

    /// A server on `port` keeping its data in `dir` (which the caller keeps): a test can drop
    /// it and start another on the same port and data, or on an empty directory (a Redis that
    /// lost its data).
    pub fn start_in(port: u16, dir: &Path) -> OwnRedis {
        let mut redis = OwnRedis {
            port,
            dir: dir.to_path_buf(),
            _own_dir: None,
            child: None,
        };
        redis.start_again();
        redis
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id while it runs (a test may stop it with `SIGSTOP` and let it go on).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: what it had not written is lost, as in a crash) and waits
    /// for it to be gone. It stays down until [`OwnRedis::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its port with its data, and waits until it accepts
    /// connections. A server still running is killed first.
    pub fn start_again(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) starts");
        self.child = Some(child);
        let deadline = Instant::now() + LISTEN_WITHIN;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                self.kill();
                panic!("redis-server did not listen on 127.0.0.1:{}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and starts it again on the same port with its data.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(port: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let mut pong = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut pong).is_ok() && &pong == b"+PONG\r\n"
    }

    #[test]
    fn a_server_of_its_own_answers_until_killed_and_again_once_restarted_and_is_gone_when_dropped()
    {
        let Some(mut redis) = OwnRedis::start("the testkit's own test") else {
            return;
        };
        let port = redis.port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
        assert!(answers(port));
        assert!(redis.pid().is_some());
        redis.kill();
        assert!(redis.pid().is_none());
        assert!(!answers(port));
        redis.start_again();
        assert!(answers(port));
        redis.restart();
        assert!(answers(port));
        drop(redis);
        assert!(!answers(port));
    }
}
