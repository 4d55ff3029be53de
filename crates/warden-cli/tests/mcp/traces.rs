//! OpenTelemetry traces end to end (issue 24): `warden serve` with the standard `OTEL_*`
//! variables exports its spans over OTLP/HTTP to a receiver that decodes them with the official
//! OpenTelemetry protobuf definitions (`otlp_receiver.py`, PyPI `opentelemetry-proto`). An agent
//! on the official MCP Python SDK calls a tool on an HTTP upstream built on the same SDK
//! (`sdk_server.py`'s `trace`), with a W3C `traceparent` in the call's `_meta`:
//!
//! - the call's span continues the agent's trace under the agent's span, and its stages are its
//!   children (decide, ledger append, execute; under execute the upstream call, the redaction,
//!   the receipt);
//! - the upstream was sent the same trace, with the upstream call's span as its parent, both
//!   as an HTTP header and in `_meta`;
//! - the ledger and the decision's log line carry the same trace id;
//! - no argument value, result or secret is in any span;
//! - a call without a trace context starts a trace of its own; a denied call's trace has no
//!   execution; a tool name the manifest does not define is `(unknown)` in it.

use super::{client, enroll, env, first_text, ledger_tail, start_with, DEMO_KEY};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";
/// The argument value the call carries: it must not be in any span.
const NOTE: &str = "trace-must-not-show-this-argument-7c1e";

/// The spans received so far.
fn spans(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits up to 20 s for `n` spans named `name`.
fn wait_for(file: &Path, name: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let all = spans(file);
        if all.iter().filter(|s| s["name"] == name).count() >= n {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span `{name}` arrived: {all:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[test]
fn governed_calls_are_traced_over_otlp_and_the_upstream_continues_the_trace() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let received = dir.path().join("spans.jsonl");
    let (otlp, up) = (super::super::free_port(), super::super::free_port());
    let _receiver = super::Remote {
        child: Command::new(e.venv.join("bin/python"))
            .arg(here.join("otlp_receiver.py"))
            .arg(otlp.to_string())
            .arg(&received)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("receiver.log")).unwrap())
            .spawn()
            .unwrap(),
        port: otlp,
    };
    let _upstream = super::Remote {
        child: Command::new(e.venv.join("bin/python"))
            .arg(here.join("sdk_server.py"))
            .arg(up.to_string())
            .env("EXPECTED_KEY", DEMO_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        port: up,
    };
    super::wait_for_port(otlp, "otlp_receiver.py");
    super::wait_for_port(up, "sdk_server.py");

    let (data, m) = super::approvals::setup(dir.path());
    let tools = "  - { name: hdr.trace, tier: low, zones: [\"*\"], arguments: { type: object } }\n";
    let upstreams = format!(
        "  - name: hdr\n    url: \"http://127.0.0.1:{up}/mcp\"\n    headers:\n      Authorization: \"Bearer ${{secret:HDR_KEY}}\"\n"
    );
    let secrets = "\nsecrets:\n  HDR_KEY: { env: WARDEN_E2E_DEMO_KEY }\n";
    super::add_to_manifest(&m, tools, &upstreams, secrets);
    enroll(&data, &m, "ops-1");
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let s = start_with(
        dir.path(),
        &data,
        &m,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "warden-e2e"),
            // Export each batch within 100 ms (the default waits 5 s).
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    // A call in the agent's trace (`_meta.traceparent`, SEP-414).
    let meta = format!(r#"{{"traceparent": "00-{TRACE}-{AGENT_SPAN}-01"}}"#);
    let answer = client(
        &e,
        &s,
        "ops-1",
        &[
            "call-meta",
            "hdr.trace",
            &format!(r#"{{"note": "{NOTE}"}}"#),
            &meta,
        ],
    );
    let r = &answer["result"];
    assert_eq!(r["isError"], false, "{r}");
    let seen: Value = serde_json::from_str(&first_text(r)).unwrap();

    let all = wait_for(&received, "tools/call hdr.trace", 1);
    let in_trace: Vec<&Value> = all.iter().filter(|s| s["trace_id"] == TRACE).collect();
    let named = |name: &str| {
        let found: Vec<&&Value> = in_trace.iter().filter(|s| s["name"] == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` in {in_trace:?}");
        *found[0]
    };
    // The call's span: a server span under the agent's, its outcome, no argument.
    let root = named("tools/call hdr.trace");
    assert_eq!(root["parent_span_id"], AGENT_SPAN, "{root}");
    assert_eq!(root["kind"], 2, "SPAN_KIND_SERVER: {root}");
    assert_eq!(root["scope"], "warden");
    assert_eq!(root["resource"]["service.name"], "warden-e2e", "{root}");
    assert_eq!(attr(root, "gen_ai.tool.name"), "hdr.trace");
    assert_eq!(attr(root, "mcp.method.name"), "tools/call");
    assert_eq!(attr(root, "warden.decision"), "allow");
    assert_eq!(attr(root, "warden.outcome"), "ran");
    assert_eq!(attr(root, "warden.agent"), "ops-1");
    assert!(attr(root, "warden.rules").is_array(), "{root}");
    assert!(attr(root, "warden.receipt.index").is_i64(), "{root}");
    // Its stages.
    let id = |s: &Value| s["span_id"].as_str().unwrap().to_owned();
    for stage in ["warden.decide", "warden.ledger.append", "warden.execute"] {
        assert_eq!(named(stage)["parent_span_id"], id(root), "{stage}");
    }
    let execute = named("warden.execute");
    let upstream = named("tools/call trace");
    assert_eq!(upstream["kind"], 3, "SPAN_KIND_CLIENT: {upstream}");
    assert_eq!(attr(upstream, "warden.upstream"), "hdr");
    for stage in ["tools/call trace", "warden.redaction", "warden.receipt"] {
        assert_eq!(named(stage)["parent_span_id"], id(execute), "{stage}");
    }
    for s in &in_trace {
        let (start, end) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
        assert!(start > 0 && start <= end, "{s}");
        assert!(
            start >= root["start"].as_u64().unwrap() && end <= root["end"].as_u64().unwrap(),
            "a stage outside its call: {s}"
        );
    }
    // The upstream continued the trace under the upstream call's span, by header and `_meta`.
    let expected = format!("00-{TRACE}-{}-01", id(upstream));
    assert_eq!(seen["header"], expected.as_str(), "{seen}");
    assert_eq!(seen["meta"], expected.as_str(), "{seen}");
    // The ledger and the decision's log line carry the trace id.
    assert!(ledger_tail(&data, 10).contains(TRACE));
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("decision") && l.contains(TRACE)),
        "{log}"
    );

    // A call with no trace context starts its own trace; a denied one has no execution.
    let answer = client(&e, &s, "ops-1", &["call", "made.up_tool", "{}"]);
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    // Named `(unknown)`: the agent's invented name never reaches the collector.
    let all = wait_for(&received, "tools/call (unknown)", 1);
    let denied = all
        .iter()
        .find(|s| s["name"] == "tools/call (unknown)")
        .unwrap();
    assert_eq!(attr(denied, "gen_ai.tool.name"), "(unknown)");
    assert_ne!(denied["trace_id"], TRACE);
    assert_eq!(denied["parent_span_id"], "", "a root span: {denied}");
    assert_eq!(attr(denied, "warden.decision"), "deny");
    let children: Vec<&str> = all
        .iter()
        .filter(|s| s["trace_id"] == denied["trace_id"] && s["parent_span_id"] == id(denied))
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(children.contains(&"warden.decide"), "{children:?}");
    assert!(!children.contains(&"warden.execute"), "{children:?}");

    // Nothing the call carried, returned or was given is in any span; the receiver refused
    // nothing.
    let everything = std::fs::read_to_string(&received).unwrap();
    for secret in [NOTE, DEMO_KEY, "Bearer", "made.up_tool"] {
        assert!(!everything.contains(secret), "`{secret}` is in a span");
    }
    // Nor does the log name the invented tool (the agent's text could fake log fields).
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(!log.contains("made.up_tool"), "{log}");
    assert!(log.contains("tool=(unknown)"), "{log}");
    assert!(!everything.contains("refused"), "{everything}");
    drop(s);
}
