//! The Executor: nothing reaches an upstream without a grant that redeems for exactly that call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use warden_executor::{Call, Config, ExecError, Executor, ManifestClock, Secrets};
use warden_identity::{GrantError, GrantKeys, MemoryReplayGuard};
use warden_ledger::{FileStore, Ledger, LedgerConfig, Mode, NoteSigner};
use warden_manifest::upstream::{Transport, Upstream};
use zeroize::Zeroizing;

const KEY: [u8; 32] = [7; 32];

fn keys() -> GrantKeys {
    GrantKeys::new(1, vec![(1, Zeroizing::new(KEY))]).unwrap()
}

fn ledger(dir: &Path) -> Arc<Ledger> {
    let store = FileStore::open(&dir.join("ledger"), Mode::Write).unwrap();
    let signer = NoteSigner::generate("warden.test/executor").unwrap();
    Arc::new(Ledger::open(Box::new(store), signer, LedgerConfig::default()).unwrap())
}

fn executor(dir: &Path, upstream: Upstream, clock: Arc<ManifestClock>) -> (Executor, Arc<Ledger>) {
    executor_with(dir, upstream, clock, Secrets::default())
}

fn executor_with(
    dir: &Path,
    upstream: Upstream,
    clock: Arc<ManifestClock>,
    secrets: Secrets,
) -> (Executor, Arc<Ledger>) {
    let ledger = ledger(dir);
    let ex = Executor::new(Config {
        upstreams: vec![upstream],
        secrets,
        grants: keys(),
        replay: Box::new(MemoryReplayGuard::new()),
        manifest: clock,
        ledger: Arc::clone(&ledger),
        holds: None,
        sandbox: None,
    })
    .unwrap();
    (ex, ledger)
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// `tool` with `args` decided allowed under `version` (recorded in a scratch ledger: a grant is
/// minted only from a recorded allow).
fn allowed(tool: &str, args: &serde_json::Value, version: u64) -> warden_ledger::Recorded {
    static SCRATCH: std::sync::OnceLock<(tempfile::TempDir, Arc<Ledger>)> =
        std::sync::OnceLock::new();
    let (_, scratch) = SCRATCH.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let l = ledger(dir.path());
        (dir, l)
    });
    let d = warden_core::Decision {
        decision: warden_core::Verdict::Allow,
        rules: Vec::new(),
        policies: Vec::new(),
        reason: String::new(),
        manifest_version: version,
        policy_hash: String::new(),
        escalation: None,
        agent: "a1".into(),
        owner: String::new(),
        tenant: String::new(),
        session: "s1".into(),
        tool: tool.into(),
        operation: warden_core::Operation::Use,
        arguments_hash: warden_core::canonical::json_digest(args),
        decided_at: 0,
        provenance: Vec::new(),
        budget_use: Vec::new(),
    };
    // Off the async runtime the tests run on (the blocking wait would stall it).
    std::thread::scope(|t| {
        t.spawn(|| scratch.record_decision_blocking(d, "", "test", Vec::new()))
            .join()
            .unwrap()
    })
    .unwrap()
}

fn mint(tool: &str, args: &serde_json::Value, version: u64, now: i64, ttl: i64) -> String {
    keys()
        .mint(&allowed(tool, args, version), now, ttl)
        .unwrap()
}

fn call<'a>(
    grant: &'a str,
    tool: &'a str,
    args: &serde_json::Value,
    redact: &'a BTreeSet<String>,
) -> Call<'a> {
    Call {
        grant,
        session: "s1",
        agent: "a1",
        tenant: "t1",
        tool,
        kind: warden_core::ActionKind::Tool,
        operation: warden_core::Operation::Use,
        arguments: args.as_object().unwrap().clone(),
        trace_id: "",
        traceparent: None,
        request_id: "r1",
        redact,
        cancel: tokio_util::sync::CancellationToken::new(),
        progress: None,
        client: None,
    }
}

/// An upstream that, if it were ever started, would leave a marker file.
fn tripwire(dir: &Path) -> Upstream {
    Upstream {
        name: "trip".into(),
        transport: Transport::Stdio {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!("touch {}; exec sleep 30", dir.join("started").display()),
            ],
        },
        env: Default::default(),
        headers: Default::default(),
        timeout_ms: 5_000,
        pins: None,
        sandbox: None,
        unsandboxed: Some("test".into()),
        client_requests: Default::default(),
    }
}

#[tokio::test]
async fn no_grant_that_fails_to_redeem_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManifestClock::new(3));
    let (ex, ledger) = executor(dir.path(), tripwire(dir.path()), Arc::clone(&clock));
    let none = BTreeSet::new();
    let args = serde_json::json!({"path": "/etc/hosts"});
    let now = now_ms();

    // Not a grant at all.
    let e = ex
        .execute(call("forged", "trip.read", &args, &none))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ExecError::Grant(GrantError::Malformed(_))),
        "{e}"
    );

    // A grant made with another key.
    let other = GrantKeys::new(1, vec![(1, Zeroizing::new([8; 32]))])
        .unwrap()
        .mint(&allowed("trip.read", &args, 3), now, 30_000)
        .unwrap();
    let e = ex
        .execute(call(&other, "trip.read", &args, &none))
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::Grant(GrantError::BadMac)), "{e}");

    // A real grant, presented for other arguments or another tool.
    let g = mint("trip.read", &args, 3, now, 30_000);
    let changed = serde_json::json!({"path": "/etc/shadow"});
    let e = ex
        .execute(call(&g, "trip.read", &changed, &none))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ExecError::Grant(GrantError::WrongCall { field: "arguments" })
        ),
        "{e}"
    );
    let e = ex
        .execute(call(&g, "trip.write", &args, &none))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ExecError::Grant(GrantError::WrongCall { field: "tool" })),
        "{e}"
    );

    // Expired, and minted under an older manifest.
    let old = mint("trip.read", &args, 3, now - 60_000, 30_000);
    let e = ex
        .execute(call(&old, "trip.read", &args, &none))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ExecError::Grant(GrantError::Expired { .. })),
        "{e}"
    );
    clock.set(4);
    let e = ex
        .execute(call(&g, "trip.read", &args, &none))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ExecError::Grant(GrantError::ManifestChanged {
                granted: 3,
                current: 4
            })
        ),
        "{e}"
    );

    // No upstream was started by any of it.
    assert!(
        !dir.path().join("started").exists(),
        "an upstream ran without a grant"
    );
    // Each refusal is recorded as a `grant.refused` event, and nothing else is written.
    let mut kinds = Vec::new();
    ledger
        .with_store(|s| {
            s.scan(0, 6, &mut |_, bytes| {
                match warden_ledger::Entry::from_bytes(bytes).unwrap() {
                    warden_ledger::Entry::Event(e) => kinds.push(e.kind),
                    other => panic!("unexpected entry {other:?}"),
                }
                Ok(())
            })
            .map_err(Into::into)
        })
        .unwrap();
    assert_eq!(ledger.size().unwrap(), 6);
    assert!(kinds.iter().all(|k| k == "grant.refused"), "{kinds:?}");
}

/// `mcp-server-time` from the end-to-end virtualenv, unsandboxed.
fn time_upstream(venv: &str) -> Upstream {
    Upstream {
        name: "time".into(),
        transport: Transport::Stdio {
            program: format!("{venv}/bin/mcp-server-time"),
            args: vec!["--local-timezone".into(), "UTC".into()],
        },
        env: Default::default(),
        headers: Default::default(),
        timeout_ms: 20_000,
        pins: None,
        sandbox: None,
        unsandboxed: Some("test".into()),
        client_requests: Default::default(),
    }
}

/// The receipt the ledger holds at `index`.
fn receipt_at(ledger: &Ledger, index: u64) -> warden_ledger::Receipt {
    let mut found = None;
    ledger
        .with_store(|s| {
            s.scan(index, index + 1, &mut |_, bytes| {
                found = Some(warden_ledger::Entry::from_bytes(bytes).unwrap());
                Ok(())
            })
            .map_err(Into::into)
        })
        .unwrap();
    match found {
        Some(warden_ledger::Entry::Receipt(r)) => r,
        other => panic!("no receipt at {index}: {other:?}"),
    }
}

#[tokio::test]
async fn a_granted_call_runs_once_with_a_receipt() {
    let Ok(venv) = std::env::var("WARDEN_E2E_VENV") else {
        eprintln!("notice: WARDEN_E2E_VENV not set: skipping the real-upstream executor test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManifestClock::new(1));
    let time = time_upstream(&venv);
    let (ex, ledger) = executor(dir.path(), time, clock);
    assert!(ex
        .start(std::time::Duration::from_secs(30))
        .await
        .is_empty());
    let tools: Vec<String> = ex.tools().iter().map(|t| t.name.to_string()).collect();
    assert!(
        tools.contains(&"time.get_current_time".to_owned()),
        "{tools:?}"
    );
    let none = BTreeSet::new();
    let args = serde_json::json!({"timezone": "UTC"});
    let g = mint("time.get_current_time", &args, 1, now_ms(), 30_000);
    let done = ex
        .execute(call(&g, "time.get_current_time", &args, &none))
        .await
        .unwrap();
    assert!(matches!(&done.result, warden_executor::Answer::Tool(r) if r.is_error == Some(false)));
    assert_eq!(ledger.size().unwrap(), 1);
    // The receipt cites the result the caller got, in canonical form.
    let receipt = receipt_at(&ledger, done.receipt_index);
    assert_eq!(
        receipt.result_hash,
        warden_core::canonical::json_digest(&done.result.to_value())
    );
    assert_eq!((receipt.redactions, done.redactions), (0, 0));
    let e = ex
        .execute(call(&g, "time.get_current_time", &args, &none))
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::Grant(GrantError::Replayed)), "{e}");
    assert_eq!(
        ledger.size().unwrap(),
        2,
        "a replay runs nothing: one receipt, then one refusal"
    );
    ex.shutdown().await;

    // A result holding a secret's value (here a word the time server always answers with) is
    // redacted, and its receipt cites what was left.
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::from_values(
        [("WORD".to_owned(), Zeroizing::new("datetime".to_owned()))]
            .into_iter()
            .collect(),
    );
    let clock = Arc::new(ManifestClock::new(1));
    let (ex, ledger) = executor_with(dir.path(), time_upstream(&venv), clock, secrets);
    assert!(ex
        .start(std::time::Duration::from_secs(30))
        .await
        .is_empty());
    let g = mint("time.get_current_time", &args, 1, now_ms(), 30_000);
    let done = ex
        .execute(call(&g, "time.get_current_time", &args, &none))
        .await
        .unwrap();
    let shown = done.result.to_value().to_string();
    assert!(
        !shown.contains("datetime") && shown.contains("[REDACTED"),
        "{shown}"
    );
    let receipt = receipt_at(&ledger, done.receipt_index);
    assert!(done.redactions > 0);
    assert_eq!(receipt.redactions, done.redactions);
    assert_eq!(
        receipt.result_hash,
        warden_core::canonical::json_digest(&done.result.to_value())
    );
    ex.shutdown().await;
}

/// A stdio MCP server (plain JSON-RPC lines) given the secret `TOKEN`: it prints the secret into
/// a tool's description, names another tool after it, writes bytes that are not UTF-8 to its
/// stderr when it starts, and a stderr line at each call (which kills it if nobody reads its
/// stderr any more: Python raises on the closed pipe).
const LEAKY: &str = r#"
import json, os, sys
token = os.environ["TOKEN"]
sys.stderr.buffer.write(b"\xff\xfe starting\n")
sys.stderr.flush()
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "leaky", "version": "1"}}
    elif m["method"] == "tools/list":
        r = {"tools": [
            {"name": "query", "description": "runs SQL on postgres://app:" + token + "@db/prod",
             "inputSchema": {"type": "object"}},
            {"name": "q_" + token, "description": "named after the secret",
             "inputSchema": {"type": "object"}},
        ]}
    elif m["method"] == "tools/call":
        sys.stderr.write("serving a call\n")
        sys.stderr.flush()
        r = {"content": [{"type": "text", "text": "done"}]}
    else:
        r = {}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// What an upstream lists reaches agents without the secrets Warden gave it: a description is
/// redacted, a tool named after a secret is withheld and recorded (the record without the
/// secret). And an upstream whose stderr is not UTF-8 still has it read: its calls run.
#[tokio::test]
async fn an_upstreams_tools_are_listed_redacted_and_its_stderr_read_whatever_it_holds() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("notice: no python3; skipping the leaky-upstream test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("leaky.py");
    std::fs::write(&script, LEAKY).unwrap();
    let secret = "s3cr3t-Value-4821";
    let secrets = Secrets::from_values(
        [("TOK".to_owned(), Zeroizing::new(secret.to_owned()))]
            .into_iter()
            .collect(),
    );
    let upstream = Upstream {
        name: "leaky".into(),
        transport: Transport::Stdio {
            program: "python3".into(),
            args: vec![script.display().to_string()],
        },
        env: [(
            "TOKEN".to_owned(),
            warden_manifest::upstream::parse_template("${secret:TOK}").unwrap(),
        )]
        .into_iter()
        .collect(),
        headers: Default::default(),
        timeout_ms: 10_000,
        pins: None,
        sandbox: None,
        unsandboxed: Some("test".into()),
        client_requests: Default::default(),
    };
    let clock = Arc::new(ManifestClock::new(1));
    let (ex, ledger) = executor_with(dir.path(), upstream, clock, secrets);
    let down = ex.start(std::time::Duration::from_secs(30)).await;
    assert!(down.is_empty(), "{down:?}");
    let tools = ex.tools();
    let listed = serde_json::to_string(&tools).unwrap();
    assert!(!listed.contains(secret), "{listed}");
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["leaky.query"]);
    assert!(listed.contains("postgres://app:[REDACTED"), "{listed}");
    let mut texts = Vec::new();
    ledger
        .with_store(|s| {
            s.scan(0, u64::MAX, &mut |_, b| {
                texts.push(String::from_utf8_lossy(b).into_owned());
                Ok(())
            })
            .map_err(Into::into)
        })
        .unwrap();
    assert!(
        texts.iter().any(|t| t.contains("upstream.tool_withheld")),
        "{texts:?}"
    );
    assert!(texts.iter().all(|t| !t.contains(secret)), "{texts:?}");
    let none = BTreeSet::new();
    let args = serde_json::json!({});
    let g = mint("leaky.query", &args, 1, now_ms(), 30_000);
    let done = ex.execute(call(&g, "leaky.query", &args, &none)).await;
    assert!(
        matches!(&done, Ok(d) if matches!(&d.result, warden_executor::Answer::Tool(r) if r.is_error != Some(true))),
        "{done:?}"
    );
    ex.shutdown().await;
}

/// The `redact` fuzz target's seeds (and some hostile inputs) replay here: no panic, and the
/// secret never survives.
#[test]
fn redaction_of_hostile_output_never_panics_nor_lets_the_secret_through() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/redact");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(seeds)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty());
    let secret = warden_executor::fuzz::SECRET;
    inputs.push(format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes());
    inputs.push(format!("\"{}\"", secret.replace('/', "\\u002f")).into_bytes());
    inputs.push(format!("{{\"{secret}\": [\"{secret}{secret}\"]}}").into_bytes());
    inputs.push(vec![0xff, 0xfe, b'{']);
    inputs.push(secret.repeat(10_000).into_bytes());
    for input in inputs {
        let out = warden_executor::fuzz::redact(&input);
        assert!(!out.contains(secret), "{out}");
    }
}
