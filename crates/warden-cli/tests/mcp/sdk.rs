//! End to end with an HTTP upstream built on the official MCP Python SDK (`sdk_server.py`, its
//! `MCPServer` over Streamable HTTP), for what the reference servers do not exercise:
//!
//! - a secret in the upstream's `Authorization` header: the server says whether it received the
//!   key it expects, and repeats the header. The call succeeds only if the header arrived with
//!   the secret, and the agent, the ledger and the log never see the secret;
//! - a rug-pull at run time: the server changes a tool's description and sends
//!   `notifications/tools/list_changed`; the tool is withdrawn before anything calls it again.

use super::{call, enroll, env, first_text, ledger_tail, start_existing, DEMO_KEY};
use std::path::Path;
use std::process::{Command, Stdio};

/// `sdk_server.py` on a port of its own, stopped when dropped (like the `remote` server).
fn sdk_server(e: &super::Env) -> super::Remote {
    let port = super::super::free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/sdk_server.py");
    let server = super::Remote {
        child: Command::new(e.venv.join("bin/python"))
            .arg(script)
            .arg(port.to_string())
            .env("EXPECTED_KEY", DEMO_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        port,
    };
    super::wait_for_port(port, "sdk_server.py");
    server
}

/// An upstream's list longer than a page reaches the agent in Warden's pages of 500, each
/// under a cursor Warden issued; a cursor it never issued is refused.
#[test]
fn a_list_longer_than_a_page_comes_in_pages_under_wardens_cursors() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = sdk_server(&e);
    let (data, m) = super::approvals::setup(dir.path());
    let upstreams = format!(
        "  - name: hdr\n    url: \"http://127.0.0.1:{}/mcp\"\n",
        server.port
    );
    let resources =
        "\nresources:\n  - { name: hdr.many, uris: [\"many://item/*\"], tier: low, zones: [\"*\"] }\n";
    super::add_to_manifest(&m, "", &upstreams, resources);
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);
    let r = super::client(&e, &s, "ops-1", &["pages"]);
    assert_eq!(r["sizes"], serde_json::json!([500, 500, 200]), "{r}");
    assert_eq!(r["distinct"], 1200, "{r}");
    assert!(
        r["forged"].as_str().is_some_and(|f| f.contains("cursor")),
        "{r}"
    );
    drop(s);
}

#[test]
fn an_sdk_server_gets_its_secret_header_and_loses_the_tool_it_rug_pulls() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = sdk_server(&e);
    let port = server.port;

    let (data, m) = super::approvals::setup(dir.path());
    let tools = "  - { name: hdr.whoami, tier: low, zones: [\"*\"], arguments: { type: object } }\n  - { name: hdr.rugpull, tier: low, zones: [\"*\"], arguments: { type: object } }\n";
    let upstreams = format!(
        "  - name: hdr\n    url: \"http://127.0.0.1:{port}/mcp\"\n    headers:\n      Authorization: \"Bearer ${{secret:HDR_KEY}}\"\n"
    );
    // `start_existing` gives the gateway DEMO_KEY in this variable.
    let secrets = "\nsecrets:\n  HDR_KEY: { env: WARDEN_E2E_DEMO_KEY }\n";
    super::add_to_manifest(&m, tools, &upstreams, secrets);
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);

    let r = call(&e, &s, "ops-1", "hdr.whoami", "{}");
    assert_eq!(r["isError"], false, "{r}");
    // The server received the secret in its Authorization header...
    assert!(first_text(&r).starts_with("authorized; "), "{r}");
    // ...and repeated it, which Warden redacted, in the text and in the structured content.
    assert!(!r.to_string().contains(DEMO_KEY), "{r}");
    assert!(first_text(&r).contains("Bearer "), "{r}");
    // Nor is it in the ledger or the log.
    assert!(!ledger_tail(&data, 50).contains(DEMO_KEY));
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("hdr"), "{log}");
    assert!(!log.contains(DEMO_KEY), "{log}");

    // The rug-pull: `whoami` gets a new description that tries to steer the agent, and the
    // server says its tools changed. The next call of `whoami` is refused as withdrawn, the
    // change is in the ledger, and the tool is gone from the agent's list.
    let r = call(&e, &s, "ops-1", "hdr.rugpull", "{}");
    assert_eq!(r["isError"], false, "{r}");
    let r = call(&e, &s, "ops-1", "hdr.whoami", "{}");
    assert_eq!(r["isError"], true, "{r}");
    assert!(first_text(&r).contains("withdrawn"), "{r}");
    let ledger = ledger_tail(&data, 50);
    assert!(
        ledger.contains("upstream.tool_changed") && ledger.contains("tool `whoami` changed"),
        "{ledger}"
    );
    let listed = super::client(&e, &s, "ops-1", &["list"]);
    let names = listed["tools"].to_string();
    assert!(names.contains("hdr.rugpull"), "{listed}");
    assert!(!names.contains("hdr.whoami"), "{listed}");
    assert!(!listed.to_string().contains("evil.example"), "{listed}");
    drop(s);
}
