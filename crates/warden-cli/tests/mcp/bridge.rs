//! One daemon, many desktop clients (issue 20): `warden stdio --connect URL` bridges each
//! client's stdio to a running `warden serve`, so several windows share one gateway, one ledger
//! and one state. Driven by the official MCP Python SDK launching the bridge as a desktop client
//! would, in its default mode and in legacy mode, two at once.

use super::approvals::setup;
use super::{env, first_text, ledger_tail, start_existing, Env};
use serde_json::Value;

fn bridged(
    e: &Env,
    url: &str,
    credential: &std::path::Path,
    mode: &'static str,
    args: Vec<String>,
) -> std::thread::JoinHandle<Value> {
    let stdio = super::bridge_target(url, credential);
    let mut sdk = e.sdk();
    sdk.env("WARDEN_E2E_MODE", mode)
        .arg(stdio)
        .arg("-")
        .args(args);
    std::thread::spawn(move || {
        let out = sdk.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

#[test]
fn two_desktop_clients_share_one_daemon_through_stdio_bridges() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path());
    let s = start_existing(dir.path(), &data, &m);
    let cred = data.join("agents/coder-1.credential");
    let call = |text: &str| {
        vec![
            "call".to_owned(),
            "demo.echo".to_owned(),
            serde_json::json!({ "text": text }).to_string(),
        ]
    };
    // Two clients at once, one in the SDK's default mode and one in legacy mode, while the
    // daemon keeps its data directory (an embedded `warden stdio` on it would be refused).
    let a = bridged(&e, &s.url, &cred, "auto", call("from window one"));
    let b = bridged(&e, &s.url, &cred, "legacy", call("from window two"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(first_text(&a["result"]), "from window one", "{a}");
    assert_eq!(first_text(&b["result"]), "from window two", "{b}");
    assert_eq!(a["server"], "warden");
    // What the daemon decides goes through: a denied call is denied, listing is per agent.
    let listed = bridged(&e, &s.url, &cred, "auto", vec!["list".into()])
        .join()
        .unwrap();
    let tools = listed["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t == "demo.echo"), "{listed}");
    let denied = bridged(
        &e,
        &s.url,
        &cred,
        "auto",
        vec!["call".into(), "demo.echo".into(), "{\"wrong\": 1}".into()],
    )
    .join()
    .unwrap();
    assert!(first_text(&denied["result"]).contains("Warden"), "{denied}");
    // `_meta` reaches the daemon: a task declared through the bridge is recorded.
    let task = bridged(
        &e,
        &s.url,
        &cred,
        "auto",
        vec![
            "call-meta".into(),
            "demo.now".into(),
            "{}".into(),
            r#"{"warden/task": "What time is it?"}"#.into(),
        ],
    )
    .join()
    .unwrap();
    assert_eq!(task["result"]["isError"], false, "{task}");
    // Everything is in the daemon's one ledger.
    let tail = ledger_tail(&data, 20);
    assert!(tail.contains("session.task"), "{tail}");
    assert!(tail.matches("demo.echo").count() >= 2, "{tail}");
    // A credential the daemon refuses: the bridge says so and exits non-zero.
    let bad = dir.path().join("bad.credential");
    std::fs::write(&bad, "not-a-credential").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["stdio", "--connect", &s.url, "--credential"])
        .arg(&bad)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Warden daemon"), "{err}");
}
