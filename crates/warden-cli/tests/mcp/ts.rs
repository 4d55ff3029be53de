//! The official MCP TypeScript SDK client (npm `@modelcontextprotocol/sdk`), in its default
//! settings, through `/mcp`, through `warden stdio` and through the stdio bridge (issue 20).

use super::approvals::setup;
use super::{env, first_text, start_existing, Env};
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
    let command = serde_json::json!([
        env!("CARGO_BIN_EXE_warden"),
        "stdio",
        "--data",
        data,
        "--config",
        m,
        "--credential",
        cred,
    ]);
    governed(&e, &format!("stdio:{command}"), &cred);
    // `/mcp` on a running gateway, and the stdio bridge to it.
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = setup(dir.path());
    let s = start_existing(dir.path(), &data, &m);
    let cred = data.join("agents/coder-1.credential");
    governed(&e, &s.url, &cred);
    let bridge = serde_json::json!([
        env!("CARGO_BIN_EXE_warden"),
        "stdio",
        "--connect",
        s.url,
        "--credential",
        cred,
    ]);
    governed(&e, &format!("stdio:{bridge}"), &cred);
}
