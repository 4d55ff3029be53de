//! Resources and prompts, governed (issue 20): server-everything's resources, templates and
//! prompts reach the official SDK client only as the manifest's `resources:` and `prompts:`
//! entries allow, per agent; every read and every get is decided, recorded with a receipt and
//! redacted like a tool call; what no entry admits is denied, recorded, and never forwarded.
//! Through `/mcp` (the SDK's default mode and legacy), the embedded `warden stdio` and the
//! `--connect` bridge.

use super::{
    bridge_target, env, ledger_tail, sdk_as as sdk, setup, start_existing, stdio_target, Env,
};
use serde_json::Value;

/// A static document and a dynamic text resource server-everything serves.
const DOC: &str = "demo://resource/static/document/features.md";
const TEXT: &str = "demo://resource/dynamic/text/3";
/// The template `everything.text` covers (its argument `resourceId` is completed).
const TEXT_TEMPLATE: &str = "demo://resource/dynamic/text/{resourceId}";
/// A blob resource: no entry admits it.
const BLOB: &str = "demo://resource/dynamic/blob/1";
/// Under the documents' prefix, but climbing out of it.
const CLIMB: &str = "demo://resource/static/document/../dynamic/blob/1";

/// Lets the agents call server-everything's gzip tool, which adds a resource under
/// `demo://resource/session/` to its list (and announces it), and read what it adds.
fn admit_session_resources(m: &std::path::Path) {
    let text = std::fs::read_to_string(m).unwrap();
    let text = text
        .replacen(
            "\ntools:\n",
            "\ntools:\n  - { name: everything.gzip-file-as-resource, tier: low, zones: [\"*\"], arguments: { type: object } }\n",
            1,
        )
        .replacen(
            "\nresources:\n",
            "\nresources:\n  - { name: everything.session, uris: [\"demo://resource/session/*\"], tier: low, zones: [\"*\"] }\n",
            1,
        );
    std::fs::write(m, text).unwrap();
}

/// The upstream announces a new resource: the client is told to list again (unsolicited on
/// an earlier revision, on a `subscriptions/listen` stream that asked on 2026-07-28), and the
/// list it then reads holds the new resource.
fn told_to_list_again(e: &Env, mode: &str, target: &str, credential: &std::path::Path, name: &str) {
    let r = sdk(e, mode, target, credential, &["relist", name]);
    if mode == "legacy" {
        assert_eq!(r["changed"], true, "{r}");
    } else {
        assert_eq!(r["honored"], true, "{r}");
        assert!(
            r["changed"]
                .as_str()
                .is_some_and(|c| c.contains("ResourcesListChanged")),
            "{r}"
        );
    }
    let uri = format!("demo://resource/session/{name}");
    assert!(
        r["resources"].as_array().unwrap().iter().any(|u| u == &uri),
        "{r}"
    );
}

/// What every way in must show: the catalog per agent, reads and gets decided.
fn governed(e: &Env, mode: &str, target: &str, coder: &std::path::Path, intern: &std::path::Path) {
    let c = sdk(e, mode, target, coder, &["catalog"]);
    let resources: Vec<&str> = c["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(resources.contains(&DOC), "{c}");
    assert!(
        resources
            .iter()
            .all(|u| u.starts_with("demo://resource/static/document/")),
        "only what an entry admits is listed: {c}"
    );
    assert_eq!(
        c["templates"],
        serde_json::json!(["demo://resource/dynamic/text/{resourceId}"]),
        "the blob template is admitted by no entry: {c}"
    );
    let prompts = c["prompts"].as_object().unwrap();
    let mut names: Vec<&String> = prompts.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "everything.args-prompt",
            "everything.completable-prompt",
            "everything.simple-prompt"
        ],
        "{c}"
    );
    assert_eq!(
        prompts["everything.args-prompt"],
        serde_json::json!(["city", "state"])
    );
    // The intern's trust level is forbidden the `medium` tier: it does not see that prompt.
    let i = sdk(e, mode, target, intern, &["catalog"]);
    let prompts = i["prompts"].as_object().unwrap();
    assert!(
        !prompts.contains_key("everything.completable-prompt"),
        "{i}"
    );
    assert!(prompts.contains_key("everything.simple-prompt"), "{i}");

    // Reads: the admitted ones run; the others are denied and name why.
    let r = sdk(e, mode, target, coder, &["read", DOC, TEXT, BLOB, CLIMB]);
    let reads = r["reads"].as_array().unwrap();
    let contents = &reads[0]["result"]["contents"][0];
    assert_eq!(contents["uri"], DOC, "{r}");
    assert!(
        contents["text"]
            .as_str()
            .unwrap()
            .contains("Everything Server"),
        "{r}"
    );
    assert!(reads[1]["result"]["contents"][0]["text"].is_string(), "{r}");
    for denied in &reads[2..] {
        let error = denied["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("Denied by Warden policy") && error.contains("tool.unknown"),
            "{r}"
        );
        assert!(error.contains("no resource entry"), "{r}");
    }

    // Prompts: arguments checked against the entry's schema; the messages redacted.
    let p = sdk(
        e,
        mode,
        target,
        coder,
        &["prompt", "everything.args-prompt", r#"{"city":"Lisbon"}"#],
    );
    assert_eq!(
        p["result"]["messages"][0]["content"]["text"], "What's weather in Lisbon?",
        "{p}"
    );
    let p = sdk(
        e,
        mode,
        target,
        coder,
        &[
            "prompt",
            "everything.args-prompt",
            r#"{"city":"erin@example.com"}"#,
        ],
    );
    let text = p["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert!(
        !text.contains("erin@example.com") && text.contains("REDACTED"),
        "{p}"
    );
    let p = sdk(
        e,
        mode,
        target,
        coder,
        &["prompt", "everything.args-prompt", r#"{"town":"Lisbon"}"#],
    );
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("Denied by Warden policy"),
        "{p}"
    );
    let p = sdk(
        e,
        mode,
        target,
        coder,
        &["prompt", "everything.resource-prompt", "{}"],
    );
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("is not in the manifest"),
        "a prompt with no entry is denied: {p}"
    );
    let p = sdk(
        e,
        mode,
        target,
        intern,
        &[
            "prompt",
            "everything.completable-prompt",
            r#"{"department":"Sales","name":"Eve"}"#,
        ],
    );
    assert!(p["error"].as_str().unwrap().contains("trust.intern"), "{p}");
    // A prompt's name is not a tool's: calling it as a tool is denied as unknown.
    let t = sdk(
        e,
        mode,
        target,
        coder,
        &["call", "everything.simple-prompt", "{}"],
    );
    let text = t["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("tool.unknown"), "{t}");

    // Completions: asked of the upstream for a prompt the agent sees, refused otherwise.
    let c = sdk(
        e,
        mode,
        target,
        coder,
        &[
            "complete",
            "prompt",
            "everything.completable-prompt",
            "department",
            "E",
        ],
    );
    assert_eq!(c["values"], serde_json::json!(["Engineering"]), "{c}");
    let c = sdk(
        e,
        mode,
        target,
        intern,
        &[
            "complete",
            "prompt",
            "everything.completable-prompt",
            "department",
            "E",
        ],
    );
    assert!(
        c["error"]
            .as_str()
            .unwrap()
            .contains("trust.intern.forbidden"),
        "a completion is decided like a get of its prompt: {c}"
    );
    // A resource template's argument, under the resource entry that covers the template; a
    // template no entry covers is denied as unknown, and nothing reaches the upstream.
    let c = sdk(
        e,
        mode,
        target,
        coder,
        &["complete", "template", TEXT_TEMPLATE, "resourceId", "7"],
    );
    assert_eq!(c["values"], serde_json::json!(["7"]), "{c}");
    let c = sdk(
        e,
        mode,
        target,
        coder,
        &[
            "complete",
            "template",
            "demo://resource/dynamic/blob/{resourceId}",
            "resourceId",
            "7",
        ],
    );
    assert!(c["error"].as_str().unwrap().contains("tool.unknown"), "{c}");
}

/// A session's `GET` that is refused: its status and answer.
fn get_refused(addr: &str, headers: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

/// What bounds a legacy session's stream and subscriptions: a `GET` that does not accept an
/// event stream (406) or names no session Warden knows (404); at most 256 subscriptions,
/// the one more refused (an existing one again, or one after an unsubscribe, is fine).
fn session_bounds(addr: &str, auth: &str, session: &str) {
    let in_session = format!("{auth}mcp-session-id: {session}\r\n");
    let (status, answer) = get_refused(addr, &format!("{in_session}accept: application/json\r\n"));
    assert_eq!(status, 406, "{answer}");
    assert!(answer.contains("stream.not_acceptable"), "{answer}");
    let (status, answer) = get_refused(
        addr,
        &format!("{auth}mcp-session-id: made-up\r\naccept: text/event-stream\r\n"),
    );
    assert_eq!(status, 404, "{answer}");
    let subscribe = |method: &str, n: usize| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":9,"method":"resources/{method}","params":{{"uri":"demo://resource/static/document/n{n}.md"}}}}"#
        );
        let (status, answer) = super::raw(addr, &in_session, &body);
        assert_eq!(status, 200, "{answer}");
        answer
    };
    for n in 0..256 {
        let answer = subscribe("subscribe", n);
        assert!(!answer.contains("\"error\""), "subscription {n}: {answer}");
    }
    assert!(subscribe("subscribe", 256).contains("holds 256 subscriptions already"));
    assert!(!subscribe("subscribe", 7).contains("\"error\""));
    assert!(!subscribe("unsubscribe", 7).contains("\"error\""));
    assert!(!subscribe("subscribe", 256).contains("\"error\""));
}

/// A revoked credential is told nothing more: a 2026-07-28 `subscriptions/listen` ends with an
/// error within seconds, and a legacy session's stream (`GET /mcp`) at its next keep-alive.
#[test]
fn a_revoked_credentials_listen_and_session_stream_end() {
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path(), &e, super::free_port());
    let coder = data.join("agents/coder-1.credential");
    let s = start_existing(dir.path(), &data, &m);
    let bearer = std::fs::read_to_string(&coder).unwrap();
    let auth = format!("authorization: Bearer {}\r\n", bearer.trim());
    // A legacy session and its stream, read to its end in the background.
    let session = super::raw_session(&s.addr, &auth);
    session_bounds(&s.addr, &auth, &session);
    let mut get = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        get,
        "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}mcp-session-id: {session}\r\naccept: text/event-stream\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    // A stream that outlives its credential fails the test rather than hanging it.
    get.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let stream = std::thread::spawn(move || {
        let mut seen = String::new();
        let _ = get.read_to_string(&mut seen);
        (Instant::now(), seen)
    });
    // A 2026-07-28 listen, open before the revocation.
    let listen = client_until(
        &e,
        "auto",
        &s.url,
        &coder,
        &["hold-listen", "40"],
        "listening",
    );
    assert!(
        !stream.is_finished(),
        "the session's stream ended before the revocation"
    );
    let out = super::super::warden(&[
        "agents",
        "revoke",
        "coder-1",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let revoked = Instant::now();
    let out = listen.wait_with_output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["ended"].as_str().is_some_and(|e| e.contains("revoked")),
        "{r}"
    );
    assert!(revoked.elapsed() < Duration::from_secs(10), "{r}");
    let (ended, seen) = stream.join().unwrap();
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(ended >= revoked, "{seen}");
    assert!(
        ended.duration_since(revoked) < Duration::from_secs(20),
        "the session's stream outlived its credential: {seen}"
    );
}

/// The SDK client running `args` in `mode` against `target`, in the background, once it said
/// `ready` on stderr (its answer comes on stdout when it ends).
fn client_until(
    e: &Env,
    mode: &str,
    target: &str,
    credential: &std::path::Path,
    args: &[&str],
    ready: &str,
) -> std::process::Child {
    use std::io::BufRead as _;
    let mut child = e
        .sdk()
        .env("WARDEN_E2E_MODE", mode)
        .arg(target)
        .arg(credential)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(ready) {
        line.clear();
        assert!(
            said.read_line(&mut line).unwrap() > 0,
            "the client ended before it said `{ready}`"
        );
    }
    // The rest of its stderr is read (and dropped) so that it never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut said, &mut std::io::sink()));
    child
}

/// Kills every child of process `parent` whose command line holds `program`; how many.
fn kill_children(parent: u32, program: &str) -> usize {
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: the fields after the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned));
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if ppid.as_deref() == Some(parent.to_string().as_str()) && cmdline.contains(program) {
            let status = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap();
            killed += usize::from(status.success());
        }
    }
    killed
}

/// An upstream that dies while a client is subscribed to one of its resources is subscribed
/// again when it restarts: the client's next updates come from the new process.
#[test]
fn a_restarted_upstream_is_subscribed_again_for_its_subscribers() {
    use std::time::{Duration, Instant};
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path(), &e, super::free_port());
    let coder = data.join("agents/coder-1.credential");
    let s = start_existing(dir.path(), &data, &m);
    // A legacy client over /mcp, subscribed: its updates come on its session's stream.
    let hold = client_until(
        &e,
        "legacy",
        &s.url,
        &coder,
        &["subscribe-hold", DOC, "40"],
        "subscribed",
    );
    assert!(kill_children(s.child.id(), "mcp-server-everything") > 0);
    // The next call starts `everything` again (Warden subscribes it to DOC again) and turns
    // its simulated updates on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = e
            .sdk()
            .env("WARDEN_E2E_MODE", "legacy")
            .arg(&s.url)
            .arg(&coder)
            .args(["call", "everything.toggle-subscriber-updates", "{}"])
            .output()
            .unwrap();
        let r: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if r.as_ref().is_some_and(|r| r["result"]["isError"] != true) {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = hold.wait_with_output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["updated"][0], DOC, "{r}");
}

#[test]
fn resources_and_prompts_are_listed_per_agent_and_every_read_is_decided_and_recorded() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path(), &e, super::free_port());
    admit_session_resources(&m);
    let coder = data.join("agents/coder-1.credential");
    let intern = data.join("agents/intern-1.credential");
    // The embedded `warden stdio` first (it holds the data directory while it runs).
    let stdio = |cred: &std::path::Path| stdio_target(&data, &m, cred);
    // One stdio process per client run; the credential given to the client is unused.
    let stdio_coder = stdio(&coder);
    let stdio_intern = stdio(&intern);
    let run = |mode: &str, target: &str, args: &[&str]| sdk(&e, mode, target, &coder, args);
    let c = run("auto", &stdio_coder, &["catalog"]);
    assert!(
        c["resources"].as_array().unwrap().iter().any(|u| u == DOC),
        "{c}"
    );
    let r = run("auto", &stdio_coder, &["read", DOC, BLOB]);
    assert!(
        r["reads"][0]["result"]["contents"][0]["text"].is_string(),
        "{r}"
    );
    assert!(
        r["reads"][1]["error"]
            .as_str()
            .unwrap()
            .contains("tool.unknown"),
        "{r}"
    );
    let i = run("legacy", &stdio_intern, &["catalog"]);
    assert!(!i["prompts"]
        .as_object()
        .unwrap()
        .contains_key("everything.completable-prompt"));
    // Subscriptions: `resources/subscribe` on an earlier revision, `subscriptions/listen` on
    // 2026-07-28; the upstream's updates reach the subscriber, for URIs it may read only.
    let sub = run("legacy", &stdio_coder, &["subscribe", DOC]);
    assert_eq!(sub["updated"][0], DOC, "{sub}");
    let sub = run("auto", &stdio_coder, &["subscribe", DOC]);
    assert_eq!(sub["honored"], serde_json::json!([DOC]), "{sub}");
    assert_eq!(sub["updated"][0], DOC, "{sub}");
    let sub = run("legacy", &stdio_coder, &["subscribe", BLOB]);
    assert!(
        sub["error"]
            .as_str()
            .unwrap()
            .contains("not one this agent may use"),
        "{sub}"
    );
    let sub = run("auto", &stdio_coder, &["subscribe", BLOB]);
    assert_eq!(sub["honored"], serde_json::json!([]), "{sub}");
    // List changes (each run a fresh `warden stdio`, so a fresh upstream).
    told_to_list_again(&e, "legacy", &stdio_coder, &coder, "a.gz");
    told_to_list_again(&e, "auto", &stdio_coder, &coder, "b.gz");

    // Then `warden serve`: /mcp in both modes, and a bridge to it.
    let s = start_existing(dir.path(), &data, &m);
    for mode in ["auto", "legacy"] {
        governed(&e, mode, &s.url, &coder, &intern);
    }
    // Over /mcp a 2026-07-28 client listens on its request's stream; a legacy client is told
    // on its session's standalone stream (GET /mcp). Through a bridge, each in its revision.
    let bridge = |cred: &std::path::Path| bridge_target(&s.url, cred);
    let (bridge_coder, bridge_intern) = (bridge(&coder), bridge(&intern));
    for target in [&s.url, &bridge_coder] {
        for mode in ["auto", "legacy"] {
            let sub = sdk(&e, mode, target, &coder, &["subscribe", DOC]);
            assert_eq!(sub["updated"][0], DOC, "{mode} {target}: {sub}");
        }
    }
    let sub = sdk(&e, "legacy", &s.url, &coder, &["subscribe", BLOB]);
    assert!(
        sub["error"]
            .as_str()
            .unwrap()
            .contains("not one this agent may use"),
        "{sub}"
    );
    let c = sdk(&e, "auto", &bridge_coder, &coder, &["catalog"]);
    assert_eq!(
        c["templates"],
        serde_json::json!(["demo://resource/dynamic/text/{resourceId}"]),
        "{c}"
    );
    let r = sdk(&e, "auto", &bridge_coder, &coder, &["read", TEXT, BLOB]);
    assert!(
        r["reads"][0]["result"]["contents"][0]["text"].is_string(),
        "{r}"
    );
    assert!(
        r["reads"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no resource entry"),
        "{r}"
    );
    let p = sdk(
        &e,
        "legacy",
        &bridge_intern,
        &intern,
        &["prompt", "everything.args-prompt", r#"{"city":"Porto"}"#],
    );
    assert_eq!(
        p["result"]["messages"][0]["content"]["text"], "What's weather in Porto?",
        "{p}"
    );
    let c = sdk(
        &e,
        "legacy",
        &bridge_coder,
        &coder,
        &[
            "complete",
            "prompt",
            "everything.completable-prompt",
            "department",
            "S",
        ],
    );
    assert_eq!(c["values"], serde_json::json!(["Sales", "Support"]), "{c}");
    // List changes over /mcp and through a bridge, in both modes.
    told_to_list_again(&e, "auto", &s.url, &coder, "c.gz");
    told_to_list_again(&e, "legacy", &s.url, &coder, "d.gz");
    told_to_list_again(&e, "auto", &bridge_coder, &coder, "e.gz");
    told_to_list_again(&e, "legacy", &bridge_coder, &coder, "f.gz");
    drop(s);

    // Every read and get was decided and recorded; the allowed ones have receipts.
    let ledger = ledger_tail(&data, 5000);
    for expected in [
        "everything.docs",
        "everything.text",
        "everything.args-prompt",
        BLOB,
        CLIMB,
        "everything.resource-prompt",
    ] {
        assert!(
            ledger.contains(expected),
            "{expected} not in the ledger:\n{ledger}"
        );
    }
    let receipts = ledger
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["entry"]["type"] == "receipt" && l["entry"]["action"] == "everything.docs")
        .count();
    assert!(
        receipts >= 3,
        "a receipt for each read of the documents:\n{ledger}"
    );
    // Completions are decided and recorded as such, the allowed ones with receipts.
    let entries: Vec<Value> = ledger
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["entry"].clone())
        .collect();
    let completions: Vec<&Value> = entries
        .iter()
        .filter(|e| e["type"] == "decision" && e["operation"] == "complete")
        .collect();
    let allowed = completions
        .iter()
        .find(|d| d["tool"] == "everything.completable-prompt" && d["decision"] == "allow")
        .unwrap_or_else(|| panic!("no allowed completion recorded:\n{ledger}"));
    assert!(
        entries
            .iter()
            .any(|e| e["type"] == "receipt" && e["request_id"] == allowed["request_id"]),
        "the allowed completion has no receipt:\n{ledger}"
    );
    assert!(
        completions
            .iter()
            .any(|d| d["agent"] == "intern-1" && d["decision"] == "deny"),
        "the intern's completion is not recorded as denied:\n{ledger}"
    );
}
