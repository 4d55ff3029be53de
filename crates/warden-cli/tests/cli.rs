//! The `warden` binary, end to end: what a newcomer types, what they see, which exit code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use warden_testkit::{free_port, OwnRedis};

mod docs;
mod mcp;
mod replay;
mod runbooks;
mod sandbox;
mod witness;

/// 2026-11-22T10:00:00Z, inside the starter's 08:00-22:00 window.
const DAY_TIME: &str = "1795341600";
const NIGHT_TIME: &str = "1795388400";

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap()
}

fn warden_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn init(dir: &Path) -> String {
    let data = dir.join("data");
    let out = warden(&[
        "init",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir.join("manifest.yaml").to_str().unwrap().to_string()
}

fn check(manifest: &str, extra: &[&str], proposal: &str) -> (i32, serde_json::Value) {
    let mut args = vec!["check", "--manifest", manifest, "--now", DAY_TIME];
    args.extend_from_slice(extra);
    args.push("-");
    let out = warden_stdin(&args, proposal.as_bytes());
    let code = out.status.code().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (code, json)
}

#[test]
fn init_writes_a_manifest_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    let out = warden(&["manifest", "validate", &m]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "));
    // Refuses to overwrite.
    let data = dir.path().join("data");
    let again = warden(&[
        "init",
        dir.path().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already exists"));
}

#[test]
fn check_exit_codes_follow_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    let (code, d) = check(
        &m,
        &[],
        r#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#,
    );
    assert_eq!(code, 0);
    for key in [
        "decision",
        "rules",
        "reason",
        "manifest_version",
        "policy_hash",
    ] {
        assert!(d.get(key).is_some(), "missing {key}: {d}");
    }
    assert_eq!(d["decision"], "allow");
    let (code, d) = check(
        &m,
        &[],
        r#"{"agent":"coder-1","session":"s","tool":"rm.rf","arguments":{}}"#,
    );
    assert_eq!((code, d["rules"][0].as_str()), (1, Some("tool.unknown")));
    let (code, d) = check(
        &m,
        &[],
        r#"{"agent":"ops-1","session":"s","tool":"deploy.staging","arguments":{"service":"a","version":"1"}}"#,
    );
    assert_eq!(code, 3);
    assert_eq!(d["escalation"]["kind"], "approvers");
    assert_eq!(d["escalation"]["role"], "planner");
}

#[test]
fn check_refuses_bad_proposals_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    for (input, needle) in [
        (&b"{\"agent\":\"coder-1\""[..], "EOF"),
        (&b"[]"[..], "expected a JSON object"),
        (
            &b"{\"agent\":\"a\",\"session\":\"s\",\"tool\":\"t\",\"grant\":1}"[..],
            "unknown field `grant`",
        ),
    ] {
        let out = warden_stdin(&["check", "--manifest", &m, "-"], input);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains(needle), "{}", text(&out.stderr));
    }
    let huge = vec![b' '; (1 << 20) + 10];
    let out = warden_stdin(&["check", "--manifest", &m, "-"], &huge);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("limit"), "{}", text(&out.stderr));
    let out = warden(&["check", "--manifest", &m, "/nonexistent/proposal.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/proposal.json"));
    // Usage errors are exit 2 too.
    assert_eq!(warden(&["check"]).status.code(), Some(2));
}

#[test]
fn a_broken_bundle_allows_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    std::fs::write(
        dir.path().join("policies/base.cedar"),
        "permit (principal, action == Action::\"no.such_tool\", resource);",
    )
    .unwrap();
    let out = warden_stdin(
        &["check", "--manifest", &m, "-"],
        br#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#,
    );
    assert_eq!(out.status.code(), Some(2));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["rules"][0], "manifest.not_loaded");
    assert!(
        text(&out.stderr).contains("base.cedar:1"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("no.such_tool"));
}

#[test]
fn validate_prints_every_error_with_file_line_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    let original = std::fs::read_to_string(&m).unwrap();
    let broken = original
        .replace("tier: critical", "tier: apocalyptic")
        .replace("zone: prod, trust: senior", "zone: moon, trust: senior")
        .replace("rate: 10/h", "rate: ten per hour");
    std::fs::write(&m, &broken).unwrap();
    let out = warden(&["manifest", "validate", &m]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        err.contains(&format!(
            "{m}:{}: risk_tiers.high.rate:",
            line_of("ten per hour")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{m}:{}: agents[1].zone: unknown zone `moon`",
            line_of("zone: moon")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{m}:{}: tools[3].tier: unknown tier `apocalyptic`",
            line_of("apocalyptic")
        )),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");
    // Unknown keys are refused, naming the key.
    std::fs::write(
        &m,
        original.replace("  - id: acme\n", "  - id: acme\n    region: eu\n"),
    )
    .unwrap();
    let out = warden(&["manifest", "validate", &m]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("tenants[0]: unknown field `region`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hash_is_stable_and_covers_policies() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    let h1 = text(&warden(&["manifest", "hash", &m]).stdout);
    let h2 = text(&warden(&["manifest", "hash", &m]).stdout);
    assert_eq!(h1, h2);
    assert!(h1.starts_with("sha256:"));
    let (_, d) = check(
        &m,
        &[],
        r#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#,
    );
    assert_eq!(d["policy_hash"].as_str().unwrap(), h1.trim());
    let p = dir.path().join("policies/base.cedar");
    let mut policy = std::fs::read_to_string(&p).unwrap();
    policy.push_str("\n// a comment\n");
    std::fs::write(&p, policy).unwrap();
    let h3 = text(&warden(&["manifest", "hash", &m]).stdout);
    assert_ne!(h1, h3);
}

#[test]
fn diff_calls_out_downgrades_and_loosened_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let old = init(dir.path());
    let new = dir.path().join("new.yaml");
    let text_old = std::fs::read_to_string(&old).unwrap();
    let keygen = warden(&[
        "approvers",
        "keygen",
        "zed",
        "--data",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    std::fs::write(
        &new,
        text_old
            .replace("version: 1", "version: 2")
            .replace("    critical: true", "    critical: false")
            .replace(
                "\napprovers:\n",
                &format!("\napprovers:\n{}", text(&keygen.stdout)),
            )
            .replace("    tier: critical", "    tier: high")
            .replace(
                "{ mode: role, approvers: 1, role: planner }",
                "{ mode: auto }",
            )
            .replace("rate: 2/h", "rate: 20/h"),
    )
    .unwrap();
    let out = warden(&["manifest", "diff", &old, new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains(
            "! LOOSENED  tools[db.drop_table].tier: tier `critical` -> `high` (tier downgrade)"
        ),
        "{s}"
    );
    assert!(s.contains("! LOOSENED  risk_tiers.high.approval"), "{s}");
    assert!(
        s.contains("! LOOSENED  risk_tiers.critical.critical: critical true -> false"),
        "{s}"
    );
    assert!(
        s.contains("! LOOSENED  approvers.zed: approver added"),
        "{s}"
    );
    assert!(
        s.contains("! LOOSENED  risk_tiers.critical.rate: rate 2/h -> 20/h"),
        "{s}"
    );
    // The invariant counts fewer tools; its cap did not change and is not reported as if.
    assert!(
        s.contains("! LOOSENED  invariants[critical-actions]: tools counted [db.drop_table] -> []"),
        "{s}"
    );
    assert!(!s.contains("5/h -> 5/h"), "{s}");
    let out = warden(&["manifest", "diff", "--json", &old, new.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["impact"] == "loosened"));
}

#[test]
fn schema_is_json_and_matches_the_checked_in_copy() {
    let out = warden(&["manifest", "schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "version",
        "risk_tiers",
        "tenants",
        "agents",
        "tools",
        "budgets",
        "invariants",
        "breakers",
        "policies",
    ] {
        assert!(
            schema["properties"].get(key).is_some(),
            "schema lacks {key}"
        );
    }
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manifest.schema.json");
    let checked_in: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checked_in).unwrap()).unwrap();
    assert_eq!(
        schema, checked_in,
        "regenerate docs/manifest.schema.json with `warden manifest schema`"
    );
}

#[test]
fn state_directory_carries_counters_and_pauses_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let p = r#"{"agent":"coder-1","session":"loop","tool":"fs.read_file","arguments":{"path":"/same"}}"#;
    assert_eq!(check(&m, &["--state", state], p).0, 0);
    assert_eq!(check(&m, &["--state", state], p).0, 0);
    let (code, d) = check(&m, &["--state", state], p);
    assert_eq!(
        (code, d["rules"][0].as_str()),
        (3, Some("loop.repeat_pattern"))
    );
    let (code, d) = check(&m, &["--state", state], &p.replace("/same", "/other"));
    assert_eq!((code, d["rules"][0].as_str()), (3, Some("session.paused")));
    // Without --state each run starts afresh.
    assert_eq!(check(&m, &[], p).0, 0);
}

#[test]
fn queued_outside_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let m = init(dir.path());
    let text_m = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        text_m.replace("zone: prod, trust: senior", "zone: dev, trust: senior"),
    )
    .unwrap();
    let out = warden_stdin(
        &["check", "--manifest", &m, "--now", NIGHT_TIME, "-"],
        br#"{"agent":"ops-1","session":"s","tool":"github.create_issue","arguments":{"repo":"acme/a","title":"t"}}"#,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["escalation"]["kind"], "queued");
    assert_eq!(d["escalation"]["until"], "2026-11-23T08:00:00Z");
}

/// Writes a ledger of `n` decision records into DATA the way `serve` does, with a signed
/// checkpoint, and returns the checkpoint note.
fn make_ledger(data: &Path, n: u64) -> String {
    let ledger =
        warden_runtime::witness::open_ledger(data, None, &Default::default(), Default::default())
            .unwrap();
    for i in 0..n {
        let d = warden_core::Decision {
            decision: warden_core::Verdict::Allow,
            rules: vec!["tier.low.auto".into()],
            policies: vec![],
            reason: "allowed".into(),
            manifest_version: 1,
            policy_hash: "sha256:00".into(),
            escalation: None,
            agent: "coder-1".into(),
            owner: "alice@acme.example".into(),
            tenant: "acme".into(),
            session: "s".into(),
            tool: "fs.read_file".into(),
            operation: warden_core::Operation::Use,
            arguments_hash: format!("sha256:{i:064x}"),
            decided_at: 1_795_341_600,
            provenance: Vec::new(),
            budget_use: Vec::new(),
        };
        let e = warden_ledger::Entry::Decision(warden_ledger::DecisionRecord::from_decision(
            &d,
            "",
            &format!("req-{i:04}"),
        ));
        ledger.append(&e).unwrap();
    }
    ledger.checkpoint().unwrap()
}

#[test]
fn ledger_commands_prove_export_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let d = data.to_str().unwrap();
    let early = make_ledger(data, 6);
    let early_path = data.join("early.checkpoint");
    std::fs::write(&early_path, &early).unwrap();
    make_ledger(data, 10);

    let out = warden(&["ledger", "verify", "--data", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("16 entries verified"),
        "{}",
        text(&out.stdout)
    );
    let out = warden(&[
        "ledger",
        "verify",
        "--data",
        d,
        "--from-checkpoint",
        early_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("extends the checkpoint at size 6"));

    let out = warden(&["ledger", "show", "3", "--data", d]);
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["entry"]["request_id"], "req-0003");
    assert_eq!(j["entry"]["type"], "decision");

    let out = warden(&["ledger", "tail", "-n", "2", "--data", d]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["index"], 15);

    let out = warden(&["ledger", "prove", "3", "--data", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["size"], 16);
    assert!(p["checkpoint"].as_str().unwrap().contains("\n16\n"));
    let proven: warden_ledger::proof::Proven = serde_json::from_value(p.clone()).unwrap();
    proven.verify().unwrap();

    let out = warden(&["ledger", "consistency", "6", "16", "--data", d]);
    let c: warden_ledger::proof::Consistent = serde_json::from_slice(&out.stdout).unwrap();
    c.verify().unwrap();
    assert!(
        warden(&["ledger", "consistency", "17", "16", "--data", d])
            .status
            .code()
            != Some(0)
    );
    let out = warden(&["ledger", "show", "99", "--data", d]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("outside the log"),
        "{}",
        text(&out.stderr)
    );

    // An export verifies elsewhere with nothing but the export and the public key.
    let export = data.join("export.jsonl");
    let out = warden(&[
        "ledger",
        "export",
        "--data",
        d,
        "--out",
        export.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let elsewhere = tempfile::tempdir().unwrap();
    let key = elsewhere.path().join("ledger.pub");
    std::fs::copy(data.join("keys/ledger.pub"), &key).unwrap();
    let args = |f: &str| {
        vec![
            "ledger".to_string(),
            "verify".into(),
            "--data".into(),
            elsewhere.path().to_str().unwrap().into(),
            "--key".into(),
            key.to_str().unwrap().into(),
            "--export".into(),
            f.into(),
        ]
    };
    let run = |f: &str| {
        let a = args(f);
        warden(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run(export.to_str().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A key path that does not exist is named as missing, not as a malformed key.
    let out = warden(&[
        "ledger",
        "verify",
        "--data",
        elsewhere.path().to_str().unwrap(),
        "--key",
        "ledger.pub",
        "--export",
        export.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("ledger.pub") && text(&out.stderr).contains("no such file"),
        "{}",
        text(&out.stderr)
    );
    let tampered = elsewhere.path().join("tampered.jsonl");
    let body = std::fs::read_to_string(&export).unwrap();
    std::fs::write(&tampered, body.replacen("req-0003", "req-9999", 1)).unwrap();
    let out = run(tampered.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("entry 3:"),
        "{}",
        text(&out.stderr)
    );

    // Tampering with the stored ledger is found and named.
    let seg = data.join("ledger/00000000000000000000.seg");
    let bytes = std::fs::read(&seg).unwrap();
    let scan = warden_ledger::file::decode_segment(&bytes);
    let mut rebuilt = warden_ledger::file::SEGMENT_MAGIC.to_vec();
    for (i, p) in &scan.entries {
        let p = if *i == 9 {
            String::from_utf8(p.clone())
                .unwrap()
                .replace("coder-1", "coder-2")
                .into_bytes()
        } else {
            p.clone()
        };
        rebuilt.extend(warden_ledger::file::encode_frame(*i, &p));
    }
    std::fs::write(&seg, rebuilt).unwrap();
    let out = warden(&["ledger", "verify", "--data", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("entry 9"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn agents_enroll_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let d = data.to_str().unwrap();
    warden_runtime::starter::write(data).unwrap();
    let out = warden(&["agents", "enroll", "coder-1", "--data", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("coder-1.credential"));
    use std::os::unix::fs::PermissionsExt as _;
    for f in [
        "agents/coder-1.credential",
        "agents/coder-1.key",
        "keys/governor.key",
    ] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let token = std::fs::read_to_string(data.join("agents/coder-1.credential")).unwrap();
    let cred = warden_identity::Credential::from_token(&token).unwrap();
    assert_eq!(cred.body.owner, "alice@acme.example");
    assert_eq!(cred.body.trust, "junior");
    // Unknown agents are refused with a clear message.
    let out = warden(&["agents", "enroll", "nobody", "--data", d]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("`nobody` is not in the manifest"),
        "{}",
        text(&out.stderr)
    );
    // A narrower sub-agent credential, and a widening one refused.
    let out = warden(&[
        "agents",
        "derive",
        "coder-1",
        "--name",
        "helper",
        "--tools",
        "fs.read_file",
        "--trust",
        "intern",
        "--data",
        d,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sub = std::fs::read_to_string(data.join("agents/coder-1.helper.credential")).unwrap();
    let sub = warden_identity::Credential::from_token(&sub).unwrap();
    assert_eq!(sub.body.agent, "coder-1.helper");
    assert_eq!(sub.body.trust, "intern");
    assert_eq!(sub.parent.unwrap().body.agent, "coder-1");
    let out = warden(&[
        "agents",
        "derive",
        "coder-1",
        "--name",
        "boss",
        "--trust",
        "principal",
        "--data",
        d,
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("widens"),
        "{}",
        text(&out.stderr)
    );
    // A name that would lead out of DATA/agents (here onto the Governor key) is refused and
    // writes nothing.
    let governor = std::fs::read(data.join("keys/governor.key")).unwrap();
    for name in ["x/../../keys/governor", "/tmp/x", ""] {
        let out = warden(&["agents", "derive", "coder-1", "--name", name, "--data", d]);
        assert_ne!(out.status.code(), Some(0), "{name}");
        assert!(
            text(&out.stderr).contains("is not an agent name"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(data.join("keys/governor.key")).unwrap(),
        governor
    );
    assert!(!data.join("agents/coder-1.x").exists());
    let out = warden(&["agents", "revoke", "coder-1", "--data", d]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(data.join("revoked")).unwrap(),
        "agent coder-1\n"
    );
}

/// Entries after the latest signed checkpoint (what a crash leaves, or what someone who can
/// write the data directory appends) are reported apart, exit 3, never as verified; a ledger
/// with no checkpoint at all is checked as far as it can be, all of it unsigned.
#[test]
fn verify_reports_entries_after_the_last_checkpoint_as_an_unsigned_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    make_ledger(dir.path(), 4);
    let append = |n: usize| {
        let mut store =
            warden_ledger::FileStore::open(&dir.path().join("ledger"), warden_ledger::Mode::Write)
                .unwrap();
        let entry = br#"{"type":"event","kind":"x"}"#.to_vec();
        warden_ledger::LedgerStore::append(&mut store, &vec![entry; n]).unwrap();
    };
    append(2);
    let out = warden(&["ledger", "verify", "--data", d]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("UNSIGNED TAIL: 4 entries verified against the signed checkpoint at size 4")
            && said.contains("the 2 entries after it"),
        "{said}"
    );
    // A damaged entry in the tail is still a failure, not a tail.
    let seg = std::fs::read_dir(dir.path().join("ledger"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // In the first of the two (a damaged last frame reads as a write torn by a crash).
    let frame = warden_ledger::file::encode_frame(4, br#"{"type":"event","kind":"x"}"#).len();
    // Counted back from where the frames end (zeros preallocated for later frames follow).
    let at = warden_ledger::file::decode_segment(&bytes).valid_len - frame - 5;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let out = warden(&["ledger", "verify", "--data", d]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // No checkpoint at all (a gateway stopped before its first): checked, all unsigned.
    let fresh = tempfile::tempdir().unwrap();
    make_ledger(fresh.path(), 0);
    std::fs::remove_file(fresh.path().join("ledger/checkpoints.log")).unwrap();
    let mut store =
        warden_ledger::FileStore::open(&fresh.path().join("ledger"), warden_ledger::Mode::Write)
            .unwrap();
    warden_ledger::LedgerStore::append(&mut store, &[b"{}".to_vec()]).unwrap();
    drop(store);
    let out = warden(&["ledger", "verify", "--data", fresh.path().to_str().unwrap()]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("no signed checkpoint yet; the 1 entries"),
        "{said}"
    );
}

/// SIGTERM, what systemd, Docker and Kubernetes send, stops `warden serve` as Ctrl-C does:
/// exit 0, and the ledger's last checkpoint signed, even in the gateway's first second.
#[test]
fn sigterm_stops_serve_cleanly_with_its_ledger_signed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (mut child, _api, _admin) = serve(d, Stdio::piped());
    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("warden serve did not stop on SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    let out = warden(&["ledger", "verify", "--data", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );
}

/// `warden serve` on data directory `d` and free loopback ports, its stderr to `stderr`,
/// once both its API and admin listeners accept: (the process, API address, admin address).
fn serve(d: &str, stderr: Stdio) -> (std::process::Child, String, String) {
    serve_with(d, stderr, &[])
}

/// `warden serve` on data directory `d` with `extra` arguments, on free ports; returns once
/// both listeners answer.
fn serve_with(d: &str, stderr: Stdio, extra: &[&str]) -> (std::process::Child, String, String) {
    let (api, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "serve",
            "--data",
            d,
            "--listen",
            &api,
            "--admin-listen",
            &admin,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&api).is_err()
        || std::net::TcpStream::connect(&admin).is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, api, admin)
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A key prefix no other run uses (fleet tests share the machine's Redis).
fn fleet_prefix(what: &str) -> String {
    format!(
        "warden-test:{what}:{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Issue 22: two gateways given one Redis state store are one gateway for holds and budgets:
/// a kill switch set through one stops the agent on the other, a resume through the other lifts
/// it on both. And a Redis that does not answer stops the start (fail closed).
#[test]
fn two_gateways_on_one_redis_state_share_their_holds() {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping");
        return;
    };
    let prefix = fleet_prefix("fleet");
    let start = |d: &str| {
        let (child, api, admin) = serve_with(
            d,
            Stdio::null(),
            &["--state", &url, "--state-prefix", &prefix],
        );
        (Killed(child), api, admin)
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        a_dir.path().to_str().unwrap(),
        b_dir.path().to_str().unwrap(),
    );
    let (_a, a_api, a_admin) = start(a);
    // One fleet serves one manifest: B is given A's (the starter's approver keys are made per
    // data directory, so two starters differ).
    std::fs::copy(
        a_dir.path().join("manifest.yaml"),
        b_dir.path().join("manifest.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(b_dir.path().join("policies")).unwrap();
    for entry in std::fs::read_dir(a_dir.path().join("policies")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            b_dir.path().join("policies").join(entry.file_name()),
        )
        .unwrap();
    }
    let (_b, b_api, b_admin) = start(b);
    let call = |i: u32| {
        format!(
            r#"{{"agent":"coder-1","session":"s{i}","tool":"fs.read_file","arguments":{{"path":"/{i}"}}}}"#
        )
    };
    assert_eq!(post(&b_api, "/v1/decide", &call(1)).0, 200);
    let out = warden(&[
        "kill",
        "--agent",
        "coder-1",
        "--reason",
        "fleet drill",
        "--data",
        a,
        "--admin",
        &a_admin,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Set through A, in force on B.
    let (status, body) = post(&b_api, "/v1/decide", &call(2));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("fleet drill"), "{body}");
    // Lifted through B, lifted on A.
    let out = warden(&[
        "resume", "--agent", "coder-1", "--data", b, "--admin", &b_admin,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(post(&a_api, "/v1/decide", &call(3)).0, 200);

    // Nothing answers at this address: the gateway does not start, and says why.
    let c_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--data", c_dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--state", "redis://127.0.0.1:1/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("shared state store") && err.contains("redis"),
        "{err}"
    );
}

/// `GET path` on `addr`: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
}

/// Issue 22: the shared state store stops answering (its Redis killed mid-run): every decision
/// fails closed at once as "governance unavailable" (HTTP 503, rule `state.unavailable`) and
/// readiness says so; Redis back on its address with its data, decisions resume without
/// restarting Warden. Redis back *without* its data: the loss is never taken for a fresh
/// state; nothing is decided until the gateway is restarted.
#[test]
fn a_gateway_fails_closed_while_its_redis_is_down_and_resumes_alone() {
    let port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = OwnRedis::start_in(port, redis_dir.path());
    let url = format!("redis://127.0.0.1:{port}/");
    let dir = tempfile::tempdir().unwrap();
    let prefix = fleet_prefix("fault");
    let (child, api, _admin) = serve_with(
        dir.path().to_str().unwrap(),
        Stdio::null(),
        &["--state", &url, "--state-prefix", &prefix],
    );
    let gateway = Killed(child);
    let call = |i: u32| {
        format!(
            r#"{{"agent":"coder-1","session":"s{i}","tool":"fs.read_file","arguments":{{"path":"/{i}"}}}}"#
        )
    };
    assert_eq!(post(&api, "/v1/decide", &call(1)).0, 200);
    assert_eq!(get(&api, "/readyz"), (200, "ready\n".to_owned()));

    drop(redis);
    let started = std::time::Instant::now();
    let (status, body) = post(&api, "/v1/decide", &call(2));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state.unavailable"), "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "failed closed in {:?}",
        started.elapsed()
    );
    let (status, body) = get(&api, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state:"), "{body}");

    let redis = OwnRedis::start_in(port, redis_dir.path());
    let back = (0..50).find(|i| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        post(&api, "/v1/decide", &call(3 + i)).0 == 200
    });
    assert!(
        back.is_some(),
        "decisions did not resume once Redis was back"
    );
    assert_eq!(get(&api, "/readyz").0, 200);

    // Back without its data: budgets and holds would silently start again from nothing.
    drop(redis);
    let empty = tempfile::tempdir().unwrap();
    let _redis = OwnRedis::start_in(port, empty.path());
    // (The first call may meet a connection the restart closed: also a deny.)
    let mut said = String::new();
    for i in 0..3 {
        let (status, body) = post(&api, "/v1/decide", &call(100 + i));
        assert_eq!(status, 503, "{body}");
        said = body;
        if said.contains("lost or reset") {
            break;
        }
    }
    assert!(said.contains("lost or reset"), "{said}");
    let (status, body) = get(&api, "/readyz");
    assert_eq!(status, 503, "{body}");
    // An operator restarts the gateway, accepting the loss: it decides again.
    drop(gateway);
    let (child, api, _admin) = serve_with(
        dir.path().to_str().unwrap(),
        Stdio::null(),
        &["--state", &url, "--state-prefix", &prefix],
    );
    let _gateway = Killed(child);
    assert_eq!(post(&api, "/v1/decide", &call(110)).0, 200);
}

/// Issue 22: a revocation made for a fleet (`agents revoke --state`) reaches every instance:
/// an agent's credential accepted by gateway B is refused by B once revoked through the fleet's
/// Redis, though B's own `DATA/revoked` never heard of it.
#[test]
fn a_revocation_through_the_fleets_redis_reaches_every_instance() {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping");
        return;
    };
    let prefix = fleet_prefix("fleet-revoke");
    let start = |d: &str| {
        let (child, api, _) = serve_with(
            d,
            Stdio::null(),
            &["--state", &url, "--state-prefix", &prefix],
        );
        (Killed(child), api)
    };
    // Instance A makes the fleet's identity (keys, the starter agent's credential); B is given
    // a copy of its keys, as every instance of a fleet is (docs/state.md).
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a_dir.path(), b_dir.path());
    drop(start(a.to_str().unwrap()));
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            // Its own ledger and embedded state stay A's.
            if ["ledger", "state", "sandbox"].iter().any(|n| name == *n) {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(&name));
            } else {
                std::fs::copy(e.path(), to.join(&name)).unwrap();
            }
        }
    }
    copy_tree(a, b);
    let token = std::fs::read_to_string(a.join("agents/coder-1.credential")).unwrap();
    let (_b, b_api) = start(b.to_str().unwrap());
    let initialize = |api: &str| {
        use std::io::Read as _;
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        let mut s = std::net::TcpStream::connect(api).unwrap();
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let before = initialize(&b_api);
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    let out = warden(&[
        "agents",
        "revoke",
        "coder-1",
        "--data",
        a.to_str().unwrap(),
        "--state",
        &url,
        "--state-prefix",
        &prefix,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = initialize(&b_api);
    assert!(after.starts_with("HTTP/1.1 401"), "{after}");
    assert!(after.contains("revoked"), "{after}");
    assert!(!b.join("revoked").exists());
}

/// Issue 24: `--log-format json` writes one JSON object per line, with stable field names.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let data = dir.path().join("d");
    let (mut child, _, _) = serve_with(
        data.to_str().unwrap(),
        std::fs::File::create(&log).unwrap().into(),
        &["--log-format", "json"],
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("warden serving the HTTP API")),
        "{text}"
    );
}

#[test]
fn metrics_can_be_turned_off_and_metrics_on_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (mut on, _, admin) = serve(data.to_str().unwrap(), Stdio::null());
    let (status, body) = get(&admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("warden_decisions_total"), "{body}");
    let _ = on.kill();
    let _ = on.wait();
    let (mut off, _, admin) = serve_with(data.to_str().unwrap(), Stdio::null(), &["--no-metrics"]);
    let (status, body) = get(&admin, "/metrics");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("metrics are off"), "{body}");
    let _ = off.kill();
    let _ = off.wait();
}

#[test]
fn traces_asked_for_in_a_way_warden_cannot_export_stop_the_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    for (var, value) in [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["serve", "--data", data.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} started");
        let err = text(&out.stderr);
        assert!(err.contains(var) && err.contains(value), "{err}");
    }
}

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Sends one HTTP/1.1 request to `addr` and reads the answer: its status and its body.
fn exchange(addr: &str, request: &str) -> (u16, String) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// `warden kill` / `warden resume` against a real `warden serve`: the next call is stopped at
/// once, and resumed.
#[test]
fn kill_and_resume_through_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (child, api, admin) = serve(d, Stdio::null());
    let _server = Killed(child);
    let call = |i: u32| {
        format!(
            r#"{{"agent":"coder-1","session":"s{i}","tool":"fs.read_file","arguments":{{"path":"/{i}"}}}}"#
        )
    };
    assert_eq!(post(&api, "/v1/decide", &call(1)).0, 200);
    let out = warden(&[
        "kill", "--agent", "coder-1", "--reason", "drill", "--data", d, "--admin", &admin,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (status, body) = post(&api, "/v1/decide", &call(2));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("drill"), "{body}");
    let out = warden(&[
        "resume", "--agent", "coder-1", "--data", d, "--admin", &admin,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(post(&api, "/v1/decide", &call(3)).0, 200);
    // A wrong token is refused.
    std::fs::write(dir.path().join("keys/admin.token"), "0000\n").unwrap();
    let out = warden(&["kill", "--data", d, "--admin", &admin]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
}
