//! Requests from an upstream to the agent's client, governed (issue 20): server-everything's
//! sampling, elicitation and roots tools ask the agent's client while they serve a call. They
//! reach the official SDK client only when the manifest lets that upstream ask
//! (`client_requests`), on the stdio connection of the call being served, when the client
//! declared the capability — redacted, and recorded either way.

use super::{
    add_to_manifest, all_text as text, env, ledger_tail, sdk_as as sdk, setup, start_existing,
    stdio_target, Env,
};
use serde_json::Value;
use std::path::Path;

/// Adds `asker`, server-everything allowed to ask for `allowed` (`sampling, roots`), and its
/// `tools` (each with the `pii` detector) to the manifest at `m`.
pub(super) fn add_asker(e: &Env, m: &Path, allowed: &str, tools: &[&str]) {
    let npm = e.npm.join("node_modules/.bin/mcp-server-everything");
    let tools: String = tools
        .iter()
        .map(|t| format!("  - {{ name: {t}, tier: low, zones: [\"*\"], arguments: {{ type: object }}, redact: [pii] }}\n"))
        .collect();
    add_to_manifest(
        m,
        &tools,
        &format!(
            "  - name: asker\n    command: [\"{}\", stdio]\n    unsandboxed: \"a reference server from the test cache\"\n    client_requests: [{allowed}]\n",
            npm.display()
        ),
        "",
    );
}

/// The sampling, elicitation and roots tools of `asker`, called in `mode` through `target`:
/// each request reaches the client's callbacks, redacted by the called tool's detectors. With
/// `fresh` (the first time `asker`'s process is asked for roots, when server-everything logs)
/// the log message reaches the client too.
pub(super) fn asks_reach_the_client(
    e: &Env,
    mode: &str,
    target: &str,
    credential: &Path,
    fresh: bool,
) {
    let calls = serde_json::json!([
        ["asker.trigger-sampling-request", {"prompt": "summarise the mail of erin@example.com", "maxTokens": 20}],
        ["asker.trigger-elicitation-request", {}],
        ["asker.get-roots-list", {}],
    ]);
    let calls = calls.to_string();
    let mut args = vec!["ask", calls.as_str()];
    if fresh {
        args.push("await-log");
    }
    let a = sdk(e, mode, target, credential, &args);
    let results = a["results"].as_array().unwrap();
    let sampled = text(&results[0]);
    assert!(
        sampled.contains(
            "the model read: Resource trigger-sampling-request context: summarise the mail of"
        ),
        "{mode}: {a}"
    );
    let asked = a["asked"].as_array().unwrap();
    let sampling = asked.iter().find(|x| x.get("sampling").is_some()).unwrap();
    let seen = sampling["sampling"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert!(
        !seen.contains("erin@example.com") && seen.contains("REDACTED"),
        "what the client's model is asked is redacted by the call's detectors ({mode}): {a}"
    );
    assert!(text(&results[1]).contains("declined"), "{mode}: {a}");
    assert!(
        asked.iter().any(|x| x.get("elicitation").is_some()),
        "{mode}: {a}"
    );
    assert!(
        text(&results[2]).contains("file:///e2e/project"),
        "{mode}: {a}"
    );
    // The log message server-everything sends while it serves `get-roots-list` (the first
    // time it is asked for roots: here, in a fresh embedded `warden stdio`) reaches the client:
    // a legacy one at its `logging/setLevel`, a 2026-07-28 one because its request asked for
    // log messages (`_meta` `io.modelcontextprotocol/logLevel`; here on the retry that
    // answered the roots request, the request serving the call when the message came).
    if fresh {
        assert!(
            asked.iter().any(|x| x["log"]
                .as_str()
                .is_some_and(|l| l.contains("root(s) received from client"))),
            "{a}"
        );
    }
}

/// The receipts of `action` in the ledger of `data` with `status`.
fn receipts(data: &Path, action: &str, status: &str) -> usize {
    ledger_tail(data, 400)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["entry"]["type"] == "receipt"
                && l["entry"]["action"] == action
                && l["entry"]["status"] == status
        })
        .count()
}

/// A 2026-07-28 call that waits for its client's input in a session Warden issued (as the
/// bridge's calls do) ends with the session: after `DELETE` the upstream's call is stopped
/// (receipted `killed`) and its `requestState` continues nothing.
fn a_parked_call_ends_with_its_session(s: &super::Server, coder: &Path) {
    const ELICIT: &str = "asker.trigger-elicitation-request";
    let bearer = std::fs::read_to_string(coder).unwrap();
    let auth = format!("authorization: Bearer {}\r\n", bearer.trim());
    let session = super::raw_session(&s.addr, &auth);
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}}"#;
    let modern = format!("{auth}mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {ELICIT}\r\n");
    let call = |extra: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{ELICIT}","arguments":{{}}{extra},{meta}}}}}"#
        )
    };
    let (status, parked) = super::raw(
        &s.addr,
        &format!("{modern}mcp-session-id: {session}\r\n"),
        &call(""),
    );
    assert_eq!(status, 200, "{parked}");
    let at = parked.find("\"requestState\":\"").expect(&parked) + "\"requestState\":\"".len();
    let state = &parked[at..at + parked[at..].find('"').unwrap()];
    let killed = receipts(&s.data, ELICIT, "killed");
    // The session ends: its parked call with it.
    let (status, ended) = super::raw_method(
        &s.addr,
        "DELETE",
        &format!("{auth}mcp-session-id: {session}\r\n"),
        "",
    );
    assert_eq!(status, 204, "{ended}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while receipts(&s.data, ELICIT, "killed") == killed {
        assert!(
            std::time::Instant::now() < deadline,
            "the parked call did not end with its session"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Its state continues nothing (retried outside the ended session).
    let answer =
        r#","requestState":"STATE","inputResponses":{"warden":{"action":"accept","content":{}}}"#
            .replace("STATE", state);
    let (_, retried) = super::raw(&s.addr, &modern, &call(&answer));
    assert!(
        !retried.contains("\"resultType\":\"complete\"") || retried.contains("\"isError\":true"),
        "{retried}"
    );
}

#[test]
fn an_upstream_asks_the_agents_client_only_as_its_manifest_allows_and_only_during_a_call() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path(), &e, super::free_port());
    // `asker` (server-everything) may ask for all three; `outbox` (the same server) for none.
    add_asker(
        &e,
        &m,
        "sampling, elicitation, roots",
        &[
            "asker.trigger-sampling-request",
            "asker.trigger-elicitation-request",
            "asker.get-roots-list",
            "outbox.trigger-sampling-request",
        ],
    );
    let coder = data.join("agents/coder-1.credential");
    let stdio = stdio_target(&data, &m, &coder);

    // Over stdio, with a client that declares all three: each reaches it, redacted — in
    // legacy mode as requests on the connection, in the SDK's default mode (revision
    // 2026-07-28) as input-required results the client answers and retries.
    for mode in ["legacy", "auto"] {
        // Each a fresh embedded `warden stdio`, so a fresh `asker`.
        asks_reach_the_client(&e, mode, &stdio, &coder, true);
    }
    // A client that declared none of them: the upstream's request is refused, the call says so.
    let r = sdk(
        &e,
        "legacy",
        &stdio,
        &coder,
        &[
            "call",
            "asker.trigger-sampling-request",
            r#"{"prompt":"hello","maxTokens":5}"#,
        ],
    );
    assert!(
        text(&r["result"]).contains("did not declare sampling"),
        "{r}"
    );
    // An upstream the manifest lets ask nothing is offered nothing: server-everything then
    // does not even list its sampling tool.
    let l = sdk(&e, "legacy", &stdio, &coder, &["list"]);
    let tools = l["tools"].as_array().unwrap();
    assert!(
        tools.iter().any(|t| t == "asker.trigger-sampling-request"),
        "{l}"
    );
    assert!(
        !tools.iter().any(|t| t == "outbox.trigger-sampling-request"),
        "{l}"
    );

    // Over /mcp: a 2026-07-28 client gets input-required rounds like over stdio; a legacy
    // client, in the session Warden issued it, gets the request on its call's stream and
    // POSTs its reply back. A desktop client behind the `--connect` bridge too, in its own
    // revision: a legacy one is sent the daemon's request, a 2026-07-28 one gets the daemon's
    // input-required results through the bridge's 2026-07-28 connection.
    // The first through the bridge in the SDK's default mode, while `asker` is fresh: its log
    // message comes to the bridge's 2026-07-28 connection and reaches the desktop client.
    let s = start_existing(dir.path(), &data, &m);
    let bridge = super::bridge_target(&s.url, &coder);
    asks_reach_the_client(&e, "auto", &bridge, &coder, true);
    asks_reach_the_client(&e, "legacy", &bridge, &coder, false);
    asks_reach_the_client(&e, "auto", &s.url, &coder, false);
    asks_reach_the_client(&e, "legacy", &s.url, &coder, false);
    a_parked_call_ends_with_its_session(&s, &coder);
    drop(s);
    // A fresh daemon each: a client over /mcp gets the log message of a fresh `asker` too, in
    // both modes — the message the upstream sends just before its result is on its way before
    // the result is read (`crates/warden-executor/src/logs_in_order.rs`).
    for mode in ["legacy", "auto"] {
        let s = start_existing(dir.path(), &data, &m);
        asks_reach_the_client(&e, mode, &s.url, &coder, true);
        drop(s);
    }

    // Recorded: forwarded and refused, with the agent and why.
    let ledger = ledger_tail(&data, 300);
    let events: Vec<Value> = ledger
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["entry"].clone())
        .filter(|e| {
            e["type"] == "event" && e["kind"].as_str().unwrap_or("").starts_with("upstream.")
        })
        .collect();
    let has = |kind: &str, needle: &str| {
        events
            .iter()
            .any(|e| e["kind"] == kind && e["reason"].as_str().unwrap_or("").contains(needle))
    };
    // Recorded before it is forwarded, then how the client answered.
    assert!(
        has("upstream.sampling", "forwarded to the agent's client"),
        "{events:?}"
    );
    assert!(
        has("upstream.sampling", "the agent's client answered"),
        "{events:?}"
    );
    assert!(has("upstream.elicitation", "forwarded"), "{events:?}");
    assert!(has("upstream.roots", "forwarded"), "{events:?}");
    assert!(
        has("upstream.sampling", "did not declare sampling"),
        "{events:?}"
    );
    // server-everything asks for roots right after it starts, outside any call: refused.
    assert!(
        has("upstream.roots", "no call of any agent is in flight"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "upstream.sampling")
            .all(|e| e["agent"] == "coder-1"),
        "{events:?}"
    );
}
