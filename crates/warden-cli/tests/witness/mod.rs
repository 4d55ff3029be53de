//! A witness outside the data directory end to end (issue 18): `warden witness serve` cosigns a
//! gateway's checkpoints as they extend; `ledger verify --witness` passes the log it cosigned and
//! fails the same data directory rolled back to an earlier, self-consistent state (which plain
//! `verify` cannot tell from a genuine one); the gateway started on the rolled-back directory
//! records that the witness refuses it.

use super::{free_port, text, warden};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Stops it with SIGTERM (a gateway then signs its last checkpoint) and waits.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn next() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A gateway on `data` (its log beside it, `data.N.log`), sending its checkpoints to `witness`.
fn gateway(data: &Path, witness: Option<&str>) -> (Running, String) {
    let (api, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(["serve", "--data", data.to_str().unwrap()])
        .args(["--listen", &api, "--admin-listen", &admin])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.with_extension(format!("{}.log", next()))).unwrap());
    if let Some(w) = witness {
        cmd.args(["--witness", w]);
    }
    let child = Running(cmd.spawn().unwrap());
    wait_for("the gateway's start", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&admin).is_ok()
    });
    (child, admin)
}

/// The size of the latest checkpoint the witness cosigned for the log, if any.
fn cosigned_size(witness: &str, origin_hash: &str) -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(witness).ok()?;
    write!(
        s,
        "GET /{origin_hash}/checkpoint HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    out.starts_with("HTTP/1.1 200").then_some(())?;
    body.lines().nth(1)?.parse().ok()
}

fn tail_kinds(data: &Path) -> Vec<String> {
    let out = warden(&[
        "ledger",
        "tail",
        "-n",
        "200",
        "--data",
        data.to_str().unwrap(),
    ]);
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["entry"]["kind"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_witness_catches_a_ledger_rolled_back_in_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (data, wdir) = (dir.path().join("data"), dir.path().join("witness"));
    let d = data.to_str().unwrap();

    // The witness's key, made where the gateway cannot write.
    let out = warden(&[
        "witness",
        "keygen",
        "--data",
        wdir.to_str().unwrap(),
        "--name",
        "witness.test/w1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let wkey = text(&out.stdout).trim().to_owned();

    // A first run makes the ledger and its key; a copy of the ledger is kept (what a rollback
    // restores).
    let (g, _) = gateway(&data, None);
    g.stop();
    let early = dir.path().join("ledger-early");
    copy_dir(&data.join("ledger"), &early);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _w = Running(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args([
                "witness",
                "serve",
                "--data",
                wdir.to_str().unwrap(),
                "--listen",
                &listen,
            ])
            .args(["--log", data.join("keys/ledger.pub").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the witness's start", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    let origin = std::fs::read_to_string(data.join("keys/ledger.pub"))
        .unwrap()
        .split('+')
        .next()
        .unwrap()
        .to_owned();
    let hash = {
        use sha2::Digest as _;
        let mut s = String::new();
        for b in sha2::Sha256::digest(origin.as_bytes()) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    };
    let target = format!("http://{listen}#{wkey}");

    // The gateway with the witness: its checkpoints are cosigned as the log grows (a kill and a
    // resume add entries, so the witness is also shown a consistency proof).
    let (g, admin) = gateway(&data, Some(&target));
    wait_for("a first cosignature", Duration::from_secs(20), || {
        cosigned_size(&listen, &hash).is_some()
    });
    let first = cosigned_size(&listen, &hash).unwrap();
    for verb in ["kill", "resume"] {
        let out = warden(&[verb, "--data", d, "--admin", &admin]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    wait_for(
        "a cosignature of the longer log",
        Duration::from_secs(20),
        || cosigned_size(&listen, &hash).is_some_and(|s| s > first),
    );
    g.stop();

    let out = warden(&["ledger", "verify", "--data", d, "--witness", &target]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("witness witness.test/w1 cosigned"),
        "{}",
        text(&out.stdout)
    );

    // Someone who can write the data directory rolls the ledger back: it is self-consistent,
    // and plain verify cannot tell.
    std::fs::remove_dir_all(data.join("ledger")).unwrap();
    copy_dir(&early, &data.join("ledger"));
    let plain = warden(&["ledger", "verify", "--data", d]);
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain.stderr));
    let out = warden(&["ledger", "verify", "--data", d, "--witness", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("larger than the latest"),
        "{}",
        text(&out.stderr)
    );

    // The gateway started on it: the witness does not cosign it, and the ledger says so.
    let (g, _) = gateway(&data, Some(&target));
    let start = Instant::now();
    while !tail_kinds(&data)
        .iter()
        .any(|k| k == "ledger.witness_ahead" || k == "ledger.witness_refused")
    {
        if start.elapsed() > Duration::from_secs(20) {
            let logs: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| {
                    let p = e.ok()?.path();
                    (p.extension()? == "log").then(|| std::fs::read_to_string(p).ok())?
                })
                .collect();
            panic!(
                "no refusal recorded: {:?}\n{}",
                tail_kinds(&data),
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    g.stop();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "ledger.lock" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
