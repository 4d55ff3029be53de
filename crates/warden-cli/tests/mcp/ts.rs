//! The official MCP TypeScript SDK client (npm `@modelcontextprotocol/sdk`), in its default
//! settings, through `/mcp`, through `warden stdio` and through the stdio bridge (issue 20).

use super::approvals::setup;
use super::{all_text, env, first_text, start_existing, Env};
use serde_json::Value;
use std::path::Path;

fn ts(e: &Env, url: &str, credential: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/ts_client.mjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(url)
        .arg(credential)
        .args(args)
        .env("WARDEN_E2E_NPM", &e.npm)
        // What `warden stdio` needs to start the `everything` upstream.
        .env("WARDEN_E2E_DEMO_KEY", super::DEMO_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// What every way in must show: the agent's tools, an allowed call's result, an escalated
/// call's approval, a malformed call refused.
fn governed(e: &Env, url: &str, credential: &Path) {
    let listed = ts(e, url, credential, &["list"]);
    assert_eq!(listed["server"], "warden", "{listed}");
    let tools = listed["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t == "demo.echo"), "{listed}");
    let r = ts(
        e,
        url,
        credential,
        &["call", "demo.echo", r#"{"text":"hello from ts"}"#],
    );
    assert_eq!(first_text(&r["result"]), "hello from ts", "{r}");
    assert_ne!(r["result"]["isError"], true, "{r}");
    let r = ts(
        e,
        url,
        credential,
        // Answered at once rather than after the manifest's 20 s wait for an approval.
        &[
            "call",
            "demo.add",
            r#"{"a":2,"b":3}"#,
            r#"{"warden/wait":false}"#,
        ],
    );
    assert!(first_text(&r["result"]).contains("approval"), "{r}");
    assert_eq!(r["result"]["isError"], true, "{r}");
    let r = ts(e, url, credential, &["call", "demo.echo", r#"{"wrong":1}"#]);
    assert!(first_text(&r["result"]).contains("Warden"), "{r}");
}

#[test]
fn the_typescript_sdk_client_is_governed_on_every_way_in() {
    let Some(e) = env() else { return };
    // Embedded `warden stdio` on a data directory of its own.
    let alone = tempfile::tempdir().unwrap();
    let (data, m) = setup(alone.path());
    let cred = data.join("agents/coder-1.credential");
    governed(&e, &super::stdio_target(&data, &m, &cred), &cred);
    // `/mcp` on a running gateway, and the stdio bridge to it.
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path());
    let s = start_existing(dir.path(), &data, &m);
    let cred = data.join("agents/coder-1.credential");
    governed(&e, &s.url, &cred);
    governed(&e, &super::bridge_target(&s.url, &cred), &cred);
}

/// Resources, prompts, completions and an upstream's sampling and roots requests through the
/// TypeScript SDK client (revision 2025-11-25), over stdio and over `/mcp`.
#[test]
fn the_typescript_sdk_client_reads_resources_gets_prompts_and_answers_upstream_requests() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::setup(dir.path(), &e, super::free_port());
    super::client_requests::add_asker(
        &e,
        &m,
        "sampling, roots",
        &["asker.trigger-sampling-request", "asker.get-roots-list"],
    );
    let cred = data.join("agents/coder-1.credential");
    let stdio = super::stdio_target(&data, &m, &cred);
    let doc = "demo://resource/static/document/features.md";
    let blob = "demo://resource/dynamic/blob/1";
    let reads_and_gets = |url: &str| {
        let c = ts(&e, url, &cred, &["catalog"]);
        assert!(
            c["resources"].as_array().unwrap().iter().any(|u| u == doc),
            "{c}"
        );
        assert_eq!(
            c["templates"],
            serde_json::json!(["demo://resource/dynamic/text/{resourceId}"]),
            "{c}"
        );
        assert!(
            c["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "everything.args-prompt"),
            "{c}"
        );
        let r = ts(&e, url, &cred, &["read", doc]);
        assert!(
            r["result"]["contents"][0]["text"]
                .as_str()
                .unwrap()
                .contains("Everything Server"),
            "{r}"
        );
        let r = ts(&e, url, &cred, &["read", blob]);
        assert!(
            r["error"].as_str().unwrap().contains("no resource entry"),
            "{r}"
        );
        let p = ts(
            &e,
            url,
            &cred,
            &["prompt", "everything.args-prompt", r#"{"city":"Faro"}"#],
        );
        assert_eq!(
            p["result"]["messages"][0]["content"]["text"], "What's weather in Faro?",
            "{p}"
        );
        let c = ts(
            &e,
            url,
            &cred,
            &[
                "complete",
                "everything.completable-prompt",
                "department",
                "M",
            ],
        );
        assert_eq!(c["values"], serde_json::json!(["Marketing"]), "{c}");
    };
    let ask = serde_json::json!([
        ["asker.trigger-sampling-request", {"prompt": "write to erin@example.com", "maxTokens": 20}],
        ["asker.get-roots-list", {}],
    ])
    .to_string();
    reads_and_gets(&stdio);
    let a = ts(&e, &stdio, &cred, &["ask", &ask]);
    assert!(
        all_text(&a["results"][0])
            .contains("the model read: Resource trigger-sampling-request context: write to"),
        "{a}"
    );
    let seen = a["asked"][0]["sampling"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert!(
        !seen.contains("erin@example.com") && seen.contains("REDACTED"),
        "{a}"
    );
    assert!(
        all_text(&a["results"][1]).contains("file:///e2e/project"),
        "{a}"
    );

    let s = start_existing(dir.path(), &data, &m);
    reads_and_gets(&s.url);
    // Over /mcp the request comes on the call's stream, the reply goes back as a POST.
    let a = ts(&e, &s.url, &cred, &["ask", &ask]);
    assert!(
        all_text(&a["results"][0])
            .contains("the model read: Resource trigger-sampling-request context: write to"),
        "{a}"
    );
    assert!(
        all_text(&a["results"][1]).contains("file:///e2e/project"),
        "{a}"
    );
}
