//! Progressive trust over time end to end (issue 7): a forbidden call demotes the agent at once;
//! `warden agents promote` restores it on the governance approval; a promotion above its
//! manifest level needs the criteria and becomes an approved manifest change.

use super::super::text;
use super::{call, enroll, env, first_text, ledger_tail, operator, start_existing, Server};

fn promote(s: &Server) -> (bool, String) {
    let out = operator(s, &["agents", "promote", "ops-1"]);
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn approve(s: &Server, answer: &str) {
    let at = answer.find("\"id\":\"apr_").expect(answer) + "\"id\":\"".len();
    approve_as(s, &answer[at..at + 28], "alice@acme.example");
}

fn approve_as(s: &Server, id: &str, who: &str) {
    let out = operator(s, &["approvals", "approve", id, "--approver", who]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_violation_demotes_and_promotion_is_earned_and_approved() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::approvals::setup(dir.path());
    let text_m = std::fs::read_to_string(&m).unwrap()
        + "governance: { approvers: 1 }\npromotion: { min_days: 0, min_calls: 2 }\n";
    std::fs::write(&m, text_m).unwrap();
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);
    let echo = |n: u32| {
        call(
            &e,
            &s,
            "ops-1",
            "demo.echo",
            &format!(r#"{{"text": "hi {n}"}}"#),
        )
    };
    assert_eq!(first_text(&echo(0)), "hi 0");

    // A call Cedar forbids: denied, and the agent is demoted at once.
    let r = call(
        &e,
        &s,
        "ops-1",
        "db.drop_table",
        r#"{"database": "audit", "table": "t"}"#,
    );
    assert!(first_text(&r).contains("policy:forbid-drop-audit"), "{r}");
    assert!(ledger_tail(&s.data, 10).contains("agent.demoted"));
    // Demoted, its calls need its owner (bob); once bob approves, the call runs.
    let mut session = super::approvals::Session::open(&e, &s, dir.path(), "ops-1");
    let meta = serde_json::json!({ "warden/wait": false });
    let args = serde_json::json!({ "text": "owner-approved" });
    let step = session.send_call("demo.echo", &args, &meta);
    let (answer, _) = session.answer(step);
    assert!(answer.contains("trust.demoted"), "{answer}");
    let at = answer.find("Approval id: ").unwrap() + "Approval id: ".len();
    approve_as(&s, &answer[at..at + 28], "bob@acme.example");
    let step = session.send_call("demo.echo", &args, &meta);
    assert_eq!(session.answer(step).0, "owner-approved");
    session.close();

    // Restored on the governance approval.
    let (ok, answer) = promote(&s);
    assert!(ok && answer.contains("\"pending\""), "{answer}");
    approve(&s, &answer);
    let (ok, answer) = promote(&s);
    assert!(ok && answer.contains("\"restored\""), "{answer}");
    assert_eq!(first_text(&echo(2)), "hi 2");

    // Above its manifest level (senior): the criteria first (2 allowed calls since the restore).
    let (ok, answer) = promote(&s);
    assert!(!ok && answer.contains("criteria not met"), "{answer}");
    assert_eq!(first_text(&echo(3)), "hi 3");
    let (ok, answer) = promote(&s);
    assert!(
        ok && answer.contains("\"proposed\"") && answer.contains("\"to\":\"principal\""),
        "{answer}"
    );
    approve(&s, &answer);
    // Install the proposed manifest and reload: the approved bundle goes in.
    let proposed = dir.path().join("manifest.promote-ops-1.yaml");
    let new = std::fs::read_to_string(&proposed).unwrap();
    assert!(
        new.contains("id: ops-1") && new.contains("trust: principal"),
        "{new}"
    );
    std::fs::copy(&proposed, &m).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ledger_tail(&s.data, 10).contains("governance.applied") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            ledger_tail(&s.data, 10)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ledger_tail(&s.data, 20).contains("agent.promoted"));
}
