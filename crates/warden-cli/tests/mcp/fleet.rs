//! Two `warden serve` instances of one fleet (state, holds and the brake bus in the machine's
//! Redis, the keys copied from one data directory to the other as docs/state.md says), each
//! with its own ledger, over one upstream (issue 22): a kill switch pulled through instance A's
//! admin listener stops the calls already in flight on instance B, not only B's next calls; a
//! message on the fleet's channel with no hold behind it stops nothing. Three instances share
//! their approvals: asked through one, voted through another, run once through a third. Three
//! instances behind HAProxy (Debian's package) without stickiness carry one MCP session of the
//! official SDK, across the `kill -9` of one of them.

use super::super::text;
use super::{env, ledger_tail, start_with};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Copies `from`'s keys (the approvers' among them) and issued credentials into the data
/// directory `to` (one identity for the fleet).
pub(super) fn share_identity(from: &Path, to: &Path) {
    fn copy_tree(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_file() {
                std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
            } else if kind.is_dir() {
                copy_tree(&entry.path(), &dst.join(entry.file_name()));
            }
        }
    }
    for dir in ["keys", "agents"] {
        copy_tree(&from.join(dir), &to.join(dir));
    }
}

/// A key prefix of this test run's own in the machine's Redis.
pub(super) fn fleet_prefix(what: &str) -> String {
    format!(
        "warden-test:{what}:{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The directories of a fleet of instances on the machine's Redis: the approvals setup in the
/// first (its manifest changed by the test's `prepare` before anything is copied), the others
/// given its identity, and a key prefix of the test's own.
pub(super) struct FleetDirs {
    pub(super) e: super::Env,
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) dirs: Vec<tempfile::TempDir>,
    pub(super) first: PathBuf,
    pub(super) m: PathBuf,
    pub(super) datas: Vec<PathBuf>,
}

impl FleetDirs {
    /// `n` instances' directories (`None`, with a notice, without the end-to-end environment or
    /// a Redis); `prepare` gets the first data directory and the manifest.
    pub(super) fn new(n: usize, what: &str, prepare: impl FnOnce(&Path, &Path)) -> Option<Self> {
        let e = env()?;
        let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
            eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the fleet test");
            return None;
        };
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let (first, m) = super::approvals::setup(dirs[0].path());
        prepare(&first, &m);
        let mut datas = vec![first.clone()];
        for d in &dirs[1..] {
            let data = d.path().join("data");
            share_identity(&first, &data);
            datas.push(data);
        }
        Some(FleetDirs {
            e,
            url,
            prefix: fleet_prefix(what),
            dirs,
            first,
            m,
            datas,
        })
    }

    /// The fleet's environment: its Redis and key prefix.
    pub(super) fn vars(&self) -> [(&'static str, &str); 2] {
        [
            ("WARDEN_STATE", self.url.as_str()),
            ("WARDEN_STATE_PREFIX", self.prefix.as_str()),
        ]
    }

    /// Every instance, started on its directory and the manifest.
    pub(super) fn start(&self) -> Vec<super::Server> {
        self.dirs
            .iter()
            .zip(&self.datas)
            .map(|(d, data)| start_with(d.path(), data, &self.m, &self.vars()))
            .collect()
    }
}

/// `coder-1`'s bearer credential in the data directory `data`.
pub(super) fn bearer_of(data: &Path) -> String {
    std::fs::read_to_string(data.join("agents/coder-1.credential"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The approval id an answer names.
fn approval_id(answer: &str) -> String {
    let at = answer.find("Approval id: apr_").expect(answer) + "Approval id: ".len();
    answer[at..at + 28].to_owned()
}

#[test]
fn an_approval_asked_through_one_instance_voted_through_another_runs_once_through_a_third() {
    use super::approvals::Session;
    use serde_json::json;
    let Some(f) = FleetDirs::new(3, "fleet-approvals", |_, _| {}) else {
        return;
    };
    let (e, dirs, datas) = (&f.e, &f.dirs, &f.datas);
    let s = f.start();
    let vote = |on: &super::Server, id: &str| {
        let out = super::operator(
            on,
            &[
                "approvals",
                "approve",
                id,
                "--approver",
                "alice@acme.example",
            ],
        );
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{said}");
        said
    };
    let at_once = json!({ "warden/wait": false });
    let with = |id: &str| json!({ "warden/approval": id, "warden/wait": false });

    // coder-1's `demo.add` needs its owner's approval: asked through instance 1...
    let mut one = Session::open(e, &s[0], dirs[0].path(), "coder-1");
    let answer = one.call(2, 3, &at_once);
    assert!(answer.contains("needs approval"), "{answer}");
    let id = approval_id(&answer);
    // ...listed by every instance, voted through instance 2...
    for on in &s {
        let out = super::operator(on, &["approvals", "list"]);
        assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));
    }
    assert!(vote(&s[1], &id).contains("\"approved\""));
    // ...runs once through instance 3, from a session of its own...
    let mut three = Session::open(e, &s[2], dirs[2].path(), "coder-1");
    let answer = three.call(2, 3, &with(&id));
    assert_eq!(answer, "5");
    // ...and never again, through any instance.
    // (Another call between, each time: the same call three times in a row in one agent's
    // history would pause it as a loop before its approval is even looked at.)
    let mut others = Vec::new();
    for session in [&mut one, &mut three] {
        others.push(approval_id(&session.call(1, 1, &at_once)));
        let answer = session.call(2, 3, &with(&id));
        assert!(answer.contains("approval.used"), "{answer}");
    }
    // The vote is in instance 2's ledger, the redemption in instance 3's.
    assert!(ledger_tail(&datas[1], 20).contains("approval.approved"));
    assert!(ledger_tail(&datas[2], 20).contains("approval.redeemed"));

    // A call that waits on instance 1 runs there when the approval is given through
    // instance 3.
    let step = one.send(7, 8, &json!({}));
    let deadline = Instant::now() + Duration::from_secs(15);
    let waiting = loop {
        let out = super::operator(&s[1], &["approvals", "list"]);
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(r) = all["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "pending" && !others.iter().any(|o| r["id"] == **o))
        {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending request");
        std::thread::sleep(Duration::from_millis(100));
    };
    vote(&s[2], &waiting);
    let (answer, whole) = one.answer(step);
    assert_eq!(answer, "15", "{whole}");
    one.close();
    three.close();
}

#[test]
fn a_kill_through_one_instance_stops_the_calls_in_flight_on_another() {
    let Some(e) = env() else { return };
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the fleet test");
        return;
    };
    let prefix = fleet_prefix("fleet-brakes");
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

/// HAProxy (`haproxy -db`, in the foreground) in front of `backends`, balancing round robin
/// without stickiness, checking each instance's `/readyz` every 200 ms, and retrying a request
/// on another instance only when its connection could not be made (a request that reached an
/// instance is never sent twice). Stopped on drop.
pub(super) struct Balancer {
    child: std::process::Child,
    pub(super) url: String,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn balance(dir: &Path, backends: &[&str]) -> Option<Balancer> {
    let Ok(haproxy) = which("haproxy") else {
        assert!(
            std::env::var_os("WARDEN_TEST_HAPROXY_REQUIRED").is_none(),
            "haproxy is required here (WARDEN_TEST_HAPROXY_REQUIRED) but not installed"
        );
        eprintln!("notice: haproxy is not installed; skipping the load-balancer test");
        return None;
    };
    let port = super::super::free_port();
    let config = documented_haproxy_config(port, backends);
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, &config).unwrap();
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    let child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let b = Balancer {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    // Listening, and every instance ready behind it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(600));
    Some(b)
}

/// The HAProxy configuration docs/fleet.md shows, on `port` and in front of `backends` (the
/// documented one is what runs here).
fn documented_haproxy_config(port: u16, backends: &[&str]) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/fleet.md"))
            .unwrap();
    let section = &doc[doc.find("## Behind a load balancer").unwrap()..];
    let start = section.find("```\n").unwrap() + 4;
    let block = &section[start..];
    let block = &block[..block.find("```").unwrap()];
    let documented = ["127.0.0.1:8710", "127.0.0.1:8720", "127.0.0.1:8730"];
    assert_eq!(backends.len(), documented.len());
    let mut config = format!("global\n  maxconn 512\n{block}")
        .replace("127.0.0.1:8700", &format!("127.0.0.1:{port}"));
    for (doc_addr, addr) in documented.iter().zip(backends) {
        assert!(config.contains(doc_addr), "{config}");
        config = config.replace(doc_addr, addr);
    }
    config
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The sessions of `demo.echo`'s decisions in a data directory's ledger, in order.
fn echo_sessions(data: &Path) -> Vec<String> {
    ledger_tail(data, 200)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["entry"].clone())
        .filter(|v| v["type"] == "decision" && v["tool"] == "demo.echo")
        .map(|v| v["session"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn one_mcp_session_runs_across_a_fleet_behind_haproxy_and_outlives_an_instance() {
    use super::approvals::Session;
    use serde_json::json;
    let Some(f) = FleetDirs::new(3, "fleet-sessions", |_, _| {}) else {
        return;
    };
    let (e, dirs, datas, first) = (&f.e, &f.dirs, &f.datas, &f.first);
    let mut s: Vec<_> = f.start().into_iter().map(Some).collect();
    let addrs: Vec<String> = s.iter().flatten().map(|x| x.addr.clone()).collect();
    let Some(lb) = balance(
        dirs[0].path(),
        &addrs.iter().map(String::as_str).collect::<Vec<_>>(),
    ) else {
        return;
    };
    // The SDK in its legacy mode keeps an MCP session (Mcp-Session-Id); no stickiness.
    let legacy = super::Env {
        mode: "legacy",
        ..e.clone()
    };
    let mut session = Session::open_at(
        &legacy,
        &lb.url,
        &first.join("agents/coder-1.credential"),
        &dirs[0].path().join("steps"),
    );
    let echo = |session: &mut Session, i: usize| {
        let text = format!("hello {i}");
        let step = session.send_call("demo.echo", &json!({ "text": text }), &json!({}));
        let (answer, whole) = session.answer(step);
        assert!(answer.contains(&text), "call {i}: {whole}");
    };
    for i in 0..6 {
        echo(&mut session, i);
    }
    // Spread over the instances, in one session (the id Warden issued, not a per-credential
    // one).
    let seen: Vec<Vec<String>> = datas.iter().map(|d| echo_sessions(d)).collect();
    let id = seen.iter().flatten().next().unwrap().clone();
    assert!(!id.starts_with("mcp:"), "{id}");
    assert!(seen.iter().flatten().all(|s| *s == id), "{seen:?}");
    assert!(
        seen.iter().filter(|v| !v.is_empty()).count() >= 2,
        "the calls were not spread: {seen:?}"
    );
    assert_eq!(seen.iter().map(Vec::len).sum::<usize>(), 6);

    // kill -9 one instance between calls: the session goes on through the others.
    let killed = s[0].take().unwrap();
    drop(killed);
    for i in 6..12 {
        echo(&mut session, i);
    }
    session.close();
    let after: Vec<Vec<String>> = datas.iter().map(|d| echo_sessions(d)).collect();
    assert_eq!(
        after[0].len(),
        seen[0].len(),
        "the killed instance decided nothing more"
    );
    assert!(after.iter().flatten().all(|s| *s == id), "{after:?}");
    assert_eq!(after.iter().map(Vec::len).sum::<usize>(), 12);
    // Nothing the killed instance acknowledged is missing from its ledger, which verifies: its
    // entries are intact, those after its last checkpoint unsigned until it restarts (exit 3).
    let out = super::super::warden(&["ledger", "verify", "--data", first.to_str().unwrap()]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() || (out.status.code() == Some(3) && said.contains("intact")),
        "{said}"
    );
    drop(lb);
}

#[test]
fn a_retry_or_reply_that_reaches_another_instance_goes_to_the_call_waiting_on_the_first() {
    let Some(e) = env() else { return };
    let tools = [
        "asker.trigger-sampling-request",
        "asker.trigger-elicitation-request",
        "asker.get-roots-list",
    ];
    let Some(f) = FleetDirs::new(3, "fleet-rounds", |_, m| {
        super::client_requests::add_asker(&e, m, "sampling, elicitation, roots", &tools);
    }) else {
        return;
    };
    let s = f.start();
    let addrs: Vec<&str> = s.iter().map(|x| x.addr.as_str()).collect();
    let Some(lb) = balance(f.dirs[0].path(), &addrs) else {
        return;
    };
    // The SDK's default mode (2026-07-28): no session a balancer could stick to; each call
    // waits on the instance that runs it while the client answers, and the retry carrying
    // the answer goes to whichever instance the balancer picks (round robin: another one).
    let credential = f.first.join("agents/coder-1.credential");
    super::client_requests::asks_reach_the_client(&e, "auto", &lb.url, &credential, false);
    // The legacy mode: requests on the call's stream, replies POSTed in the session, each to
    // whichever instance the balancer picks.
    super::client_requests::asks_reach_the_client(&e, "legacy", &lb.url, &credential, false);
    let logs: String = f
        .dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.path().join("serve.log")).unwrap_or_default())
        .collect();
    for what in ["retry", "reply"] {
        let passed = format!("passed a {what} to the instance its call waits on");
        assert!(
            logs.contains(&passed),
            "no {what} reached another instance than its call's"
        );
    }
    drop(lb);
}

/// A stream read on a thread of its own: everything it carried so far.
fn read_in_background(mut stream: std::net::TcpStream) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read as _;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// How many resource updates `seen` holds, once it holds at least `n` (waiting up to `secs`).
fn updates(seen: &std::sync::Mutex<String>, n: usize, secs: u64) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let count = seen
            .lock()
            .unwrap()
            .matches("notifications/resources/updated")
            .count();
        if count >= n || std::time::Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With no stickiness, a legacy client's session may have its stream (`GET /mcp`) on one
/// instance and its subscription on another (the instance its `resources/subscribe` reached,
/// whose upstream sends the updates): the updates reach the stream across the fleet's notice
/// bus, and an unsubscribe through the stream's instance ends the subscription the other
/// holds.
#[test]
fn a_sessions_updates_reach_its_stream_on_another_instance_until_it_unsubscribes_anywhere() {
    use std::io::Write as _;
    let Some(e) = env() else { return };
    const DOC: &str = "demo://resource/static/document/features.md";
    let Some(f) = FleetDirs::new(2, "fleet-notices", |_, m| {
        super::client_requests::add_asker(&e, m, "sampling", &["asker.toggle-subscriber-updates"]);
        super::add_to_manifest(
            m,
            "",
            "",
            "resources:\n  - { name: asker.docs, uris: [\"demo://resource/static/document/*\"], tier: low, zones: [\"*\"] }\n",
        );
    }) else {
        return;
    };
    let s = f.start();
    let auth = format!("authorization: Bearer {}\r\n", bearer_of(&f.first));
    let session = super::raw_session(&s[0].addr, &auth);
    let in_session =
        format!("{auth}mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n");
    // The session's stream, on the first instance.
    let mut get = std::net::TcpStream::connect(&s[0].addr).unwrap();
    write!(
        get,
        "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n{in_session}accept: text/event-stream\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let seen = read_in_background(get);
    // Subscribed, and the upstream's updates turned on, through the second.
    let post = |at: &super::Server, body: &str| {
        let (status, answer) = super::raw_method(&at.addr, "POST", &in_session, body);
        assert_eq!(status, 200, "{answer}");
        assert!(!answer.contains("\"error\""), "{answer}");
    };
    post(
        &s[1],
        &format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{{"uri":"{DOC}"}}}}"#
        ),
    );
    post(
        &s[1],
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"asker.toggle-subscriber-updates","arguments":{}}}"#,
    );
    // server-everything sends an update every 5 s.
    assert!(
        updates(&seen, 1, 20) >= 1,
        "no update reached the stream on the other instance: {}",
        seen.lock().unwrap()
    );
    assert!(seen.lock().unwrap().contains(DOC));
    // Unsubscribed through the first instance: the second ends the subscription it holds, and
    // no update comes after (one was due every 5 s).
    post(
        &s[0],
        &format!(
            r#"{{"jsonrpc":"2.0","id":4,"method":"resources/unsubscribe","params":{{"uri":"{DOC}"}}}}"#
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = updates(&seen, 0, 0);
    let after = updates(&seen, before + 1, 7);
    assert_eq!(after, before, "updates went on after the unsubscribe");
    // A 2026-07-28 retry whose requestState names an instance the fleet does not know (it
    // stopped, or never was) is told so, and nothing is passed anywhere.
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}}"#;
    let (status, answer) = super::raw(
        &s[0].addr,
        &format!("{auth}mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: asker.toggle-subscriber-updates\r\n"),
        &format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"asker.toggle-subscriber-updates","arguments":{{}},"requestState":"wrs_ghost_1","inputResponses":{{}},{meta}}}}}"#
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("waits on Warden instance ghost, which has stopped"),
        "{answer}"
    );
}

/// `kill -HUP` (a reload) to a gateway.
fn hup(s: &super::Server) {
    let status = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `POST /v1/decide` (a dry run) of `coder-1` calling `demo.echo` to a gateway: the status code
/// and the answer.
fn post_decide(s: &super::Server) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let body = r#"{"agent":"coder-1","session":"s","tool":"demo.echo","arguments":{"text":"x"}}"#;
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST /v1/decide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (code, out)
}

/// `GET /readyz` of a gateway: the status code and the body.
fn readyz(s: &super::Server) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    use std::io::{Read as _, Write as _};
    c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (code, out)
}

#[test]
fn every_instance_serves_the_fleets_manifest_or_decides_nothing() {
    let Some(f) = FleetDirs::new(3, "fleet-manifest", |_, _| {}) else {
        return;
    };
    let (e, dirs, datas, m_a) = (&f.e, &f.dirs, &f.datas, &f.m);
    let (url, prefix) = (&f.url, &f.prefix);
    // Each instance reads its own copy of the manifest and policies.
    let mut manifests = vec![m_a.clone()];
    for d in &dirs[1..] {
        std::fs::create_dir_all(d.path().join("policies")).unwrap();
        std::fs::copy(
            dirs[0].path().join("policies/base.cedar"),
            d.path().join("policies/base.cedar"),
        )
        .unwrap();
        let m = d.path().join("manifest.yaml");
        std::fs::copy(m_a, &m).unwrap();
        manifests.push(m);
    }
    let fleet = f.vars();
    let a = start_with(dirs[0].path(), &datas[0], &manifests[0], &fleet);
    let b = start_with(dirs[1].path(), &datas[1], &manifests[1], &fleet);
    let echo = |s: &super::Server, text: &str| {
        let r = super::call(
            e,
            s,
            "coder-1",
            "demo.echo",
            &format!(r#"{{"text":"{text}"}}"#),
        );
        super::first_text(&r)
    };
    assert_eq!(echo(&a, "one"), "one");
    assert_eq!(echo(&b, "two"), "two");

    // Version 2 through A (its file, then SIGHUP): the fleet serves it.
    let bump = |m: &Path| {
        let text = std::fs::read_to_string(m).unwrap();
        assert!(text.contains("\nversion: 1\n"), "{text}");
        std::fs::write(m, text.replacen("\nversion: 1\n", "\nversion: 2\n", 1)).unwrap();
    };
    bump(&manifests[0]);
    hup(&a);
    // B's files still give version 1: within a few seconds it is behind, decides nothing and
    // says so on /readyz.
    let deadline = Instant::now() + Duration::from_secs(15);
    let said = loop {
        let (code, body) = readyz(&b);
        if code == 503 && body.contains("manifest") {
            break body;
        }
        assert!(Instant::now() < deadline, "B never fell behind: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(said.contains("behind the fleet"), "{said}");
    let refused = echo(&b, "three");
    assert!(refused.contains("unavailable"), "{refused}");
    // Not even a dry run is decided there.
    let (code, said) = post_decide(&b);
    assert_eq!(code, 503, "{said}");
    assert!(said.contains("behind the fleet"), "{said}");
    assert_eq!(echo(&a, "four"), "four");
    // A third instance whose files give version 1 does not start.
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--data"])
        .arg(dirs[2].path().join("data"))
        .arg("--manifest")
        .arg(&manifests[2])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("WARDEN_STATE", url)
        .env("WARDEN_STATE_PREFIX", prefix)
        .output()
        .unwrap();
    let why = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{why}");
    assert!(why.contains("the fleet serves manifest version 2"), "{why}");
    // B's files updated: it catches up by itself (no signal) and decides again.
    bump(&manifests[1]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while readyz(&b).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "B never caught up: {}",
            readyz(&b).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(echo(&b, "five"), "five");
}

#[test]
fn failures_in_a_row_through_two_instances_trip_one_breaker() {
    // ops-1 (senior) runs medium-tier `demo.add` itself (the window lifted, as in breakers.rs).
    let lift = |first: &Path, m: &Path| {
        let text_m = std::fs::read_to_string(m).unwrap();
        let lifted = text_m.replace(
            r#"{ mode: window, window: "08:00-22:00", utc_offset: "+00:00" }"#,
            "{ mode: auto }",
        );
        assert_ne!(lifted, text_m);
        std::fs::write(m, lifted).unwrap();
        super::enroll(first, m, "ops-1");
    };
    let Some(f) = FleetDirs::new(2, "fleet-breakers", lift) else {
        return;
    };
    let e = &f.e;
    let s = f.start();
    let add = |on: &super::Server, b: i64| {
        super::call(
            e,
            on,
            "ops-1",
            "demo.add",
            &format!(r#"{{"a": 9223372036854775807, "b": {b}}}"#),
        )
    };
    // Two failures through A and B, a success through B: the count starts again.
    assert_eq!(add(&s[0], 1)["isError"], true);
    assert_eq!(add(&s[1], 2)["isError"], true);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        super::first_text(&super::call(
            e,
            &s[1],
            "ops-1",
            "demo.add",
            r#"{"a": 1, "b": 1}"#
        )),
        "2"
    );
    // Three in a row, alternating instances: one breaker trips, and the agent is paused on both.
    for (i, b) in [3, 4, 5].into_iter().enumerate() {
        let r = add(&s[i % 2], b);
        assert_eq!(r["isError"], true, "{r}");
        assert!(super::first_text(&r).contains("overflows"), "{r}");
    }
    for on in &s {
        let answer = super::first_text(&super::call(
            e,
            on,
            "ops-1",
            "demo.echo",
            r#"{"text": "hi"}"#,
        ));
        assert!(answer.contains("agent.paused"), "{answer}");
        assert!(answer.contains("3 consecutive failures"), "{answer}");
    }
}

/// One governed `tools/call` of `demo.echo` with `text`, POSTed to `url` as a client without an
/// MCP session sends it: `Ok` if the answer is the echo (the call ran and was acknowledged),
/// else the answer (or why there was none).
pub(super) fn echo_over_http(url: &str, bearer: &str, text: &str) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"demo.echo","arguments":{{"text":"{text}"}}}}}}"#
    );
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    c.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    let ran = answer.starts_with("HTTP/1.1 200")
        && answer.contains(&format!("\"text\":\"{text}\""))
        && !answer.contains("\"isError\":true");
    if ran {
        Ok(())
    } else {
        Err(answer.chars().take(600).collect())
    }
}

#[test]
fn a_budget_of_n_calls_allows_exactly_n_across_three_instances_under_load() {
    // Each agent may make 25 calls an hour, whichever instance decides them.
    let limit = |_: &Path, m: &Path| {
        let manifest = std::fs::read_to_string(m).unwrap();
        let limited = manifest.replace(
            "agent:  { calls: 1000/h, cost: 500/d }",
            "agent:  { calls: 25/h, cost: 500/d }",
        );
        assert_ne!(limited, manifest);
        std::fs::write(m, limited).unwrap();
    };
    let Some(f) = FleetDirs::new(3, "fleet-budget", limit) else {
        return;
    };
    let (dirs, datas, first) = (&f.dirs, &f.datas, &f.first);
    let s = f.start();
    let addrs: Vec<String> = s.iter().map(|x| x.addr.clone()).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let Some(lb) = balance(dirs[0].path(), &refs) else {
        return;
    };
    let bearer = bearer_of(first);
    // Eight clients, 10 calls each, at once: 80 asked, 25 may run.
    let ran: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (url, bearer) = (&lb.url, &bearer);
                scope.spawn(move || {
                    (0..10)
                        .filter(|n| echo_over_http(url, bearer, &format!("b{c}-{n}")).is_ok())
                        .count()
                })
            })
            .collect();
        clients.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(ran, 25, "the fleet let {ran} calls run on a budget of 25");
    // Spread over the instances.
    let deciders = datas
        .iter()
        .filter(|d| ledger_tail(d, 200).contains("demo.echo"))
        .count();
    assert!(
        deciders >= 2,
        "the calls were not spread over the instances"
    );
    drop(lb);
}

/// `GET /readyz` of each instance: whether all are ready.
fn all_ready(s: &[super::Server]) -> Vec<u16> {
    s.iter().map(|x| readyz(x).0).collect()
}

#[test]
fn three_instances_behind_haproxy_fail_closed_while_their_redis_is_down_and_resume_alone() {
    // A redis-server of the test's own, killed and started again on its port with its data.
    let port = super::super::free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = crate::OwnRedis::start_in(port, redis_dir.path());
    let Some(mut f) = FleetDirs::new(3, "fleet-redis-down", |_, _| {}) else {
        return;
    };
    f.url = format!("redis://127.0.0.1:{port}/");
    let s = f.start();
    let refs: Vec<&str> = s.iter().map(|x| x.addr.as_str()).collect();
    let Some(lb) = balance(f.dirs[0].path(), &refs) else {
        return;
    };
    let bearer = bearer_of(&f.first);
    for i in 0..6 {
        echo_over_http(&lb.url, &bearer, &format!("before-{i}")).unwrap();
    }
    // Redis gone: every call through every instance fails closed, saying governance is
    // unavailable, and no instance is ready.
    drop(redis);
    let started = Instant::now();
    for i in 0..6 {
        let why = echo_over_http(&lb.url, &bearer, &format!("down-{i}")).unwrap_err();
        assert!(why.contains("unavailable"), "{why}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "six refusals took {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while all_ready(&s).iter().any(|c| *c != 503) {
        assert!(Instant::now() < deadline, "{:?}", all_ready(&s));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back with its data: every instance resumes by itself.
    let _redis = crate::OwnRedis::start_in(port, redis_dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_ready(&s).iter().any(|c| *c != 200) {
        assert!(Instant::now() < deadline, "{:?}", all_ready(&s));
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..6 {
        echo_over_http(&lb.url, &bearer, &format!("after-{i}")).unwrap();
    }
}

#[test]
fn a_kill_through_one_of_three_instances_stops_calls_on_all_of_them() {
    let Some(f) = FleetDirs::new(3, "fleet-kill3", |_, _| {}) else {
        return;
    };
    let s = f.start();
    let bearer = bearer_of(&f.first);
    let mcp = |x: &super::Server| format!("http://{}/mcp", x.addr);
    for (i, x) in s.iter().enumerate() {
        echo_over_http(&mcp(x), &bearer, &format!("before-{i}")).unwrap();
    }
    // The kill switch through instance 1's admin listener (the operator's CLI).
    let pulled = Instant::now();
    let out = super::operator(
        &s[0],
        &["kill", "--agent", "coder-1", "--reason", "drill 3"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let acknowledged = pulled.elapsed();
    // Every instance refuses the agent's next call, naming the kill.
    for (i, x) in s.iter().enumerate() {
        let why = echo_over_http(&mcp(x), &bearer, &format!("after-{i}")).unwrap_err();
        assert!(why.contains("drill 3"), "instance {i}: {why}");
    }
    let all = pulled.elapsed();
    eprintln!(
        "kill through instance 1: acknowledged after {acknowledged:?}, refused on all three by {all:?}"
    );
}

#[test]
fn a_frozen_redis_fails_calls_closed_within_its_timeout_and_calls_resume_when_it_thaws() {
    let port = super::super::free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = crate::OwnRedis::start_in(port, redis_dir.path());
    let Some(mut f) = FleetDirs::new(2, "fleet-redis-frozen", |_, _| {}) else {
        return;
    };
    f.url = format!("redis://127.0.0.1:{port}/");
    let s = f.start();
    let bearer = bearer_of(&f.first);
    let mcp = |x: &super::Server| format!("http://{}/mcp", x.addr);
    echo_over_http(&mcp(&s[0]), &bearer, "before").unwrap();
    // The redis-server stopped (SIGSTOP): its connections stay open, nothing answers.
    let pid = redis.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let started = Instant::now();
    let refused = echo_over_http(&mcp(&s[1]), &bearer, "frozen");
    let waited = started.elapsed();
    signal("-CONT");
    let why = refused.unwrap_err();
    assert!(why.contains("unavailable"), "{why}");
    assert!(
        waited < Duration::from_secs(10),
        "the call waited {waited:?} for a frozen Redis"
    );
    // Thawed: both instances decide again without a restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, x) in s.iter().enumerate() {
        while echo_over_http(&mcp(x), &bearer, &format!("after-{i}")).is_err() {
            assert!(Instant::now() < deadline, "instance {i} did not resume");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(redis);
}
