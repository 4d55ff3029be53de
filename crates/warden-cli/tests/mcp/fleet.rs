//! Two `warden serve` instances of one fleet (state, holds and the brake bus in the machine's
//! Redis, the keys copied from one data directory to the other as docs/state.md says), each
//! with its own ledger, over one upstream (issue 22): a kill switch pulled through instance A's
//! admin listener stops the calls already in flight on instance B, not only B's next calls; a
//! message on the fleet's channel with no hold behind it stops nothing.

use super::super::text;
use super::{env, ledger_tail, start_with};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Copies `from`'s keys and issued credentials into the data directory `to` (one identity for
/// the fleet).
fn share_identity(from: &Path, to: &Path) {
    for dir in ["keys", "agents"] {
        let (src, dst) = (from.join(dir), to.join(dir));
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
            }
        }
    }
}

#[test]
fn a_kill_through_one_instance_stops_the_calls_in_flight_on_another() {
    let Some(e) = env() else { return };
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the fleet test");
        return;
    };
    let prefix = format!(
        "warden-test:fleet-brakes:{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let remote = super::remote(&e);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_data, m) = super::approvals::setup(a_dir.path());
    let tools = "  - { name: everything.trigger-long-running-operation, tier: low, zones: [\"*\"], arguments: { type: object } }\n";
    let upstreams = format!(
        "  - name: everything\n    url: \"http://127.0.0.1:{}/mcp\"\n",
        remote.port
    );
    super::add_to_manifest(&m, tools, &upstreams, "");
    let b_data = b_dir.path().join("data");
    share_identity(&a_data, &b_data);
    let fleet = [
        ("WARDEN_STATE", url.as_str()),
        ("WARDEN_STATE_PREFIX", prefix.as_str()),
    ];
    let a = start_with(a_dir.path(), &a_data, &m, &fleet);
    let b = start_with(b_dir.path(), &b_data, &m, &fleet);

    // A call through B that would take 20 s.
    let in_flight = {
        let (sdk, url, cred) = (
            e.sdk(),
            b.url.clone(),
            b.data.join("agents/coder-1.credential"),
        );
        std::thread::spawn(move || {
            let mut sdk = sdk;
            let out = sdk
                .arg(url)
                .arg(cred)
                .args([
                    "call",
                    "everything.trigger-long-running-operation",
                    r#"{"duration":20,"steps":20}"#,
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            let answered = Instant::now();
            (
                serde_json::from_slice::<Value>(&out.stdout).unwrap(),
                answered,
            )
        })
    };
    // Decided, and so on its way to the upstream, on B.
    let started = Instant::now();
    while !ledger_tail(&b.data, 20).contains("everything.trigger-long-running-operation") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the call was not decided on B"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the grant and the hold checks, into the upstream (it answers in 20 s; a kill that
    // came first would be refused at the hold check instead, which is not what this tests).
    std::thread::sleep(Duration::from_millis(3000));

    // A message on the fleet's channel with no hold behind it (forged, or stale) stops nothing.
    let forged = Command::new("redis-cli")
        .args(["-u", &url, "PUBLISH", &format!("{prefix}brakes")])
        .arg(r#"{"scope":"agent","id":"coder-1"}"#)
        .output()
        .unwrap();
    assert!(forged.status.success(), "{}", text(&forged.stderr));
    assert_eq!(
        text(&forged.stdout).trim(),
        "2",
        "both instances subscribed"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !in_flight.is_finished(),
        "a message without a hold stopped the call"
    );

    // The kill switch, through A.
    let pulled = Instant::now();
    let out = super::operator(
        &a,
        &["kill", "--agent", "coder-1", "--reason", "fleet drill"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (r, answered) = in_flight.join().unwrap();
    let delay = answered.duration_since(pulled);
    eprintln!("kill through A to the call's answer on B: {delay:?}");
    // The call was stopped (it had 19 s to go), and receipted `killed` on B.
    assert!(
        delay < Duration::from_secs(5),
        "the call on B ran on for {delay:?}"
    );
    let result = &r["result"];
    assert_eq!(result["isError"], true, "{result}");
    assert!(super::first_text(result).contains("cancelled"), "{result}");
    let ledger = ledger_tail(&b.data, 20);
    assert!(
        ledger.lines().any(|l| l.contains("\"type\":\"receipt\"")
            && l.contains("everything.trigger-long-running-operation")
            && l.contains("\"status\":\"killed\"")),
        "{ledger}"
    );
    // And B refuses the next call: the hold is the fleet's.
    let r = super::call(
        &e,
        &b,
        "coder-1",
        "everything.trigger-long-running-operation",
        r#"{"duration":1,"steps":1}"#,
    );
    assert!(super::first_text(&r).contains("fleet drill"), "{r}");
}
