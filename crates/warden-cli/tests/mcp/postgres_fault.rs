//! A fleet's ledger in PostgreSQL, and PostgreSQL going away (issue 22): a PostgreSQL of the
//! test's own (Debian's `initdb` and `pg_ctl`, a free loopback port) holds the ledger of a
//! `warden serve`. Stopped hard mid-run, every call fails closed with a clear answer and nothing
//! runs; started again, calls run again without restarting Warden; every acknowledged entry is in
//! the ledger, which verifies. Three instances behind HAProxy share that ledger, Redis state and
//! redeemed grants; one is killed (`SIGKILL`) mid-load: every call acknowledged to a client has
//! its receipt, no grant ran twice, and the log verifies.

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
    /// `psql` connected to this cluster as `root` (the database and commands still to add).
    fn psql(&self) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "root",
        ]);
        c
    }

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

/// `warden ledger verify` of the PostgreSQL ledger at `url` (with `data`'s key) must pass; its
/// `warden ledger export`.
fn verified_export(data: &Path, url: &str) -> String {
    let ledger = ["--data", data.to_str().unwrap(), "--postgres", url];
    let out = warden(&[&["ledger", "verify"][..], &ledger].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = warden(&[&["ledger", "export"][..], &ledger].concat());
    text(&out.stdout)
}

/// A PostgreSQL cluster of the test's own in `dir`, started; `None` (with a notice) without
/// PostgreSQL's programs, which must be there where the tests are given a PostgreSQL (CI).
fn own_postgres(dir: &Path) -> Option<OwnPostgres> {
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("WARDEN_TEST_POSTGRES_URL").is_err(),
            "PostgreSQL's programs (initdb, pg_ctl) are not installed"
        );
        eprintln!("notice: PostgreSQL's programs are not installed; skipping");
        return None;
    };
    let pg = OwnPostgres::init(bin, dir);
    pg.start();
    Some(pg)
}

/// One `warden serve` of the approvals setup whose ledger is in a PostgreSQL of the test's own
/// (the gateway is stopped first, the cluster next, the directory last).
struct PgGateway {
    s: super::Server,
    pg: OwnPostgres,
    e: super::Env,
    data: PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

impl PgGateway {
    fn start() -> Option<PgGateway> {
        let e = env()?;
        let dir = tempfile::tempdir().unwrap();
        let pg = own_postgres(dir.path())?;
        let (data, m) = super::approvals::setup(dir.path());
        let url = pg.url();
        let s = start_with(dir.path(), &data, &m, &[("WARDEN_LEDGER_POSTGRES", &url)]);
        Some(PgGateway {
            s,
            pg,
            e,
            data,
            url,
            _dir: dir,
        })
    }

    /// `coder-1` calls `demo.echo` with `text`: the result.
    fn echo(&self, text: &str) -> serde_json::Value {
        call(
            &self.e,
            &self.s,
            "coder-1",
            "demo.echo",
            &format!(r#"{{"text":"{text}"}}"#),
        )
    }

    /// Calls until one runs, for at most `within`.
    fn echo_until_it_runs(&self, within: Duration) {
        let back = Instant::now();
        let r = loop {
            let r = self.echo("after");
            if r["isError"] == false || back.elapsed() > within {
                break r;
            }
        };
        assert_eq!(r["isError"], false, "did not resume: {r}");
    }
}

#[test]
fn a_gateway_fails_closed_while_its_postgres_ledger_is_down_and_resumes_alone() {
    let Some(g) = PgGateway::start() else { return };

    let r = g.echo("before");
    assert_eq!(r["isError"], false, "{r}");

    // PostgreSQL gone: nothing is decided without the ledger, and the agent is told why.
    g.pg.crash();
    let r = g.echo("while down");
    assert_eq!(r["isError"], true, "{r}");
    let said = first_text(&r);
    assert!(said.contains("could not record"), "{said}");

    // Back: calls run again, without restarting Warden.
    g.pg.start();
    let back = Instant::now();
    g.echo_until_it_runs(Duration::from_secs(20));
    eprintln!(
        "first call that ran after PostgreSQL came back: {:?}",
        back.elapsed()
    );
    // A clean stop: the ledger signs its last checkpoint.
    let mut g = g;
    let ok = Command::new("kill")
        .args(["-TERM", &g.s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let stopped = Instant::now();
    while g.s.child.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every acknowledged entry is there, signed, and the log verifies.
    let export = verified_export(&g.data, &g.url);
    let receipts = export
        .lines()
        .filter(|l| l.contains("\"type\":\"receipt\"") && l.contains("demo.echo"))
        .count();
    assert_eq!(receipts, 2, "the two calls that ran: {export}");
}

#[test]
fn killing_an_instance_mid_load_loses_no_acknowledged_entry_and_runs_no_grant_twice() {
    let Some(_e) = env() else { return };
    let Ok(redis) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the fleet test");
        return;
    };
    let pg_dir = tempfile::tempdir().unwrap();
    let Some(pg) = own_postgres(pg_dir.path()) else {
        return;
    };
    let pg_url = pg.url();
    let prefix = super::fleet::fleet_prefix("fleet-crash");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, m) = super::approvals::setup(dirs[0].path());
    // A load, not a budget test: the low tier's rate and the agent's calls are raised.
    let manifest = std::fs::read_to_string(&m).unwrap();
    let raised = manifest
        .replacen("rate: 100/h", "rate: 100000/h", 1)
        .replace("agent:  { calls: 1000/h", "agent:  { calls: 100000/h")
        .replace("tenant: { calls: 10000/h", "tenant: { calls: 100000/h");
    assert_ne!(raised, manifest);
    std::fs::write(&m, raised).unwrap();
    // The fleet: state and redeemed grants in Redis, one ledger in PostgreSQL.
    let fleet = [
        ("WARDEN_STATE", redis.as_str()),
        ("WARDEN_STATE_PREFIX", prefix.as_str()),
        ("WARDEN_REPLAY_REDIS", redis.as_str()),
        ("WARDEN_LEDGER_POSTGRES", pg_url.as_str()),
    ];
    // As docs/fleet.md says: the first instance starts once (its keys, the ledger's among
    // them, are made then); the others get its identity.
    let mut s: Vec<Option<super::Server>> =
        vec![Some(start_with(dirs[0].path(), &first, &m, &fleet))];
    let mut datas = vec![first.clone()];
    for d in &dirs[1..] {
        let data = d.path().join("data");
        super::fleet::share_identity(&first, &data);
        s.push(Some(start_with(d.path(), &data, &m, &fleet)));
        datas.push(data);
    }
    let addrs: Vec<String> = s.iter().flatten().map(|x| x.addr.clone()).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let Some(lb) = super::fleet::balance(dirs[0].path(), &refs) else {
        return;
    };
    let bearer = super::fleet::bearer_of(&first);

    // Six clients call through HAProxy; instance 0 is killed (SIGKILL) while they do.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut killed_at = Instant::now();
    let acknowledged: Vec<(String, Instant)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let (stop, url, bearer) = (&stop, &lb.url, &bearer);
                scope.spawn(move || {
                    let mut ok = Vec::new();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let text = format!("c{c}-{n}");
                        n += 1;
                        if super::fleet::echo_over_http(url, bearer, &text).is_ok() {
                            ok.push((text, Instant::now()));
                        }
                    }
                    ok
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2000));
        drop(s[0].take());
        killed_at = Instant::now();
        std::thread::sleep(Duration::from_millis(2000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        clients
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        acknowledged.len() > 20,
        "too few calls ran: {}",
        acknowledged.len()
    );
    // Calls ran after the kill, through the other two.
    assert!(
        acknowledged
            .iter()
            .any(|(_, at)| *at > killed_at + Duration::from_millis(500)),
        "no call ran after the kill"
    );
    // The survivors stop cleanly: each signs a checkpoint over what it wrote, the last over
    // the whole log.
    for server in s.iter_mut().flatten() {
        let ok = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let stopped = Instant::now();
        while server.child.try_wait().unwrap().is_none() {
            assert!(
                stopped.elapsed() < Duration::from_secs(20),
                "serve did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let export = verified_export(&first, &pg_url);
    let receipts: Vec<serde_json::Value> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v.get("entry").cloned().unwrap_or(v))
        .filter(|v| v["type"] == "receipt" && v["action"] == "demo.echo")
        .collect();
    // Every acknowledged call has its receipt, `ok`.
    for (text, _) in &acknowledged {
        let hash = warden_core::canonical::json_digest(&serde_json::json!({ "text": text }));
        assert!(
            receipts
                .iter()
                .any(|r| r["arguments_hash"] == hash.as_str() && r["status"] == "ok"),
            "no receipt for the acknowledged call {text}"
        );
    }
    // No grant ran twice.
    let mut grants: Vec<&str> = receipts
        .iter()
        .filter_map(|r| r["grant"].as_str())
        .collect();
    let all = grants.len();
    grants.sort_unstable();
    grants.dedup();
    assert_eq!(grants.len(), all, "a grant ran twice");
    eprintln!(
        "{} calls acknowledged, {all} receipts, instance 0 killed mid-load",
        acknowledged.len()
    );
    drop(lb);
    // An instance with keys of its own would write a second log into the fleet's store: it
    // does not start.
    let stranger = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--data"])
        .arg(stranger.path().join("data"))
        .arg("--manifest")
        .arg(&m)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .envs(fleet)
        .output()
        .unwrap();
    let why = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{why}");
    assert!(why.contains("the fleet's shared ledger is"), "{why}");
}

#[test]
fn a_postgres_slower_than_its_timeout_fails_the_call_closed_and_changes_nothing() {
    let Some(g) = PgGateway::start() else { return };
    assert_eq!(g.echo("before")["isError"], false);
    // Another session holds the ledger's head row, which every append locks, for 8 s: the
    // ledger is slow.
    let holder =
        g.pg.psql()
            .arg("postgres")
            .args([
                "-c",
                "SELECT 1 FROM warden_ledger_head FOR UPDATE; SELECT pg_sleep(8)",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let mut holder = Killed(holder);
    // Once that session sleeps, it holds the lock (a fixed pause was too short on a loaded
    // machine).
    let sleeping = || {
        let out =
            g.pg.psql()
                .args(["-tA", "postgres"])
                .args([
                    "-c",
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
                ])
                .output()
                .unwrap();
        text(&out.stdout).trim() == "1"
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleeping() {
        assert!(
            Instant::now() < deadline,
            "the lock holder never got its lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let r = g.echo("while slow");
    let waited = started.elapsed();
    assert_eq!(r["isError"], true, "{r}");
    assert!(first_text(&r).contains("could not record"), "{r}");
    assert!(
        waited < Duration::from_secs(8),
        "the call waited {waited:?} (the lock timeout is 5 s)"
    );
    // The lock let go: calls run again, and the refused one left no decision behind.
    let _ = holder.0.wait();
    let r = g.echo("after");
    assert_eq!(r["isError"], false, "{r}");
    drop(g.s);
    let export = verified_export_any(&g.data, &g.url);
    let decisions = export
        .lines()
        .filter(|l| l.contains("\"type\":\"decision\"") && l.contains("demo.echo"))
        .count();
    assert_eq!(decisions, 2, "{export}");
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warden ledger verify` of the PostgreSQL ledger at `url` (with `data`'s key) finds every
/// entry intact, signed or not (a gateway killed leaves an unsigned tail); its export.
fn verified_export_any(data: &Path, url: &str) -> String {
    let ledger = ["--data", data.to_str().unwrap(), "--postgres", url];
    let out = warden(&[&["ledger", "verify"][..], &ledger].concat());
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = warden(&[&["ledger", "export"][..], &ledger].concat());
    text(&out.stdout)
}

#[test]
fn a_frozen_postgres_holds_no_call_past_the_record_wait_and_calls_resume_when_it_thaws() {
    let Some(g) = PgGateway::start() else { return };
    assert_eq!(g.echo("before")["isError"], false);
    // Every process of the cluster stopped (SIGSTOP): connections stay open, nothing answers.
    let pid = std::fs::read_to_string(g.pg.data.join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_owned();
    let signal = |sig: &str| {
        let _ = Command::new("pkill").args([sig, "-P", &pid]).status();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let started = Instant::now();
    let r = g.echo("frozen");
    let waited = started.elapsed();
    signal("-CONT");
    assert_eq!(r["isError"], true, "{r}");
    assert!(first_text(&r).contains("could not record"), "{r}");
    assert!(
        waited < Duration::from_secs(20),
        "the call waited {waited:?} (the record wait is 10 s)"
    );
    // Thawed: calls run again without restarting Warden.
    g.echo_until_it_runs(Duration::from_secs(30));
}
