//! A fleet's ledger in PostgreSQL, and PostgreSQL going away (issue 22): a PostgreSQL of the
//! test's own (Debian's `initdb` and `pg_ctl`, a free loopback port) holds the ledger of a
//! `warden serve`. Stopped hard mid-run, every call fails closed with a clear answer and nothing
//! runs; started again, calls run again without restarting Warden; every acknowledged entry is in
//! the ledger, which verifies.

use super::super::{free_port, text, warden};
use super::{call, env, first_text, start_with};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// PostgreSQL's programs (Debian keeps them under `/usr/lib/postgresql/<version>/bin`).
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("pg_ctl").exists() && b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// A PostgreSQL cluster of the test's own, run as the `postgres` user when the test is root
/// (PostgreSQL refuses to run as root).
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    root: bool,
}

impl OwnPostgres {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn init(bin: PathBuf, dir: &Path) -> OwnPostgres {
        let root = text(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0";
        let data = dir.join("pg");
        std::fs::create_dir_all(&data).unwrap();
        if root {
            // The cluster's directory is the postgres user's; the way to it must be open.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let ok = Command::new("chown")
                .args(["postgres:", data.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let pg = OwnPostgres {
            bin,
            data,
            port: free_port(),
            root,
        };
        let out = pg
            .command("initdb")
            .args(["-D", pg.data.to_str().unwrap(), "-A", "trust", "-U", "root"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", text(&out.stderr));
        pg
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.data.display()
        );
        let out = self
            .command("pg_ctl")
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
            ])
            .arg("-l")
            .arg(self.data.join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", text(&out.stderr));
    }

    /// Stops it as a crash would (`immediate`: no checkpoint, connections cut).
    fn crash(&self) {
        let out = self
            .command("pg_ctl")
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out.stderr));
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn a_gateway_fails_closed_while_its_postgres_ledger_is_down_and_resumes_alone() {
    let Some(e) = env() else { return };
    let Some(bin) = pg_bin() else {
        // Where the tests are given a PostgreSQL (CI), its programs are there too.
        assert!(
            std::env::var("WARDEN_TEST_POSTGRES_URL").is_err(),
            "PostgreSQL's programs (initdb, pg_ctl) are not installed"
        );
        eprintln!("notice: PostgreSQL's programs are not installed; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pg = OwnPostgres::init(bin, dir.path());
    pg.start();
    let (data, m) = super::approvals::setup(dir.path());
    let url = pg.url();
    let s = start_with(dir.path(), &data, &m, &[("WARDEN_LEDGER_POSTGRES", &url)]);
    let echo = |text: &str| {
        call(
            &e,
            &s,
            "coder-1",
            "demo.echo",
            &format!(r#"{{"text":"{text}"}}"#),
        )
    };

    let r = echo("before");
    assert_eq!(r["isError"], false, "{r}");

    // PostgreSQL gone: nothing is decided without the ledger, and the agent is told why.
    pg.crash();
    let r = echo("while down");
    assert_eq!(r["isError"], true, "{r}");
    let said = first_text(&r);
    assert!(said.contains("could not record"), "{said}");

    // Back: calls run again, without restarting Warden.
    pg.start();
    let back = Instant::now();
    let r = loop {
        let r = echo("after");
        if r["isError"] == false || back.elapsed() > Duration::from_secs(20) {
            break r;
        }
    };
    assert_eq!(r["isError"], false, "did not resume: {r}");
    eprintln!(
        "first call that ran after PostgreSQL came back: {:?}",
        back.elapsed()
    );
    // A clean stop: the ledger signs its last checkpoint.
    let mut s = s;
    let ok = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let stopped = Instant::now();
    while s.child.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every acknowledged entry is there, signed, and the log verifies.
    let ledger = ["--data", data.to_str().unwrap(), "--postgres", &url];
    let out = warden(&[&["ledger", "verify"][..], &ledger].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = warden(&[&["ledger", "export"][..], &ledger].concat());
    let export = text(&out.stdout);
    let receipts = export
        .lines()
        .filter(|l| l.contains("\"type\":\"receipt\"") && l.contains("demo.echo"))
        .count();
    assert_eq!(receipts, 2, "the two calls that ran: {export}");
}
