//! End to end through `/mcp` with software nobody here wrote: the official MCP Python SDK client
//! (PyPI `mcp`) drives `warden serve`, whose upstreams are the reference servers
//! `mcp-server-time` and `mcp-server-git` (PyPI), `@modelcontextprotocol/server-everything` and
//! `@modelcontextprotocol/server-filesystem` (npm): over stdio, and server-everything over
//! Streamable HTTP too (the `remote` upstream).
//!
//! `.ci/run` installs them (pinned) and sets `WARDEN_E2E_VENV` and `WARDEN_E2E_NPM`; without
//! those variables (a laptop) the test prints a notice and is skipped.

mod approvals;
mod breakers;
mod bridge;
mod client_requests;
mod fleet;
mod https;
mod ifc;
mod metrics;
mod postgres_fault;
mod promotion;
mod resources;
mod sandboxed;
mod sdk;
mod traces;
mod ts;

use super::{free_port, text, warden};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The secret the `everything` upstream gets in its environment; `get-env` prints it back.
const DEMO_KEY: &str = "e2e-Secret-7f3a9c1d5b";
/// The secret the `everything` upstream gets from the OS keyring (the user's kernel keyring).
const KEYRING_KEY: &str = "e2e-Keyring-0c4e8b2a61";

#[derive(Clone)]
struct Env {
    python: PathBuf,
    venv: PathBuf,
    npm: PathBuf,
    /// The SDK client's mode: `auto` (its default: `server/discover`, revision 2026-07-28) or
    /// `legacy` (the `initialize` handshake).
    mode: &'static str,
}

impl Env {
    /// The SDK client script (`client.py`), to be given its arguments, in this `Env`'s mode.
    fn sdk(&self) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py"))
            .env("WARDEN_E2E_MODE", self.mode);
        c
    }
}

/// `server-everything` in its Streamable HTTP mode, on its own port (the `remote` upstream).
struct Remote {
    child: std::process::Child,
    port: u16,
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn remote(e: &Env) -> Remote {
    remote_on(e, free_port())
}

impl Remote {
    /// Stops the server and starts a new one on the same port: it has forgotten every MCP
    /// session.
    fn restart(&mut self, e: &Env) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = remote_on(e, self.port);
    }
}

fn remote_on(e: &Env, port: u16) -> Remote {
    let child = Command::new(e.npm.join("node_modules/.bin/mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "server-everything (HTTP)");
    Remote { child, port }
}

/// Waits up to 30 s for a server (`what`) to listen on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Adds `tools` and `upstreams` (YAML list items) to the manifest at `m`, and `tail` at its end.
fn add_to_manifest(m: &Path, tools: &str, upstreams: &str, tail: &str) {
    let text = std::fs::read_to_string(m).unwrap();
    let text = text
        .replacen("\ntools:\n", &format!("\ntools:\n{tools}"), 1)
        .replacen("\nupstreams:\n", &format!("\nupstreams:\n{upstreams}"), 1);
    std::fs::write(m, text + tail).unwrap();
}

fn env() -> Option<Env> {
    let (Ok(venv), Ok(npm)) = (
        std::env::var("WARDEN_E2E_VENV"),
        std::env::var("WARDEN_E2E_NPM"),
    ) else {
        eprintln!(
            "notice: WARDEN_E2E_VENV / WARDEN_E2E_NPM not set: skipping the MCP end-to-end test \
             (.ci/run installs the MCP SDK and reference servers and sets them)"
        );
        return None;
    };
    let venv = PathBuf::from(venv);
    Some(Env {
        python: venv.join("bin/python"),
        venv,
        npm: PathBuf::from(npm),
        mode: "auto",
    })
}

struct Server {
    child: std::process::Child,
    url: String,
    addr: String,
    admin: String,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the manifest and policies into `dir` and enrols the agents; returns (data, manifest).
/// The `remote` upstream points at `remote_port`.
fn setup(dir: &Path, e: &Env, remote_port: u16) -> (PathBuf, PathBuf) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    // The keyring secret: a `user` key in this user's keyring, which the gateway (same user)
    // searches. Adding it again replaces the payload, so parallel tests agree.
    linux_keyutils::KeyRing::from_special_id(linux_keyutils::KeyRingIdentifier::User, true)
        .and_then(|ring| ring.add_key("warden-e2e:demo-keyring", KEYRING_KEY))
        .expect("the kernel keyring accepts a user key (needed for the keyring secret)");
    // A directory for the filesystem server (a note holding the secret and an email), and a
    // git repository with one commit for the git server.
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("notes.txt"),
        format!("deploy key: {DEMO_KEY}\nowner: erin@example.com\n"),
    )
    .unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for args in [
        &["init", "-q"][..],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "first commit",
        ][..],
    ] {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let manifest = std::fs::read_to_string(here.join("manifest.yaml"))
        .unwrap()
        .replace("@VENV@", e.venv.to_str().unwrap())
        .replace("@NPM@", e.npm.to_str().unwrap())
        .replace("@FILES@", files.to_str().unwrap())
        .replace("@REPO@", repo.to_str().unwrap())
        .replace("@REMOTE_PORT@", &remote_port.to_string());
    std::fs::write(dir.join("manifest.yaml"), manifest).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(
        here.join("policies/base.cedar"),
        dir.join("policies/base.cedar"),
    )
    .unwrap();
    let data = dir.join("data");
    let m = dir.join("manifest.yaml");
    for agent in ["coder-1", "intern-1"] {
        enroll(&data, &m, agent);
    }
    (data, m)
}

/// `warden agents enroll AGENT` into `data` under manifest `m`.
fn enroll(data: &Path, m: &Path, agent: &str) {
    let out = warden(&[
        "agents",
        "enroll",
        agent,
        "--data",
        data.to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn start(dir: &Path, e: &Env, remote_port: u16) -> Server {
    let (data, m) = setup(dir, e, remote_port);
    start_existing(dir, &data, &m)
}

/// Starts `warden serve` on an existing data directory and manifest. The ports are picked free
/// just before; should another test take one in between (its listener then fails with "address
/// already in use"), it starts again on others.
fn start_existing(dir: &Path, data: &Path, m: &Path) -> Server {
    start_with(dir, data, m, &[])
}

/// [`start_existing`], the gateway given the environment variables `vars` as well.
fn start_with(dir: &Path, data: &Path, m: &Path, vars: &[(&str, &str)]) -> Server {
    for _ in 0..3 {
        if let Some(server) = try_start(dir, data, m, vars) {
            return server;
        }
    }
    panic!("the gateway could not get free ports three times in a row");
}

/// One attempt of [`start_existing`]; `None` if a port it picked was taken meanwhile.
fn try_start(dir: &Path, data: &Path, m: &Path, vars: &[(&str, &str)]) -> Option<Server> {
    let data = data.to_path_buf();
    let (addr, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--manifest",
            m.to_str().unwrap(),
            "--listen",
            &addr,
            "--admin-listen",
            &admin,
        ])
        .env("WARDEN_E2E_DEMO_KEY", DEMO_KEY)
        .env("RUST_LOG", "info,warden_executor=debug")
        // Proxies named by the environment are ignored (secrets would go to them): were they
        // used, every HTTP upstream in these tests would be unreachable.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .envs(vars.iter().copied())
        // In a fleet each instance says where the others pass it what only it can serve.
        .envs(
            vars.iter()
                .any(|(k, _)| *k == "WARDEN_STATE")
                .then(|| ("WARDEN_ADVERTISE", format!("http://{addr}/mcp"))),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        url: format!("http://{addr}/mcp"),
        addr,
        admin,
        data,
    };
    // Serving starts once the upstreams are up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while std::net::TcpStream::connect(&server.addr).is_err() {
        let log = || std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
        if matches!(server.child.try_wait(), Ok(Some(_)))
            && log().contains("Address already in use")
        {
            return None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start: {}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(server)
}

/// Runs a `warden` operator command (`resume`, `approvals`, `agents promote`, ...) against the
/// admin listener of `s`.
fn operator(s: &Server, args: &[&str]) -> std::process::Output {
    let data = s.data.to_str().unwrap();
    let mut all = args.to_vec();
    all.extend(["--data", data, "--admin", &s.admin]);
    warden(&all)
}

/// Runs the SDK client; returns its JSON answer.
fn client(e: &Env, s: &Server, agent: &str, args: &[&str]) -> Value {
    let cred = s.data.join(format!("agents/{agent}.credential"));
    let out = e.sdk().arg(&s.url).arg(cred).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "client {args:?} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(&out.stdout)))
}

fn call(e: &Env, s: &Server, agent: &str, tool: &str, args: &str) -> Value {
    client(e, s, agent, &["call", tool, args])["result"].clone()
}

/// The SDK client in `mode` against `target` (an `/mcp` URL or `stdio:[...]`), as the agent of
/// `credential`; the secret the `everything` upstream needs reaches a `warden stdio` it
/// launches. Returns its JSON answer.
fn sdk_as(e: &Env, mode: &str, target: &str, credential: &Path, args: &[&str]) -> Value {
    let out = e
        .sdk()
        .env("WARDEN_E2E_MODE", mode)
        .env("WARDEN_E2E_DEMO_KEY", DEMO_KEY)
        .arg(target)
        .arg(credential)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client {args:?} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A client's target that launches the embedded `warden stdio` on `data` and manifest `m` for
/// the agent of `credential`, as a desktop client launches its servers.
fn stdio_target(data: &Path, m: &Path, credential: &Path) -> String {
    let command = serde_json::json!([
        env!("CARGO_BIN_EXE_warden"),
        "stdio",
        "--data",
        data,
        "--config",
        m,
        "--credential",
        credential,
    ]);
    format!("stdio:{command}")
}

/// A client's target that launches `warden stdio --connect URL` (the bridge to a daemon).
fn bridge_target(url: &str, credential: &Path) -> String {
    let command = serde_json::json!([
        env!("CARGO_BIN_EXE_warden"),
        "stdio",
        "--connect",
        url,
        "--credential",
        credential,
    ]);
    format!("stdio:{command}")
}

/// Every text block of a tool result, joined by newlines.
fn all_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn first_text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The last `n` ledger entries of a data directory, as `warden ledger tail` prints them.
fn ledger_tail(data: &Path, n: u32) -> String {
    let out = warden(&[
        "ledger",
        "tail",
        "--data",
        data.to_str().unwrap(),
        "-n",
        &n.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `warden ledger verify` on a running gateway's ledger: entries after its latest checkpoint
/// are reported as an unsigned tail (exit 3), never as verified; once the gateway has signed
/// its next checkpoint (every second while there is something new), the whole log verifies.
fn verify_live(data: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = warden(&["ledger", "verify", "--data", data.to_str().unwrap()]);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        match out.status.code() {
            Some(0) => return,
            Some(3) if std::time::Instant::now() < deadline => {
                assert!(said.contains("UNSIGNED TAIL"), "{said}");
            }
            _ => panic!("ledger verify: {said}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A raw HTTP request to the gateway; returns status and body.
pub(super) fn raw(addr: &str, headers: &str, body: &str) -> (u16, String) {
    raw_bytes(addr, headers, body.as_bytes())
}

/// A session opened by a raw `initialize` (revision 2025-11-25) with `headers`: its id.
pub(super) fn raw_session(addr: &str, headers: &str) -> String {
    let (status, init) = raw(
        addr,
        headers,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(status, 200, "{init}");
    session_id(&init)
}

/// The `Mcp-Session-Id` header of a [`raw`] answer.
fn session_id(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("mcp-session-id:")
                .then(|| l.split_once(':').unwrap().1.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no session id: {answer}"))
}

/// [`raw`] with a body of any bytes.
fn raw_bytes(addr: &str, headers: &str, body: &[u8]) -> (u16, String) {
    raw_request(addr, "POST", headers, body)
}

/// [`raw`] with another method (`DELETE`).
pub(super) fn raw_method(addr: &str, method: &str, headers: &str, body: &str) -> (u16, String) {
    raw_request(addr, method, headers, body.as_bytes())
}

fn raw_request(addr: &str, method: &str, headers: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let out = String::from_utf8_lossy(&bytes).into_owned();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

/// A POST is answered with JSON when no call can wait for an approval (a client then reads the
/// whole answer and keeps its connection), and on an SSE stream, with its keep-alives, when a
/// call can (`approvals.wait_seconds` above 0).
#[test]
fn answers_are_json_unless_a_call_may_wait_for_an_approval() {
    let Some(_e) = env() else { return };
    for (wait_seconds, framing) in [("0", "application/json"), ("20", "text/event-stream")] {
        let dir = tempfile::tempdir().unwrap();
        let (data, m) = approvals::setup(dir.path());
        let text = std::fs::read_to_string(&m).unwrap();
        assert!(text.contains("wait_seconds: 20"));
        let text = text.replace("wait_seconds: 20", &format!("wait_seconds: {wait_seconds}"));
        std::fs::write(&m, text).unwrap();
        enroll(&data, &m, "ops-1");
        let s = start_existing(dir.path(), &data, &m);
        let cred = std::fs::read_to_string(data.join("agents/ops-1.credential")).unwrap();
        let auth = format!(
            "authorization: Bearer {}\r\nmcp-protocol-version: 2025-11-25\r\n",
            cred.trim()
        );
        let session = raw_session(&s.addr, &auth);
        let (status, answer) = raw(
            &s.addr,
            &format!("{auth}mcp-session-id: {session}\r\n"),
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"demo.echo","arguments":{"text":"framed"}}}"#,
        );
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("content-type: {framing}")),
            "wait_seconds {wait_seconds}: {answer}"
        );
        assert!(answer.contains("framed"), "{answer}");
    }
}

/// The SDK client in its default mode (`auto`): it discovers the server (`server/discover`)
/// and speaks revision 2026-07-28, whose results must say `resultType`.
#[test]
fn mcp_clients_reach_real_servers_only_through_the_governed_path() {
    governed_path("auto", "2026-07-28");
}

/// The same in the SDK's `legacy` mode: the `initialize` handshake, at its newest revision.
#[test]
fn legacy_mcp_clients_reach_real_servers_only_through_the_governed_path() {
    governed_path("legacy", "2025-11-25");
}

/// The same with revision 2026-07-28 adopted directly (the SDK's mode named by the revision: no
/// discovery, no `initialize`).
#[test]
fn modern_mcp_clients_reach_real_servers_only_through_the_governed_path() {
    governed_path("2026-07-28", "2026-07-28");
}

fn governed_path(mode: &'static str, revision: &str) {
    let Some(mut e) = env() else { return };
    e.mode = mode;
    let dir = tempfile::tempdir().unwrap();
    let mut http_upstream = remote(&e);
    let s = start(dir.path(), &e, http_upstream.port);

    // Handshake, and tools/list filtered per agent: only manifest tools (server-everything's
    // other tools are hidden), and an intern does not see the high tier it may never run.
    let listed = client(&e, &s, "coder-1", &["list"]);
    assert_eq!(listed["protocol"], revision, "{listed}");
    // A client that adopts a revision directly asks the server for nothing about itself.
    if matches!(mode, "auto" | "legacy") {
        assert_eq!(listed["server"], "warden");
    }
    let tools: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tools.contains(&"time.get_current_time"), "{tools:?}");
    assert!(tools.contains(&"time.convert_time"), "{tools:?}");
    assert!(tools.contains(&"everything.echo"), "{tools:?}");
    assert!(!tools.iter().any(|t| t.contains("gzip")), "{tools:?}");
    let intern = client(&e, &s, "intern-1", &["list"]);
    let intern_tools = intern["tools"].as_array().unwrap();
    assert!(!intern_tools.iter().any(|t| t == "time.convert_time"));
    assert!(intern_tools.iter().any(|t| t == "time.get_current_time"));

    // An allowed call runs on the real server; its structured content passes through.
    let r = call(
        &e,
        &s,
        "coder-1",
        "time.get_current_time",
        r#"{"timezone":"UTC"}"#,
    );
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["timezone"], "UTC", "{r}");

    // Denied by a Cedar forbid: a tool error that names the rule and says retrying won't help.
    // A forbidden call is a violation: the agent is demoted at once (its next call, which it
    // could run on its own before, now needs its owner).
    let r = call(
        &e,
        &s,
        "intern-1",
        "everything.echo",
        r#"{"message":"this is forbidden"}"#,
    );
    assert_eq!(r["isError"], true);
    let t = first_text(&r);
    assert!(t.contains("Denied by Warden policy"), "{t}");
    assert!(t.contains("policy:forbid-forbidden-echo"), "{t}");
    assert!(t.contains("will not help"), "{t}");
    let r = call(
        &e,
        &s,
        "intern-1",
        "time.get_current_time",
        r#"{"timezone":"UTC"}"#,
    );
    assert!(first_text(&r).contains("trust.demoted"), "{r}");

    // Escalated: the approval id and what approval is needed; never "tool not found".
    let r = call(
        &e,
        &s,
        "coder-1",
        "time.convert_time",
        r#"{"source_timezone":"UTC","time":"12:00","target_timezone":"Europe/Paris"}"#,
    );
    assert_eq!(r["isError"], true);
    let t = first_text(&r);
    assert!(t.contains("needs approval"), "{t}");
    assert!(t.contains("role `planner`"), "{t}");
    assert!(t.contains("Approval id: "), "{t}");

    // The secret injected into the upstream's environment comes back from `get-env`, and is
    // redacted before the agent sees it.
    let r = call(&e, &s, "coder-1", "everything.get-env", "{}");
    let body = r.to_string();
    assert!(body.contains("DEMO_API_KEY"), "{body}");
    assert!(
        !body.contains(DEMO_KEY),
        "the secret reached the agent: {body}"
    );
    assert!(body.contains("[REDACTED:secret]"), "{body}");
    // The one read from the OS keyring too: injected (named in the upstream's environment),
    // never shown.
    assert!(body.contains("DEMO_KEYRING_KEY"), "{body}");
    assert!(
        !body.contains(KEYRING_KEY),
        "the keyring secret reached the agent: {body}"
    );

    // PII the manifest turns on for `echo` is redacted.
    let r = call(
        &e,
        &s,
        "coder-1",
        "everything.echo",
        r#"{"message":"write to carol@example.org"}"#,
    );
    let t = first_text(&r);
    assert!(
        t.contains("[REDACTED:email]") && !t.contains("carol@"),
        "{t}"
    );

    // Egress (INV-011): a secret or personal data on its way out through an egress tool's
    // arguments is denied, naming the detector and never the value; plain text goes.
    let r = call(
        &e,
        &s,
        "coder-1",
        "outbox.echo",
        &format!(r#"{{"message":"the key is {DEMO_KEY}"}}"#),
    );
    let t = first_text(&r);
    assert!(
        t.contains("egress.leak") && t.contains("a secret value"),
        "{t}"
    );
    assert!(!t.contains(DEMO_KEY), "{t}");
    // `/v1/decide`, the dry run, scans the same way and answers the same.
    let (status, body) = super::post(
        &s.addr,
        "/v1/decide",
        &format!(
            r#"{{"agent":"coder-1","session":"d","tool":"outbox.echo","arguments":{{"message":"the key is {DEMO_KEY}"}}}}"#
        ),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("egress.leak") && body.contains(r#""dry_run":true"#),
        "{body}"
    );
    assert!(!body.contains(DEMO_KEY), "{body}");
    let r = call(
        &e,
        &s,
        "coder-1",
        "outbox.echo",
        r#"{"message":"reach me at dave@example.net"}"#,
    );
    assert!(first_text(&r).contains("`email` match"), "{r}");
    let r = call(&e, &s, "coder-1", "outbox.echo", r#"{"message":"hello"}"#);
    assert_eq!(r["isError"], false, "{r}");

    // An 8 MiB result arrives whole and unchanged.
    let r = call(
        &e,
        &s,
        "coder-1",
        "demo.repeat",
        r#"{"text":"0123456789abcdef","times":524288}"#,
    );
    let big = first_text(&r);
    assert_eq!(big.len(), 8 << 20);
    assert!(big.as_bytes().chunks(16).all(|c| c == b"0123456789abcdef"));

    // An upstream that speaks garbage and dies: a tool error naming it, nothing hangs.
    let r = call(&e, &s, "coder-1", "dead.anything", "{}");
    assert_eq!(r["isError"], true);
    assert!(
        first_text(&r).contains("upstream `dead` is unavailable"),
        "{r}"
    );
    // Why it failed to start is in the gateway's log at warn, not only at debug level: the
    // end of its stderr.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("its stderr ended with: dead: no configuration found")),
        "{log}"
    );
    // A slow one: the call times out after the upstream's 2 s.
    let started = std::time::Instant::now();
    let r = call(
        &e,
        &s,
        "coder-1",
        "slow.trigger-long-running-operation",
        r#"{"duration":30,"steps":3}"#,
    );
    assert!(
        first_text(&r).contains("did not answer within 2000 ms"),
        "{r}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // Progress notifications of the upstream reach the agent, under the agent's own token.
    let r = client(
        &e,
        &s,
        "coder-1",
        &[
            "progress",
            "everything.trigger-long-running-operation",
            r#"{"duration":2,"steps":4}"#,
        ],
    );
    assert_eq!(r["result"]["isError"], false, "{r}");
    let progress = r["progress"].as_array().unwrap();
    assert!(progress.len() >= 3, "{r}");
    assert_eq!(progress.last().unwrap()[1], 4.0, "{r}");
    // Cancelling mid-call: the upstream call is cancelled and its receipt says `killed`.
    let r = client(
        &e,
        &s,
        "coder-1",
        &[
            "cancel",
            "everything.trigger-long-running-operation",
            r#"{"duration":10,"steps":10}"#,
        ],
    );
    assert_eq!(r["cancelled"], true, "{r}");

    // The reference filesystem server: a file holding the secret comes back redacted; a write
    // (high tier, junior agent) escalates and does not happen.
    let notes = dir.path().join("files/notes.txt");
    let r = call(
        &e,
        &s,
        "coder-1",
        "files.read_text_file",
        &serde_json::json!({ "path": notes }).to_string(),
    );
    let body = r.to_string();
    assert_eq!(r["isError"], false, "{r}");
    assert!(body.contains("deploy key: [REDACTED:secret]"), "{body}");
    assert!(!body.contains(DEMO_KEY), "{body}");
    let r = call(
        &e,
        &s,
        "coder-1",
        "files.write_file",
        &serde_json::json!({ "path": notes, "content": "overwritten" }).to_string(),
    );
    assert!(first_text(&r).contains("needs approval"), "{r}");
    assert!(std::fs::read_to_string(&notes)
        .unwrap()
        .contains("deploy key"));
    // The reference git server.
    let repo = dir.path().join("repo");
    let r = call(
        &e,
        &s,
        "coder-1",
        "git.git_log",
        &serde_json::json!({ "repo_path": repo }).to_string(),
    );
    assert_eq!(r["isError"], false, "{r}");
    assert!(first_text(&r).contains("first commit"), "{r}");

    // A Streamable HTTP upstream, reached with a secret in its Authorization header.
    let r = call(
        &e,
        &s,
        "coder-1",
        "remote.echo",
        r#"{"message":"over http"}"#,
    );
    assert_eq!(r["isError"], false, "{r}");
    assert!(first_text(&r).contains("over http"), "{r}");

    // The HTTP upstream restarts and forgets Warden's MCP session; it answers Warden's next
    // request with an error that names no request, so that call goes unanswered and times
    // out (2 s here). The connection then fails a ping and is dropped, and the next call
    // reconnects: without that, every later call would time out the same way.
    http_upstream.restart(&e);
    let r = call(&e, &s, "coder-1", "remote.echo", r#"{"message":"lost"}"#);
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        first_text(&r).contains("did not answer within 2000 ms"),
        "{r}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(dir.path().join("serve.log"))
        .unwrap()
        .contains("did not answer a ping: reconnecting")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection was not dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = call(
        &e,
        &s,
        "coder-1",
        "remote.echo",
        r#"{"message":"reconnected"}"#,
    );
    assert_eq!(r["isError"], false, "{r}");
    assert!(first_text(&r).contains("reconnected"), "{r}");

    // Other content types pass through faithfully.
    let r = call(&e, &s, "coder-1", "everything.get-tiny-image", "{}");
    let blocks = r["content"].as_array().unwrap();
    let image = blocks
        .iter()
        .find(|b| b["type"] == "image")
        .expect("an image block");
    assert!(image["data"].as_str().unwrap().len() > 100, "{image}");
    assert_eq!(image["mimeType"], "image/png");
    // Resource links, an embedded resource and annotations, as the server sent them.
    let r = call(
        &e,
        &s,
        "coder-1",
        "everything.get-resource-links",
        r#"{"count":2}"#,
    );
    let links: Vec<&Value> = r["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "resource_link")
        .collect();
    assert_eq!(links.len(), 2, "{r}");
    assert!(
        links
            .iter()
            .all(|l| l["uri"].as_str().is_some_and(|u| u.contains("://")) && l["name"].is_string()),
        "{r}"
    );
    let r = call(&e, &s, "coder-1", "everything.get-resource-reference", "{}");
    let embedded = r["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "resource")
        .unwrap_or_else(|| panic!("no embedded resource: {r}"));
    assert!(embedded["resource"]["uri"].is_string(), "{r}");
    assert!(embedded["resource"]["text"].is_string(), "{r}");
    let r = call(
        &e,
        &s,
        "coder-1",
        "everything.get-annotated-message",
        r#"{"messageType":"error"}"#,
    );
    let annotations = &r["content"][0]["annotations"];
    assert_eq!(annotations["priority"], 1.0, "{r}");
    assert_eq!(
        annotations["audience"],
        serde_json::json!(["user", "assistant"]),
        "{r}"
    );

    // 50 concurrent calls in one session all run.
    let r = client(
        &e,
        &s,
        "coder-1",
        &[
            "concurrent",
            "everything.echo",
            r#"{"message":"n{i}"}"#,
            "50",
        ],
    );
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["isError"], false, "{r}");
        assert!(first_text(r).contains(&format!("n{i}")), "{r}");
    }

    // Without a credential: 401 naming what is missing; a forged one: 401 too.
    let (status, body) = raw(&s.addr, "", r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("identity.missing"), "{body}");
    let (status, body) = raw(
        &s.addr,
        "authorization: Bearer not-a-credential\r\n",
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(status, 401, "{body}");

    // A session answers only to the credential that opened it.
    let coder = std::fs::read_to_string(s.data.join("agents/coder-1.credential")).unwrap();
    let intern = std::fs::read_to_string(s.data.join("agents/intern-1.credential")).unwrap();
    let (status, resp) = raw(
        &s.addr,
        &format!("authorization: Bearer {}\r\n", coder.trim()),
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(status, 200, "{resp}");
    let sid = session_id(&resp);
    let (status, resp) = raw(
        &s.addr,
        &format!(
            "authorization: Bearer {}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\n",
            intern.trim()
        ),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains("session.not_yours"), "{resp}");

    // Every revision the official SDKs negotiate is served as asked; an unknown method gets
    // JSON-RPC's "method not found" at once, not a hang.
    for version in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let (status, resp) = raw(
            &s.addr,
            &format!("authorization: Bearer {}\r\n", coder.trim()),
            &format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
            ),
        );
        assert_eq!(status, 200, "{resp}");
        assert!(
            resp.contains(&format!(r#""protocolVersion":"{version}""#)),
            "{version}: {resp}"
        );
    }
    let (status, resp) = raw(
        &s.addr,
        &format!(
            "authorization: Bearer {}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\n",
            coder.trim()
        ),
        r#"{"jsonrpc":"2.0","id":3,"method":"warden/no-such-method","params":{}}"#,
    );
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains(r#""code":-32601"#), "{resp}");

    // `notifications/cancelled`, sent on a request of its own while the call streams its
    // progress on another, cancels that call: it ends at once, well before its 10 s.
    let coder_auth = format!(
        "authorization: Bearer {}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\n",
        coder.trim()
    );
    let started = std::time::Instant::now();
    let streaming = {
        use std::io::{Read as _, Write as _};
        let body = r#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"everything.trigger-long-running-operation","arguments":{"duration":10,"steps":10},"_meta":{"progressToken":"p41"}}}"#;
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            c,
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{coder_auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("notifications/progress") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "the call ended before any progress");
            seen.extend_from_slice(&buf[..n]);
        }
        (c, seen)
    };
    // The same request id in another session cancels nothing here.
    let (status, resp) = raw(
        &s.addr,
        &format!(
            "authorization: Bearer {}\r\nmcp-protocol-version: 2025-06-18\r\n",
            coder.trim()
        ),
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":41}}"#,
    );
    assert_eq!(status, 202, "{resp}");
    // ...the call goes on reporting progress.
    let (mut c, mut seen) = streaming;
    let progressed = |seen: &[u8]| {
        String::from_utf8_lossy(seen)
            .matches("notifications/progress")
            .count()
    };
    let before = progressed(&seen);
    let mut buf = [0u8; 4096];
    while progressed(&seen) == before {
        let n = std::io::Read::read(&mut c, &mut buf).unwrap();
        assert!(n > 0, "the call ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("did not complete"));
    let (status, resp) = raw(
        &s.addr,
        &coder_auth,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":41,"reason":"test"}}"#,
    );
    assert_eq!(status, 202, "{resp}");
    std::io::Read::read_to_end(&mut c, &mut seen).unwrap();
    let answer = String::from_utf8_lossy(&seen);
    assert!(answer.contains("did not complete"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the call was not cancelled: {:?}",
        started.elapsed()
    );
    // DELETE ends the session: then its id is unknown (404), on which a client opens another.
    let delete = |auth: &str| {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        write!(
            c,
            "DELETE /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    let intern_auth = coder_auth.replace(coder.trim(), intern.trim());
    assert!(
        delete(&intern_auth).starts_with("HTTP/1.1 403"),
        "another credential cannot end it"
    );
    let list = || {
        raw(
            &s.addr,
            &coder_auth,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
        )
    };
    let (status, resp) = list();
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("everything.echo"), "{resp}");
    assert!(delete(&coder_auth).starts_with("HTTP/1.1 204"));
    let (status, resp) = list();
    assert_eq!(status, 404, "{resp}");
    assert!(resp.contains("session.unknown"), "{resp}");
    // A body declared over the cap (4 MiB) is refused before any of it is read.
    {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        write!(
            c,
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            coder.trim(),
            5 << 20
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("request.too_large"), "{out}");
    }

    // Malformed JSON-RPC gets an error, and the gateway keeps serving.
    let cred = std::fs::read_to_string(s.data.join("agents/coder-1.credential")).unwrap();
    let auth = format!("authorization: Bearer {}\r\n", cred.trim());
    // Not JSON, invalid UTF-8, nesting 100,000 deep: HTTP 400 with JSON-RPC's parse error.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [
        &b"{not json"[..],
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}",
        deep.as_bytes(),
    ] {
        let (status, resp) = raw_bytes(&s.addr, &auth, body);
        assert_eq!(status, 400, "{resp}");
        assert!(resp.contains(r#""code":-32700"#), "{resp}");
    }
    // JSON that is no JSON-RPC message: invalid request.
    let (status, resp) = raw(&s.addr, &auth, r#"{"jsonrpc":"2.0","id":4}"#);
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains(r#""code":-32600"#), "{resp}");
    // A call whose arguments are not an object: invalid params, answered with its id.
    let (status, resp) = raw(
        &s.addr,
        &auth,
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"time.get_current_time","arguments":"UTC"}}"#,
    );
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains(r#""code":-32602"#) && resp.contains(r#""id":5"#),
        "{resp}"
    );
    let r = call(
        &e,
        &s,
        "coder-1",
        "time.get_current_time",
        r#"{"timezone":"Europe/Paris"}"#,
    );
    assert_eq!(r["isError"], false, "{r}");

    // Every execution left a receipt; the secret is nowhere in the ledger; it verifies.
    let ledger = ledger_tail(&s.data, 500);
    assert!(!ledger.contains(DEMO_KEY));
    assert!(!ledger.contains(KEYRING_KEY));
    let receipts: Vec<Value> = ledger
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["entry"]["action"].is_string())
        .collect();
    // One per call that ran or was attempted: 1 + get-env + echo + outbox + repeat + dead
    // (refused) + slow (timeout) + progress + cancelled + cancelled by a raw notification +
    // files + git + remote (3: before, across and after its restart) + image + resource links
    // + embedded resource + annotated message + 50 + 1; none for the denied and escalated calls.
    assert_eq!(receipts.len(), 70);
    // Both cancellations reached the Executor: the official client's and the raw one.
    let killed: Vec<&Value> = receipts
        .iter()
        .filter(|r| r["entry"]["status"] == "killed")
        .collect();
    assert_eq!(killed.len(), 2, "{killed:?}");
    assert!(killed
        .iter()
        .all(|r| r["entry"]["action"] == "everything.trigger-long-running-operation"));
    assert!(receipts.iter().any(|r| r["entry"]["status"] == "timeout"));
    assert!(receipts.iter().any(|r| r["entry"]["status"] == "refused"));
    assert!(
        receipts
            .iter()
            .any(|r| r["entry"]["action"] == "everything.get-env"
                && r["entry"]["redactions"].as_u64().unwrap_or(0) >= 1),
        "the get-env receipt counts its redaction"
    );
    verify_live(&s.data);
    // Nor is the secret in the gateway's log.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(!log.contains(DEMO_KEY), "the secret reached the log");
    assert!(
        !log.contains(KEYRING_KEY),
        "the keyring secret reached the log"
    );

    // The kill switch during 50 calls in flight: every one is stopped (cancelled upstream,
    // receipted `killed`), none completes, and the next call is refused.
    let started = std::time::Instant::now();
    let in_flight = {
        let (e, url, data) = (e.clone(), s.url.clone(), s.data.clone());
        std::thread::spawn(move || {
            let out = e
                .sdk()
                .arg(url)
                .arg(data.join("agents/coder-1.credential"))
                .args([
                    "concurrent",
                    "everything.trigger-long-running-operation",
                    r#"{"duration":15,"steps":15,"n":{i}}"#,
                    "50",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        })
    };
    // All 50 decided (and so on their way to the Executor) before the kill, however loaded
    // the machine is.
    let decided = || {
        ledger_tail(&s.data, 500)
            .lines()
            .filter(|l| {
                l.contains("\"type\":\"decision\"")
                    && l.contains("everything.trigger-long-running-operation")
            })
            .count()
    };
    while decided() < 50 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "only {} of 50 calls decided",
            decided()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = operator(
        &s,
        &["kill", "--agent", "coder-1", "--reason", "incident drill"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = in_flight.join().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(14),
        "calls ran to completion"
    );
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    for r in results {
        assert_eq!(r["isError"], true, "{r}");
        let t = first_text(r);
        // Stopped in flight, held at the Executor, or — a call that reached the Governor only
        // after the kill — denied by it.
        assert!(
            t.contains("cancelled") || t.contains("held (kill)") || t.contains("kill in force"),
            "{t}"
        );
    }
    let r = call(
        &e,
        &s,
        "coder-1",
        "time.get_current_time",
        r#"{"timezone":"UTC"}"#,
    );
    assert!(first_text(&r).contains("incident drill"), "{r}");
    // Each stopped in flight (killed) or, not yet started, held at the Executor (refused).
    let stopped = ledger_tail(&s.data, 500)
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"receipt\"")
                && l.contains("everything.trigger-long-running-operation")
                && (l.contains("\"status\":\"killed\"") || l.contains("\"status\":\"refused\""))
        })
        .count();
    assert!(stopped >= 50, "{stopped} killed or refused receipts");
    // Issue 24: no secret the run injected is in any log line, at any level the run logged
    // (`info`, and `debug` for the Executor).
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.lines().count() > 20, "{log}");
    for secret in [DEMO_KEY, KEYRING_KEY] {
        assert!(!log.contains(secret), "a secret is in the gateway's log");
    }
}

/// `warden stdio`, launched by the SDK's stdio client the way a desktop client launches its
/// servers, serves the credential's agent.
#[test]
fn stdio_serves_one_agent_launched_by_a_client() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The `remote` upstream is not started here: its tools are simply withheld.
    let (data, m) = setup(dir.path(), &e, free_port());
    let stdio = stdio_target(&data, &m, &data.join("agents/intern-1.credential"));
    let run = |args: &[&str]| -> Value {
        let out = e.sdk().arg(&stdio).arg("-").args(args).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let listed = run(&["list"]);
    assert_eq!(listed["server"], "warden");
    let tools = listed["tools"].as_array().unwrap();
    assert!(
        tools.iter().any(|t| t == "time.get_current_time"),
        "{tools:?}"
    );
    assert!(!tools.iter().any(|t| t == "time.convert_time"), "{tools:?}");
    let r = run(&["call", "time.get_current_time", r#"{"timezone":"UTC"}"#])["result"].clone();
    assert_eq!(r["isError"], false, "{r}");
    let r = run(&["call", "time.convert_time", "{}"])["result"].clone();
    assert!(first_text(&r).contains("Denied by Warden policy"), "{r}");
    // Both calls were decided and recorded under the intern's name.
    let out = warden(&["ledger", "tail", "--data", data.to_str().unwrap()]);
    let ledger = text(&out.stdout);
    assert!(
        ledger.contains("intern-1") && ledger.contains("trust.intern.forbidden"),
        "{ledger}"
    );
}

/// `warden upstreams pin --write` pins the real servers; a tool whose listing no longer matches
/// its pin, or that has none, is withdrawn and refused, and a changed executable does not start.
#[test]
fn pinned_upstreams_withdraw_changed_tools_and_refuse_changed_binaries() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let http_upstream = remote(&e);
    let (data, m) = setup(dir.path(), &e, http_upstream.port);
    let pin = || {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["upstreams", "pin", "--write", "--data"])
            .arg(&data)
            .arg("--config")
            .arg(&m)
            .env("WARDEN_E2E_DEMO_KEY", DEMO_KEY)
            .output()
            .unwrap()
    };
    // An upstream that cannot be observed: nothing is written.
    let before = std::fs::read_to_string(&m).unwrap();
    let out = pin();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("upstream `dead`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&m).unwrap(), before);
    let without_dead = before
        .replace(
            "  - name: dead\n    command: [/bin/sh, -c, \"echo this-is-not-json-rpc; echo 'dead: no configuration found' >&2; exit 3\"]\n    unsandboxed: \"reference servers from the test cache, outside any sandbox view (the sandbox has its own tests)\"\n",
            "",
        )
        .replace(
            "  - name: dead.anything\n    tier: low\n    zones: [\"*\"]\n",
            "",
        );
    assert!(!without_dead.contains("dead"), "{without_dead}");
    std::fs::write(&m, without_dead).unwrap();
    let out = pin();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // New pins take a restart: a reload refuses a manifest whose pins changed, so the advice
    // is not SIGHUP.
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("restart") && !said.contains("SIGHUP"),
        "{said}"
    );
    let pinned = std::fs::read_to_string(&m).unwrap();
    assert!(pinned.contains("\nversion: 2\n"), "{pinned}");
    let pin_line = |tool: &str| {
        pinned
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{tool}\":")))
            .unwrap_or_else(|| panic!("no pin for {tool}: {pinned}"))
            .to_owned()
    };
    // What a changed description looks like to the gateway: the listing no longer hashes to the
    // pin. And a tool that appears unpinned.
    let convert = pin_line("get_current_time");
    let tampered = pinned
        .replace(
            &convert,
            &format!("      \"get_current_time\": sha256:{}", "0".repeat(64)),
        )
        .replace(&format!("{}\n", pin_line("get-tiny-image")), "");
    std::fs::write(&m, &tampered).unwrap();

    let s = start_existing(dir.path(), &data, &m);
    let listed = client(&e, &s, "coder-1", &["list"]);
    let tools = listed["tools"].as_array().unwrap();
    assert!(
        !tools.iter().any(|t| t == "time.get_current_time"),
        "{tools:?}"
    );
    assert!(
        !tools.iter().any(|t| t == "everything.get-tiny-image"),
        "{tools:?}"
    );
    assert!(tools.iter().any(|t| t == "everything.echo"), "{tools:?}");
    let r = call(
        &e,
        &s,
        "coder-1",
        "time.get_current_time",
        r#"{"timezone":"UTC"}"#,
    );
    assert_eq!(r["isError"], true);
    assert!(first_text(&r).contains("withdrawn"), "{r}");
    let r = call(
        &e,
        &s,
        "coder-1",
        "everything.echo",
        r#"{"message":"still fine"}"#,
    );
    assert_eq!(r["isError"], false, "{r}");
    drop(s);
    let ledger = ledger_tail(&data, 100);
    assert!(ledger.contains("upstream.tool_changed"), "{ledger}");
    assert!(ledger.contains("upstream.tool_unpinned"), "{ledger}");

    // A changed executable: the upstream does not start, and that is recorded.
    let exe = pinned
        .lines()
        .skip_while(|l| *l != "  \"time\":")
        .find(|l| l.starts_with("    executable: "))
        .unwrap()
        .to_owned();
    std::fs::write(
        &m,
        pinned.replacen(
            &exe,
            &format!("    executable: sha256:{}", "1".repeat(64)),
            1,
        ),
    )
    .unwrap();
    let s = start_existing(dir.path(), &data, &m);
    let listed = client(&e, &s, "coder-1", &["list"]);
    let tools = listed["tools"].as_array().unwrap();
    assert!(
        !tools
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("time.")),
        "{tools:?}"
    );
    drop(s);
    let ledger = ledger_tail(&data, 100);
    assert!(ledger.contains("upstream.binary_changed"), "{ledger}");

    // A pinned file (a package runner's lockfile): `upstreams pin` hashes the files listed
    // under `files`; while the file is unchanged the server starts, and once it changes the
    // server does not start, and that is recorded naming the file.
    let lock = dir.path().join("time.lock");
    std::fs::write(&lock, "mcp-server-time==2026.10.19\n").unwrap();
    let with_files = pinned.replacen(
        "  \"time\":\n",
        &format!(
            "  \"time\":\n    files: {{ \"{}\": sha256:{} }}\n",
            lock.display(),
            "0".repeat(64)
        ),
        1,
    );
    assert_ne!(with_files, pinned);
    std::fs::write(&m, with_files).unwrap();
    let out = pin();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let repinned = std::fs::read_to_string(&m).unwrap();
    assert!(repinned.contains(&lock.display().to_string()), "{repinned}");
    assert!(
        !repinned.contains(&"0".repeat(64)),
        "the file was not hashed"
    );
    let time_listed = |s: &Server| {
        client(&e, s, "coder-1", &["list"])["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("time."))
    };
    let s = start_existing(dir.path(), &data, &m);
    assert!(
        time_listed(&s),
        "the pinned file is unchanged: the server starts"
    );
    drop(s);
    std::fs::write(&lock, "mcp-server-time==6.6.6\n").unwrap();
    let s = start_existing(dir.path(), &data, &m);
    assert!(
        !time_listed(&s),
        "the pinned file changed: the server must not start"
    );
    drop(s);
    let ledger = ledger_tail(&data, 100);
    assert!(
        ledger.contains("upstream.binary_changed") && ledger.contains("time.lock"),
        "{ledger}"
    );
}
