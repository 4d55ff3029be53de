//! Approvals end to end (issue 7): the official MCP Python SDK calls a tool that needs its
//! owner's approval; approvers vote with `warden approvals approve|deny`, signed with their own
//! keys made by `warden approvers keygen`. Both ways an agent meets an approval are shown: the
//! call answers at once with the approval id and is retried with it, or the call waits (with
//! progress notifications) and runs when the approval arrives.

use super::super::{text, warden};
use super::{enroll, env, first_text, ledger_tail, operator, start_existing, Env, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The starter manifest (its `demo` upstream is this binary's demo server), with approvers
/// whose keys are made here and calls that wait up to 20 s for their approval.
pub(super) fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starter");
    let data = dir.join("data");
    let mut approvers = String::from("\napprovers:\n");
    for (id, roles) in [
        ("alice@acme.example", "[]"),
        ("bob@acme.example", "[planner]"),
    ] {
        let out = warden(&["approvers", "keygen", id, "--data", data.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let entry = text(&out.stdout).replace("roles: []", &format!("roles: {roles}"));
        approvers.push_str(&entry);
    }
    let starter = std::fs::read_to_string(repo.join("manifest.yaml")).unwrap();
    assert!(starter.contains("wait_seconds: 0 "));
    let manifest = starter.replace("wait_seconds: 0 ", "wait_seconds: 20") + &approvers;
    let m = dir.join("manifest.yaml");
    std::fs::write(&m, manifest).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(
        repo.join("policies/base.cedar"),
        dir.join("policies/base.cedar"),
    )
    .unwrap();
    enroll(&data, &m, "coder-1");
    (data, m)
}

/// A client holding one MCP session through several calls, paced by the test.
pub(super) struct Session {
    dir: PathBuf,
    next: usize,
    client: Option<std::thread::JoinHandle<std::process::Output>>,
}

impl Session {
    /// One MCP session of `agent`, its steps exchanged through files in `dir/steps-AGENT`.
    pub(super) fn open(e: &Env, s: &Server, dir: &Path, agent: &str) -> Session {
        let cred = s.data.join(format!("agents/{agent}.credential"));
        Session::open_at(e, &s.url, &cred, &dir.join(format!("steps-{agent}")))
    }

    /// One MCP session on the gateway at `url` with the credential file `cred`, its steps
    /// exchanged through files in `dir`.
    pub(super) fn open_at(e: &Env, url: &str, cred: &Path, dir: &Path) -> Session {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let (sdk, url, d, cred) = (e.sdk(), url.to_owned(), dir.clone(), cred.to_path_buf());
        let client = std::thread::spawn(move || {
            let mut sdk = sdk;
            sdk.arg(url).arg(cred).arg("steps").arg(d).output().unwrap()
        });
        Session {
            dir,
            next: 0,
            client: Some(client),
        }
    }

    /// Sends `demo.add` with `a`, `b` and `meta`; returns the step's number.
    pub(super) fn send(&mut self, a: i64, b: i64, meta: &Value) -> usize {
        self.send_call("demo.add", &json!({ "a": a, "b": b }), meta)
    }

    /// Sends `tool` with `arguments` and `meta`; returns the step's number.
    pub(super) fn send_call(&mut self, tool: &str, arguments: &Value, meta: &Value) -> usize {
        let i = self.next;
        self.next += 1;
        let step = json!([tool, arguments, meta]);
        std::fs::write(self.dir.join(format!("step-{i}.tmp")), step.to_string()).unwrap();
        std::fs::rename(
            self.dir.join(format!("step-{i}.tmp")),
            self.dir.join(format!("step-{i}.json")),
        )
        .unwrap();
        i
    }

    /// Step `i`'s answer (waits for it): the result's text, and the whole answer.
    pub(super) fn answer(&mut self, i: usize) -> (String, Value) {
        let path = self.dir.join(format!("result-{i}.json"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !path.exists() {
            if self.client.as_ref().is_some_and(|c| c.is_finished()) {
                let out = self.client.take().unwrap().join().unwrap();
                panic!("the client stopped before step {i}: {}", text(&out.stderr));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer to step {i}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        (first_text(&v["result"]), v)
    }

    pub(super) fn call(&mut self, a: i64, b: i64, meta: &Value) -> String {
        let i = self.send(a, b, meta);
        self.answer(i).0
    }

    pub(super) fn close(mut self) {
        std::fs::write(self.dir.join(format!("step-{}.json", self.next)), "null").unwrap();
        let out = self.client.take().unwrap().join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// `warden approvals approve|deny ID --approver WHO`: (exit success, stdout + stderr).
fn vote(s: &Server, verb: &str, id: &str, who: &str) -> (bool, String) {
    let out = operator(s, &["approvals", verb, id, "--approver", who]);
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn approval_id(answer: &str) -> String {
    let at = answer.find("Approval id: apr_").expect(answer) + "Approval id: ".len();
    answer[at..at + 28].to_owned()
}

fn pending(s: &Server) -> Vec<Value> {
    let out = operator(s, &["approvals", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "pending")
        .cloned()
        .collect()
}

#[test]
fn an_owner_approves_one_exact_call_once_over_mcp() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path());
    let s = start_existing(dir.path(), &data, &m);
    let at_once = json!({ "warden/wait": false });
    let with = |id: &str| json!({ "warden/approval": id, "warden/wait": false });
    let mut session = Session::open(&e, &s, dir.path(), "coder-1");

    // coder-1 is junior: medium-tier `demo.add` needs its owner's approval. Answer at once.
    let answer = session.call(2, 3, &at_once);
    assert!(answer.contains("needs approval"), "{answer}");
    assert!(answer.contains("alice@acme.example"), "{answer}");
    let id = approval_id(&answer);
    // Named while still pending: the same request (merged), and the call does not run.
    let answer = session.call(2, 3, &with(&id));
    assert_eq!(approval_id(&answer), id, "{answer}");
    assert!(answer.contains("It was not run"), "{answer}");
    // Asking again while it waits is what the answer says to do: not a loop, however often
    // (the starter pauses a session at the third identical call).
    for _ in 0..3 {
        let answer = session.call(2, 3, &at_once);
        assert_eq!(approval_id(&answer), id, "{answer}");
        assert!(!answer.contains("paused"), "{answer}");
    }

    // Only the owner may approve it: bob is refused, and that is recorded.
    let (ok, out) = vote(&s, "approve", &id, "bob@acme.example");
    assert!(!ok && out.contains("approval.not_owner"), "{out}");
    let (ok, out) = vote(&s, "approve", &id, "alice@acme.example");
    assert!(ok && out.contains("\"approved\""), "{out}");
    // Voting again is a second vote by the same approver: it does not count.
    let (ok, out) = vote(&s, "approve", &id, "alice@acme.example");
    assert!(!ok && out.contains("not pending"), "{out}");

    // Other arguments with that approval id: refused as another call.
    let answer = session.call(2, 4, &with(&id));
    assert!(answer.contains("approval.other_call"), "{answer}");
    // The approved call runs, once, from whichever session of the agent asks: here a client
    // that reconnected (a new MCP session, from the `initialize` handshake).
    let reconnected = Env {
        mode: "legacy",
        ..e.clone()
    };
    let r = super::call(&reconnected, &s, "coder-1", "demo.add", r#"{"a":2,"b":3}"#);
    assert_eq!(first_text(&r), "5", "{r}");
    let answer = session.call(2, 3, &with(&id));
    assert!(answer.contains("approval.used"), "{answer}");

    // A denied request authorizes nothing.
    let denied = approval_id(&session.call(1, 1, &at_once));
    let (ok, out) = vote(&s, "deny", &denied, "alice@acme.example");
    assert!(ok && out.contains("\"denied\""), "{out}");
    let answer = session.call(1, 1, &with(&denied));
    assert!(answer.contains("approval.denied"), "{answer}");

    // Waiting: the call blocks, reports progress, and runs when alice approves.
    let step = session.send(7, 8, &json!({}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let waiting = loop {
        if let Some(r) = pending(&s).first() {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no pending request");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (ok, out) = vote(&s, "approve", &waiting, "alice@acme.example");
    assert!(ok, "{out}");
    let (answer, whole) = session.answer(step);
    assert_eq!(answer, "15", "{whole}");
    let progress = whole["progress"].to_string();
    assert!(progress.contains("waiting for approval apr_"), "{progress}");

    // A wait the call shortens (`warden/wait` in seconds) that ends with nobody deciding: the
    // call answers with the escalation and its approval id, and did not run.
    let started = std::time::Instant::now();
    let answer = session.call(9, 9, &json!({ "warden/wait": 1 }));
    let waited = started.elapsed();
    assert!(answer.contains("needs approval"), "{answer}");
    approval_id(&answer);
    assert!(
        waited >= std::time::Duration::from_secs(1) && waited < std::time::Duration::from_secs(10),
        "waited {waited:?} (asked for 1 s; the manifest allows 20)"
    );
    session.close();

    // A real loop pauses the session (the third identical call); `warden resume --agent A
    // --session S`, with the session the answer names, lifts that pause.
    let echo = |text: &str| {
        first_text(&super::call(
            &e,
            &s,
            "coder-1",
            "demo.echo",
            &json!({ "text": text }).to_string(),
        ))
    };
    assert_eq!(echo("again"), "again");
    assert_eq!(echo("again"), "again");
    let paused = echo("again");
    let at = paused.find("in session `").expect(&paused) + "in session `".len();
    let sid = paused[at..].split('`').next().unwrap().to_owned();
    assert!(paused.contains("session paused"), "{paused}");
    assert!(echo("something else").contains("paused"));
    let out = operator(&s, &["resume", "--agent", "coder-1", "--session", &sid]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#""changed":1"#),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(echo("something else"), "something else");

    // The ledger holds every step: requests, refusals, votes, the redeeming decisions.
    let tail = ledger_tail(&s.data, 60);
    for needle in [
        "approval.requested",
        "approval.refused",
        "approval.approved",
        "approval.denied",
        "approval.redeemed",
        "approval.used",
        "approval.other_call",
        "approver.keys",
        "alice@acme.example=",
    ] {
        assert!(
            tail.contains(needle),
            "{needle} missing from the ledger:\n{tail}"
        );
    }

    // The incident bundle: coder-1's decisions, receipts and approval events with their
    // proofs, verified offline with the ledger's public key; an altered one is refused.
    let bundle = dir.path().join("incident.json");
    let d = s.data.to_str().unwrap();
    let out = warden(&[
        "incident",
        "export",
        "--agent",
        "coder-1",
        "--since",
        "1h",
        "--data",
        d,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verify = |file: &Path| {
        let out = warden(&[
            "incident",
            "verify",
            file.to_str().unwrap(),
            "--key",
            d_key(&s.data).to_str().unwrap(),
        ]);
        (
            out.status.code(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    };
    let (code, said) = verify(&bundle);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("receipts") && said.contains("of agent `coder-1`"),
        "{said}"
    );
    let whole: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let events = whole["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["entry"].as_str().unwrap().contains("approval.approved"))
        .count();
    assert!(events >= 1, "{whole}");
    let altered = dir.path().join("altered.json");
    std::fs::write(
        &altered,
        std::fs::read_to_string(&bundle).unwrap().replacen(
            "approval.approved",
            "approval.approvex",
            1,
        ),
    )
    .unwrap();
    let (code, said) = verify(&altered);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("is not in the log as shown"), "{said}");
}

/// The ledger's public key of a data directory.
fn d_key(data: &Path) -> PathBuf {
    data.join("keys/ledger.pub")
}
