//! The HTTP and admin APIs, served for real on loopback ports over a Runtime assembled as
//! `warden serve` assembles it (the starter bundle, the embedded backends, the Executor with
//! the starter's demo upstream run by this build's `warden`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warden_gateway::native_api::serve;
use warden_runtime::{Backends, Config, Runtime};

async fn start(dir: &Path) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    warden_runtime::starter::write(dir).unwrap();
    serve_app(dir, None).await
}

/// The Runtime's configuration over `dir`, its upstreams run by this build's `warden`.
fn config(dir: &Path) -> Config {
    Config::embedded(dir, env!("CARGO_BIN_EXE_warden").into())
}

/// Assembles and starts the Runtime over the manifest already in `dir`, as `warden serve`
/// does; over `ledger` instead of the embedded one when given.
async fn runtime(dir: &Path, ledger: Option<warden_ledger::Ledger>) -> Runtime {
    let config = config(dir);
    let runtime = tokio::task::spawn_blocking(move || match ledger {
        None => Runtime::open(config),
        Some(ledger) => {
            let backends = Backends::embedded(&config)?;
            Runtime::assemble(config, Backends { ledger, ..backends })
        }
    })
    .await
    .unwrap()
    .unwrap();
    let down = runtime.start(std::time::Duration::from_secs(30)).await;
    assert!(down.is_empty(), "{down:?}");
    runtime
}

/// Serves the API over the manifest already in `dir` (and `ledger`, if given).
async fn serve_app(
    dir: &Path,
    ledger: Option<warden_ledger::Ledger>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = runtime(dir, ledger).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// Serves the admin API of `runtime`; its address and the admin token's header.
async fn serve_admin(runtime: &Runtime, dir: &Path) -> (SocketAddr, Vec<(&'static str, String)>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let adm = l.local_addr().unwrap();
    tokio::spawn(warden_gateway::operator_api::serve(
        l,
        runtime.operator(),
        std::future::pending(),
    ));
    let token = warden_runtime::operator::read_token(dir).unwrap();
    (
        adm,
        vec![("authorization", format!("Bearer {}", token.trim()))],
    )
}

/// Every entry of the embedded ledger in `dir`, as JSON text.
fn ledger_texts(dir: &Path) -> Vec<String> {
    let mut store =
        warden_ledger::FileStore::open(&dir.join("ledger"), warden_ledger::Mode::ReadOnly).unwrap();
    let mut out = Vec::new();
    warden_ledger::LedgerStore::scan(&mut store, 0, u64::MAX, &mut |_, b| {
        out.push(String::from_utf8(b.to_vec()).unwrap());
        Ok(())
    })
    .unwrap();
    out
}

/// Sends one HTTP/1.1 request and returns (status, body).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    send(addr, method, path, &[], body).await
}

/// Sends one HTTP/1.1 request with extra headers and returns (status, body).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn decides_over_http_and_survives_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start(dir.path()).await;

    assert_eq!(request(addr, "GET", "/healthz", b"").await.0, 200);
    let (status, body) = request(addr, "GET", "/v1/manifest", b"").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"manifest_version\":1"), "{body}");

    let allow =
        br#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    let (status, body) = request(addr, "POST", "/v1/decide", allow).await;
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["decision"], "allow");
    // A dry run, and it says so: no ledger entry, no grant.
    assert_eq!(d["dry_run"], true, "{body}");
    assert!(d["note"].as_str().unwrap().contains("nothing was charged"));
    assert!(
        d.get("ledger_index").is_none() && d.get("grant").is_none(),
        "{body}"
    );

    let (status, body) = request(
        addr,
        "POST",
        "/v1/decide",
        br#"{"agent":"coder-1","session":"s","tool":"x"}"#,
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("tool.unknown"));

    // Malformed, truncated, deeply nested and oversized bodies: a clear 4xx, never a crash.
    let (status, body) = request(addr, "POST", "/v1/decide", b"{\"agent\":").await;
    assert_eq!(status, 400);
    assert!(body.contains("EOF"), "{body}");
    let deep = format!(
        "{{\"agent\":\"a\",\"session\":\"s\",\"tool\":\"t\",\"arguments\":{{\"x\":{}}}}}",
        "[".repeat(10_000)
    );
    let (status, body) = request(addr, "POST", "/v1/decide", deep.as_bytes()).await;
    assert_eq!(status, 400);
    assert!(body.contains("recursion limit"), "{body}");
    let huge = vec![b'x'; (1 << 20) + 1];
    let (status, _) = request(addr, "POST", "/v1/decide", &huge).await;
    assert_eq!(status, 413);

    // Still serving.
    let (status, body) = request(addr, "POST", "/v1/decide", allow).await;
    assert_eq!(status, 200, "{body}");
    let _ = stop.send(());
}

/// Anyone on the host can name any agent to `/v1/decide`: it must spend none of the agent's
/// limits, feed no loop detector and record nothing in its name. (That it scans an egress
/// tool's arguments as the governed path does is checked end to end, where there is an
/// Executor with secrets: `tests/mcp` in warden-cli.)
#[tokio::test]
async fn a_dry_run_spends_nothing_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = warden_runtime::starter::write(dir.path()).unwrap();
    // Agents may make 3 calls of the low tier an hour.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let limited = text.replacen("rate: 100/h", "rate: 3/h", 1);
    assert_ne!(limited, text);
    std::fs::write(&manifest, limited).unwrap();
    let (addr, _stop) = serve_app(dir.path(), None).await;
    let call =
        br#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    // Ten identical dry runs: more than the limit, more than the loop detector's repeats.
    for _ in 0..10 {
        let (status, body) = request(addr, "POST", "/v1/decide", call).await;
        assert_eq!(status, 200, "{body}");
    }
    let decisions = |dir: &Path| {
        ledger_texts(dir)
            .iter()
            .filter(|t| t.contains("\"type\":\"decision\""))
            .count()
    };
    assert_eq!(decisions(dir.path()), 0, "a dry run was recorded");
    // The agent's own, governed calls still have their whole allowance, and run.
    let agent = SignedAgent::enroll(addr, dir.path(), "coder-1").await;
    for i in 0..3 {
        let body = format!(
            r#"{{"agent":"coder-1","session":"s","tool":"demo.echo","arguments":{{"text":"{i}"}}}}"#
        );
        let (status, resp) = agent.propose(addr, body.as_bytes()).await;
        assert_eq!(status, 200, "{resp}");
    }
    assert_eq!(decisions(dir.path()), 3);
}

/// Every decision lands in the ledger, which verifies with the public key alone.
#[tokio::test]
async fn decisions_are_recorded_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _stop) = start(dir.path()).await;
    let agent = SignedAgent::enroll(addr, dir.path(), "coder-1").await;
    let secret = "sk-live-0123456789abcdef";
    for i in 0..5 {
        // Distinct texts: identical calls would trip the loop breaker.
        let call = format!(
            r#"{{"agent":"coder-1","session":"s","tool":"demo.echo","arguments":{{"text":"{secret}/{i}"}}}}"#
        );
        let (status, resp) = agent.propose(addr, call.as_bytes()).await;
        assert_eq!(status, 200, "{resp}");
        assert!(resp.contains("receipt_index"), "{resp}");
    }
    let texts = ledger_texts(dir.path());
    let decisions: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("\"type\":\"decision\""))
        .collect();
    let receipts = texts
        .iter()
        .filter(|t| t.contains("\"type\":\"receipt\""))
        .count();
    assert_eq!((decisions.len(), receipts), (5, 5), "{texts:?}");
    let last = decisions.last().unwrap();
    assert!(
        last.contains("\"decision\":\"allow\"")
            && last.contains("\"lineage\":[\"alice@acme.example\",\"coder-1\"]"),
        "{last}"
    );
    assert!(texts.iter().all(|t| !t.contains(secret)), "{texts:?}");
    // The whole log verifies with the public key alone.
    let verifier =
        warden_runtime::witness::load_verifier(&warden_runtime::witness::pub_path(dir.path()))
            .unwrap();
    let mut store =
        warden_ledger::FileStore::open(&dir.path().join("ledger"), warden_ledger::Mode::ReadOnly)
            .unwrap();
    let report = warden_ledger::verify::verify_store(&mut store, &verifier, None, true).unwrap();
    assert_eq!(report.entries, texts.len() as u64);
    // The key file is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(warden_runtime::witness::key_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A ledger store that works until `broken` is set, then fails every append: a ledger whose
/// disk or database went away while the gateway runs.
struct Breakable {
    inner: warden_ledger::FileStore,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Breakable {
    /// A store in `dir/other-ledger`, working until the switch returned is set, and a signer
    /// for its ledger.
    fn open(
        dir: &Path,
    ) -> (
        Breakable,
        Arc<std::sync::atomic::AtomicBool>,
        warden_ledger::NoteSigner,
    ) {
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = Breakable {
            inner: warden_ledger::FileStore::open(
                &dir.join("other-ledger"),
                warden_ledger::Mode::Write,
            )
            .unwrap(),
            broken: Arc::clone(&broken),
        };
        let signer = warden_ledger::NoteSigner::generate("warden.test/breakable").unwrap();
        (store, broken, signer)
    }
}

impl warden_ledger::LedgerStore for Breakable {
    fn append(
        &mut self,
        entries: &[Vec<u8>],
    ) -> Result<warden_ledger::store::Appended, warden_ledger::StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(warden_ledger::StoreError::Postgres(
                "connection refused".into(),
            ));
        }
        self.inner.append(entries)
    }
    fn prepare_checkpoint(&mut self) -> Result<(), warden_ledger::StoreError> {
        self.inner.prepare_checkpoint()
    }
    fn size(&mut self) -> Result<u64, warden_ledger::StoreError> {
        self.inner.size()
    }
    fn scan(
        &mut self,
        from: u64,
        to: u64,
        visit: &mut warden_ledger::store::Visit<'_>,
    ) -> Result<(), warden_ledger::StoreError> {
        self.inner.scan(from, to, visit)
    }
    fn nodes(
        &mut self,
        ids: &[warden_ledger::merkle::NodeId],
    ) -> Result<Vec<warden_ledger::merkle::Hash>, warden_ledger::StoreError> {
        self.inner.nodes(ids)
    }
    fn checkpointer(
        &mut self,
    ) -> Result<Box<dyn warden_ledger::store::Checkpointer>, warden_ledger::StoreError> {
        self.inner.checkpointer()
    }
    fn latest_checkpoint(&mut self) -> Result<Option<String>, warden_ledger::StoreError> {
        self.inner.latest_checkpoint()
    }
    fn describe(&self) -> String {
        "breakable".into()
    }
}

/// The embedded state store, whose `clear_hold` fails for quarantines: a store that fails
/// part way through a resume (a Redis dropping its connection between two writes cannot be
/// timed from a test).
struct QuarantineWontClear(Arc<dyn warden_core::state::StateStore>);

impl warden_core::state::StateStore for QuarantineWontClear {
    fn check_and_charge(
        &self,
        charges: &[warden_core::state::Charge],
        now: warden_core::time::UnixSeconds,
    ) -> Result<warden_core::state::ChargeOutcome, warden_core::state::StateError> {
        self.0.check_and_charge(charges, now)
    }
    fn observe_call(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: warden_core::time::UnixSeconds,
        ttl: i64,
    ) -> Result<u32, warden_core::state::StateError> {
        self.0.observe_call(session, fingerprint, now, ttl)
    }
    fn settle(
        &self,
        s: &warden_core::state::Settle<'_>,
    ) -> Result<warden_core::state::Settled, warden_core::state::StateError> {
        self.0.settle(s)
    }
    fn holds(
        &self,
        scopes: &[warden_core::state::HoldScope],
    ) -> Result<Vec<warden_core::state::Hold>, warden_core::state::StateError> {
        self.0.holds(scopes)
    }
    fn set_hold(
        &self,
        hold: warden_core::state::Hold,
    ) -> Result<(), warden_core::state::StateError> {
        self.0.set_hold(hold)
    }
    fn clear_hold(
        &self,
        scope: &warden_core::state::HoldScope,
        kind: warden_core::state::HoldKind,
    ) -> Result<bool, warden_core::state::StateError> {
        if kind == warden_core::state::HoldKind::Quarantine {
            return Err(warden_core::state::StateError::Unavailable(
                "the store went away".into(),
            ));
        }
        self.0.clear_hold(scope, kind)
    }
    fn all_holds(&self) -> Result<Vec<warden_core::state::Hold>, warden_core::state::StateError> {
        self.0.all_holds()
    }
}

/// A resume the state store fails part way through is refused and leaves the kill in force:
/// the holds are lifted the strongest last (before, the kill went first, and the resume then
/// failed with the kill lifted and nothing recorded).
#[tokio::test]
async fn a_resume_that_fails_part_way_leaves_the_kill_in_force() {
    use warden_core::state::{HoldKind, HoldScope};
    use warden_runtime::operator::Brake;
    let dir = tempfile::tempdir().unwrap();
    warden_runtime::starter::write(dir.path()).unwrap();
    let config = config(dir.path());
    let runtime = tokio::task::spawn_blocking(move || {
        let backends = Backends::embedded(&config)?;
        let state = Arc::new(QuarantineWontClear(backends.state.clone()));
        Runtime::assemble(config, Backends { state, ..backends })
    })
    .await
    .unwrap()
    .unwrap();
    let operator = runtime.operator();
    let agent = HoldScope::Agent("coder-1".into());
    operator
        .brake(Brake::Kill, &agent, "incident")
        .await
        .unwrap();
    let resumed = operator.brake(Brake::Resume, &agent, "").await;
    assert!(resumed.is_err(), "{resumed:?}");
    let kinds: Vec<HoldKind> = operator
        .holds()
        .unwrap()
        .into_iter()
        .filter(|h| h.scope == agent)
        .map(|h| h.kind)
        .collect();
    assert_eq!(kinds, [HoldKind::Kill]);
    runtime.shutdown().await;
}

/// A demoted agent restored by the operator while the ledger cannot record: the restoration
/// is refused and undone (the agent stays demoted), not left standing with no record.
#[tokio::test]
async fn a_restoration_the_ledger_cannot_record_is_undone() {
    use warden_core::state::{Hold, HoldKind, HoldScope};
    let dir = tempfile::tempdir().unwrap();
    let (store, broken, signer) = Breakable::open(dir.path());
    warden_runtime::starter::write(dir.path()).unwrap();
    let config = config(dir.path());
    let (runtime, state) = tokio::task::spawn_blocking(move || {
        let ledger =
            warden_ledger::Ledger::open(Box::new(store), signer, Default::default()).unwrap();
        let backends = Backends::embedded(&config).unwrap();
        let state = backends.state.clone();
        let runtime = Runtime::assemble(config, Backends { ledger, ..backends }).unwrap();
        (runtime, state)
    })
    .await
    .unwrap();
    let agent = HoldScope::Agent("coder-1".into());
    state
        .set_hold(Hold {
            scope: agent.clone(),
            kind: HoldKind::Demote,
            reason: "its breaker tripped".into(),
            since: warden_runtime::now_unix(),
        })
        .unwrap();
    let demoted = || {
        state
            .holds(std::slice::from_ref(&agent))
            .unwrap()
            .iter()
            .any(|h| h.kind == HoldKind::Demote)
    };
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = runtime.operator().promote("coder-1").await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("stays demoted")),
        "{refused:?}"
    );
    assert!(demoted());
    // Recorded, it stands.
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let restored = runtime.operator().promote("coder-1").await;
    assert!(restored.is_ok(), "{restored:?}");
    assert!(!demoted());
    runtime.shutdown().await;
}

/// INV-003: when the ledger cannot record, an allowed call is answered as a deny (503).
#[tokio::test]
async fn unrecordable_decision_is_a_deny() {
    let dir = tempfile::tempdir().unwrap();
    let (store, broken, signer) = Breakable::open(dir.path());
    let ledger = tokio::task::spawn_blocking(move || {
        warden_ledger::Ledger::open(Box::new(store), signer, Default::default()).unwrap()
    })
    .await
    .unwrap();
    warden_runtime::starter::write(dir.path()).unwrap();
    let (addr, stop) = serve_app(dir.path(), Some(ledger)).await;
    let agent = SignedAgent::enroll(addr, dir.path(), "coder-1").await;
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let allow = br#"{"agent":"coder-1","session":"s","tool":"demo.echo","arguments":{"text":"a"}}"#;
    let (status, body) = agent.propose(addr, allow).await;
    assert_eq!(status, 503, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["rules"][0], "ledger.unavailable");
    assert!(
        d["reason"].as_str().unwrap().contains("do not execute"),
        "{body}"
    );
    let _ = stop.send(());
}

/// A POST with extra headers.
async fn request_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    send(addr, "POST", path, headers, body).await
}

fn signed_to(
    path: &str,
    key: &ed25519_dalek::SigningKey,
    token: &str,
    body: &[u8],
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let cred = warden_identity::Credential::from_token(token).unwrap();
    let (digest, input, sig) = warden_identity::request::sign(
        key,
        &cred.body.id,
        "POST",
        path,
        body,
        warden_runtime::now_unix(),
        nonce,
    );
    vec![
        ("warden-credential", token.to_string()),
        ("content-digest", digest),
        ("signature-input", input),
        ("signature", sig),
    ]
}

/// Opens `session` and returns its lineage token.
async fn open_session(
    addr: SocketAddr,
    key: &ed25519_dalek::SigningKey,
    token: &str,
    session: &str,
    nonce: &str,
) -> String {
    let body = format!(r#"{{"session":"{session}"}}"#);
    let h = signed_to("/v1/sessions", key, token, body.as_bytes(), nonce);
    let (status, resp) = request_with(addr, "/v1/sessions", &h, body.as_bytes()).await;
    assert_eq!(status, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    v["lineage"].as_str().unwrap().to_string()
}

/// Headers of a signed proposal carrying `lineage`.
fn signed(
    key: &ed25519_dalek::SigningKey,
    token: &str,
    lineage: &str,
    body: &[u8],
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let mut h = signed_to("/v1/proposals", key, token, body, nonce);
    h.push(("warden-lineage", lineage.to_string()));
    h
}

/// An enrolled agent with session `s` open, proposing over the signed API (`/v1/proposals`).
struct SignedAgent {
    key: ed25519_dalek::SigningKey,
    token: String,
    lineage: String,
    nonce: std::sync::atomic::AtomicU32,
}

impl SignedAgent {
    /// Enrols `agent` into the data directory `dir` and opens session `s` at `addr`.
    async fn enroll(addr: SocketAddr, dir: &Path, agent: &str) -> SignedAgent {
        let manifest = warden_runtime::bundle::load_manifest(&dir.join("manifest.yaml")).unwrap();
        let now = warden_runtime::now_unix();
        let cred = warden_runtime::agents::enroll(dir, &manifest, agent, now, 3600).unwrap();
        let token = std::fs::read_to_string(&cred).unwrap().trim().to_string();
        let key = warden_runtime::agents::agent_key(&cred.with_extension("key")).unwrap();
        let lineage = open_session(addr, &key, &token, "s", "open-s").await;
        SignedAgent {
            key,
            token,
            lineage,
            nonce: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Posts the signed proposal `body`; (status, body).
    async fn propose(&self, addr: SocketAddr, body: &[u8]) -> (u16, String) {
        self.propose_with(addr, body, &[]).await
    }

    /// [`SignedAgent::propose`] with more headers.
    async fn propose_with(
        &self,
        addr: SocketAddr,
        body: &[u8],
        more: &[(&'static str, String)],
    ) -> (u16, String) {
        let n = self
            .nonce
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut h = signed(
            &self.key,
            &self.token,
            &self.lineage,
            body,
            &format!("p-{n}"),
        );
        h.extend(more.iter().cloned());
        request_with(addr, "/v1/proposals", &h, body).await
    }
}

/// A client that hangs up on `/v1/proposals` while its allowed call runs: the server drops the
/// request, but not the call half way (it ran on with no receipt, out of the kill switch's
/// reach). The call is cancelled, as an MCP client's cancellation cancels it, and its receipt
/// says so at once, long before the upstream would have finished. The upstream is the reference
/// `server-everything` (its long-running operation), from `.ci/run`'s cache.
#[tokio::test]
async fn a_client_that_hangs_up_mid_call_leaves_it_cancelled_and_recorded() {
    let Ok(npm) = std::env::var("WARDEN_E2E_NPM") else {
        eprintln!("notice: WARDEN_E2E_NPM is not set; skipping the hang-up test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    warden_runtime::starter::write(dir.path()).unwrap();
    let m = dir.path().join("manifest.yaml");
    let tool = "everything.trigger-long-running-operation";
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replacen(
            "\ntools:\n",
            &format!("\ntools:\n  - {{ name: {tool}, tier: low, zones: [\"*\"], arguments: {{ type: object }} }}\n"),
            1,
        )
        .replacen(
            "\nupstreams:\n",
            &format!(
                "\nupstreams:\n  - name: everything\n    command: [\"{npm}/node_modules/.bin/mcp-server-everything\", stdio]\n    unsandboxed: \"a reference server from the test cache\"\n"
            ),
            1,
        );
    std::fs::write(&m, text).unwrap();
    let (addr, _stop) = serve_app(dir.path(), None).await;
    let agent = SignedAgent::enroll(addr, dir.path(), "coder-1").await;
    let body = format!(
        r#"{{"agent":"coder-1","session":"s","tool":"{tool}","arguments":{{"duration":30,"steps":30}}}}"#
    );
    let caller = tokio::spawn(async move { agent.propose(addr, body.as_bytes()).await });
    // The call is decided (allowed, recorded) and running upstream; then the client is gone.
    let entries_of = |kind: &str| {
        ledger_texts(dir.path())
            .into_iter()
            .filter(|t| t.contains(kind) && t.contains(tool))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while entries_of("\"type\":\"decision\"").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the call was not decided"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    caller.abort();
    let hung_up = std::time::Instant::now();
    let receipt = loop {
        if let Some(r) = entries_of("\"type\":\"receipt\"").pop() {
            break r;
        }
        assert!(
            hung_up.elapsed() < std::time::Duration::from_secs(10),
            "no receipt 10 s after the client hung up: {:?}",
            entries_of(tool)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(receipt.contains("\"status\":\"killed\""), "{receipt}");
}

/// The native API: an enrolled agent's signed proposal is decided and recorded with its
/// lineage; replayed, forged, mismatched and revoked requests are refused.
#[tokio::test]
async fn signed_proposals_from_enrolled_agents() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start(dir.path()).await;
    let manifest =
        warden_runtime::bundle::load_manifest(&dir.path().join("manifest.yaml")).unwrap();
    let now = warden_runtime::now_unix();
    let cred_path =
        warden_runtime::agents::enroll(dir.path(), &manifest, "coder-1", now, 3600).unwrap();
    let token = std::fs::read_to_string(&cred_path)
        .unwrap()
        .trim()
        .to_string();
    let key = warden_runtime::agents::agent_key(&cred_path.with_extension("key")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(cred_path.with_extension("key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let lineage = open_session(addr, &key, &token, "s", "n-0").await;
    let body = br#"{"agent":"coder-1","session":"s","tool":"demo.echo","arguments":{"text":"hi"}}"#;
    let h = signed(&key, &token, &lineage, body, "n-1");
    let (status, resp) = request_with(addr, "/v1/proposals", &h, body).await;
    assert_eq!(status, 200, "{resp}");
    // Allowed and run down the governed path: the answer is the result and its receipt, never
    // the grant (the agent never holds one).
    let d: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["result"]["content"][0]["text"], "hi", "{d}");
    assert!(
        d["receipt_index"].is_u64() && d.get("grant").is_none(),
        "{d}"
    );
    // Recorded with the lineage: the owner, then the chain down to the caller.
    let texts = ledger_texts(dir.path());
    let entry = texts
        .iter()
        .find(|t| t.contains("\"type\":\"decision\""))
        .unwrap();
    assert!(
        entry.contains(r#""lineage":["alice@acme.example","coder-1"]"#),
        "{entry}"
    );
    // Replayed: refused.
    let (status, resp) = request_with(addr, "/v1/proposals", &h, body).await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("replayed"), "{resp}");
    // Body altered after signing.
    let other = br#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/etc/shadow"}}"#;
    let (status, resp) = request_with(
        addr,
        "/v1/proposals",
        &signed(&key, &token, &lineage, body, "n-2"),
        other,
    )
    .await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("content-digest"), "{resp}");
    // Signed with another key.
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let (status, resp) = request_with(
        addr,
        "/v1/proposals",
        &signed(&rogue, &token, &lineage, body, "n-3"),
        body,
    )
    .await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("does not verify"), "{resp}");
    // No credential.
    let (status, _) = request_with(addr, "/v1/proposals", &[], body).await;
    assert_eq!(status, 401);
    // Speaking for another agent.
    let as_ops =
        br#"{"agent":"ops-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    let (status, resp) = request_with(
        addr,
        "/v1/proposals",
        &signed(&key, &token, &lineage, as_ops, "n-4"),
        as_ops,
    )
    .await;
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains("identity.mismatch"), "{resp}");
    // A delegated credential for a sub-agent the manifest does not list: refused before
    // anything is decided (the Governor decides by the manifest's entry for that name).
    let helper_key = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
    let parent = warden_identity::Credential::from_token(&token).unwrap();
    let child = parent
        .derive(
            &key,
            warden_identity::CredentialBody {
                id: String::new(),
                agent: "coder-1.helper".into(),
                tools: Some(["fs.read_file".to_string()].into_iter().collect()),
                expires_at: now + 60,
                subject_key: warden_identity::credential::encode_key(&helper_key.verifying_key()),
                ..parent.body.clone()
            },
        )
        .unwrap();
    let child_token = child.to_token().unwrap();
    let open = br#"{"session":"h"}"#;
    let h = signed_to("/v1/sessions", &helper_key, &child_token, open, "h-0");
    let (status, resp) = request_with(addr, "/v1/sessions", &h, open).await;
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains("identity.not_in_manifest"), "{resp}");
    // No lineage: refused (and nothing revoked).
    let h = signed_to("/v1/proposals", &key, &token, body, "n-6");
    let (status, resp) = request_with(addr, "/v1/proposals", &h, body).await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("lineage.missing"), "{resp}");
    // A lineage presented for another session: denied, the agent revoked, the event recorded.
    let elsewhere =
        br#"{"agent":"coder-1","session":"other","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    let h = signed(&key, &token, &lineage, elsewhere, "n-7");
    let (status, resp) = request_with(addr, "/v1/proposals", &h, elsewhere).await;
    assert_eq!(status, 403, "{resp}");
    assert!(
        resp.contains("lineage.mismatch") && resp.contains("revoked"),
        "{resp}"
    );
    // From now on every request of that agent is refused.
    let h = signed(&key, &token, &lineage, body, "n-5");
    let (status, resp) = request_with(addr, "/v1/proposals", &h, body).await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("revoked"), "{resp}");
    let revoked = std::fs::read_to_string(dir.path().join("revoked")).unwrap();
    let cred_id = warden_identity::Credential::from_token(&token)
        .unwrap()
        .body
        .id;
    assert_eq!(revoked, format!("agent coder-1\ncredential {cred_id}\n"));
    let mut store =
        warden_ledger::FileStore::open(&dir.path().join("ledger"), warden_ledger::Mode::ReadOnly)
            .unwrap();
    let mut kinds = Vec::new();
    warden_ledger::LedgerStore::scan(&mut store, 0, u64::MAX, &mut |_, b| {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        kinds.push(format!("{}:{}", v["type"], v["kind"]));
        Ok(())
    })
    .unwrap();
    assert!(
        kinds.iter().any(|k| k.contains("lineage.mismatch")),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k.contains("request.refused")),
        "{kinds:?}"
    );

    // Revocation through `warden agents revoke` (the file) reaches a running gateway.
    let ops = warden_runtime::agents::enroll(dir.path(), &manifest, "ops-1", now, 3600).unwrap();
    let ops_token = std::fs::read_to_string(&ops).unwrap().trim().to_string();
    let ops_key = warden_runtime::agents::agent_key(&ops.with_extension("key")).unwrap();
    let ops_lineage = open_session(addr, &ops_key, &ops_token, "o", "o-0").await;
    warden_runtime::agents::revoke(dir.path(), None, "agent", "ops-1").unwrap();
    let ops_body =
        br#"{"agent":"ops-1","session":"o","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    let h = signed(&ops_key, &ops_token, &ops_lineage, ops_body, "o-1");
    let (status, resp) = request_with(addr, "/v1/proposals", &h, ops_body).await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("revoked"), "{resp}");
    let _ = stop.send(());
}

/// Rotating the Governor key: old credentials keep verifying, new ones use the new key, and the
/// rotation lands in the ledger.
#[test]
fn governor_key_rotation_is_verifiable_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = warden_runtime::starter::write(dir.path()).unwrap();
    let manifest = warden_runtime::bundle::load_manifest(&manifest_path).unwrap();
    let now = warden_runtime::now_unix();
    let ledger = warden_runtime::witness::open_ledger(
        dir.path(),
        None,
        &Default::default(),
        Default::default(),
    )
    .unwrap();
    warden_runtime::agents::record_key_changes(dir.path(), &ledger, now).unwrap();
    let old = warden_runtime::agents::enroll(dir.path(), &manifest, "coder-1", now, 3600).unwrap();
    let old_token = std::fs::read_to_string(&old).unwrap().trim().to_string();
    let (old_kid, new_kid) = warden_runtime::agents::rotate_governor(dir.path()).unwrap();
    assert_ne!(old_kid, new_kid);
    let state = warden_runtime::agents::IdentityState::open(dir.path()).unwrap();
    state.verifier.verify_token(&old_token, now).unwrap();
    let new = warden_runtime::agents::enroll(dir.path(), &manifest, "ops-1", now, 3600).unwrap();
    let new_token = std::fs::read_to_string(&new).unwrap().trim().to_string();
    let cred = warden_identity::Credential::from_token(&new_token).unwrap();
    assert_eq!(cred.body.issuer, format!("governor:{new_kid}"));
    state.verifier.verify_token(&new_token, now).unwrap();
    warden_runtime::agents::record_key_changes(dir.path(), &ledger, now).unwrap();
    // Recorded once: a second start records nothing new.
    warden_runtime::agents::record_key_changes(dir.path(), &ledger, now).unwrap();
    assert_eq!(ledger.size().unwrap(), 2);
    let text = ledger
        .with_store(|s| Ok(warden_ledger::store::read_entry(s, 1)?))
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("key.rotated") && text.contains(&old_kid) && text.contains(&new_kid),
        "{text}"
    );
    // The old private key is gone: only its public half is kept.
    let retired = std::fs::read_to_string(dir.path().join("keys/governor.retired")).unwrap();
    assert!(retired.starts_with(&old_kid));

    // The grant key: a grant made before the rotation still verifies; new grants use the new
    // key; a second rotation drops the oldest key; each rotation is recorded.
    let allowed = warden_core::Decision {
        decision: warden_core::Verdict::Allow,
        rules: Vec::new(),
        policies: Vec::new(),
        reason: String::new(),
        manifest_version: 1,
        policy_hash: String::new(),
        escalation: None,
        agent: "coder-1".into(),
        owner: String::new(),
        tenant: String::new(),
        session: "s".into(),
        tool: "fs.read_file".into(),
        operation: warden_core::Operation::Use,
        arguments_hash: "sha256:aa".into(),
        decided_at: 0,
        provenance: Vec::new(),
        budget_use: Vec::new(),
    };
    let recorded = ledger
        .record_decision_blocking(allowed, "", "test", Vec::new())
        .unwrap();
    let before = warden_runtime::agents::grant_keys(dir.path()).unwrap();
    let g1 = before.mint(&recorded, 0, 30_000).unwrap();
    assert_eq!(
        warden_runtime::agents::rotate_grant(dir.path()).unwrap(),
        (1, 2)
    );
    let after = warden_runtime::agents::grant_keys(dir.path()).unwrap();
    assert_eq!(after.open(&g1).unwrap().key_id, 1);
    let g2 = after.mint(&recorded, 0, 30_000).unwrap();
    assert_eq!(after.open(&g2).unwrap().key_id, 2);
    warden_runtime::agents::record_key_changes(dir.path(), &ledger, now).unwrap();
    assert_eq!(ledger.size().unwrap(), 4);
    assert_eq!(
        warden_runtime::agents::rotate_grant(dir.path()).unwrap(),
        (2, 3)
    );
    let latest = warden_runtime::agents::grant_keys(dir.path()).unwrap();
    assert!(
        latest.open(&g1).is_err(),
        "the oldest grant key should be gone"
    );
    assert!(latest.open(&g2).is_ok());
}

/// A new manifest version is swapped in whole while decisions run on other threads: each
/// decision cites the version it ran under and behaves accordingly; after the swap, the tool
/// raised to `critical` is no longer allowed automatically, and a grant from before is not
/// honored without a new decision. Older versions and broken manifests are refused.
#[test]
fn manifest_swaps_are_atomic_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = warden_runtime::starter::write(dir.path()).unwrap();
    let v1 = warden_runtime::bundle::load_governor(&path).unwrap();
    let current = Arc::new(warden_runtime::current::CurrentGovernor::new(v1));
    let state: Arc<dyn warden_core::state::StateStore> = Arc::new(warden_state::MemoryState::new());
    let text = std::fs::read_to_string(&path).unwrap();
    let raised = text.replacen("version: 1", "version: 2", 1).replacen(
        "  - name: fs.read_file\n    tier: low",
        "  - name: fs.read_file\n    tier: critical",
        1,
    );
    assert_ne!(raised, text);
    let grants = warden_identity::GrantKeys::generate().unwrap();
    let replay = warden_identity::MemoryReplayGuard::new();
    // A grant decided under version 1.
    let g1 = current.get();
    let p0 = warden_core::Proposal {
        agent: "coder-1".into(),
        session: "s0".into(),
        tool: "fs.read_file".into(),
        arguments: serde_json::json!({"path": "/a"}),
        tenant: None,
        kind: warden_core::ActionKind::Tool,
        operation: warden_core::Operation::Use,
    };
    let d0 = g1.decide(&p0, state.as_ref(), 1_795_341_600);
    assert!(d0.is_allow());
    let call = warden_identity::Call {
        session: "s0",
        agent: "coder-1",
        tool: "fs.read_file",
        arguments_hash: &d0.arguments_hash,
    };
    let ledger = warden_runtime::witness::open_ledger(
        dir.path(),
        None,
        &Default::default(),
        Default::default(),
    )
    .unwrap();
    let recorded = ledger
        .record_decision_blocking(d0.clone(), "", "test", Vec::new())
        .unwrap();
    let grant = grants.mint(&recorded, 0, 30_000).unwrap();
    drop(g1);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (current, state, stop) =
                (Arc::clone(&current), Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || i < 50 {
                    let p = warden_core::Proposal {
                        agent: "coder-1".into(),
                        session: format!("w{w}-{i}"),
                        tool: "fs.read_file".into(),
                        arguments: serde_json::json!({ "path": format!("/{i}") }),
                        tenant: None,
                        kind: warden_core::ActionKind::Tool,
                        operation: warden_core::Operation::Use,
                    };
                    let d = current.get().decide(&p, state.as_ref(), 1_795_341_600);
                    seen.push((
                        d.manifest_version,
                        d.decision,
                        d.rules.first().cloned().unwrap_or_default(),
                    ));
                    i += 1;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let m2 = warden_policy::parse_manifest("manifest.yaml", &raised).unwrap();
    let policies = warden_runtime::bundle::load_policies(&path, &m2).unwrap();
    let v2 = warden_policy::Governor::new(m2, &policies).unwrap();
    assert_eq!(current.swap(v2).unwrap(), 2);
    std::thread::sleep(std::time::Duration::from_millis(20));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut versions = std::collections::BTreeSet::new();
    for w in workers {
        for (version, verdict, rule) in w.join().unwrap() {
            versions.insert(version);
            match version {
                // Allowed, unless this fast loop ran into the starter's rate limits and budgets.
                1 => assert!(
                    verdict == warden_core::Verdict::Allow
                        || ["rate.", "budget", "invariant"]
                            .iter()
                            .any(|r| rule.starts_with(r)),
                    "{verdict:?} {rule}"
                ),
                2 => assert_ne!(
                    verdict,
                    warden_core::Verdict::Allow,
                    "critical tool allowed under v2"
                ),
                v => panic!("unexpected version {v}"),
            }
        }
    }
    assert_eq!(
        versions.len(),
        2,
        "the swap did not happen while decisions ran"
    );
    // The grant from version 1 is not honored under version 2: decide again.
    assert!(matches!(
        grants.redeem(&grant, &call, current.get().manifest().version, 1, &replay),
        Err(warden_identity::GrantError::ManifestChanged {
            granted: 1,
            current: 2
        })
    ));
    // Rollbacks and broken manifests are refused; version 2 stays in force.
    let again = warden_policy::parse_manifest("manifest.yaml", &text).unwrap();
    let policies = warden_runtime::bundle::load_policies(&path, &again).unwrap();
    let err = current
        .swap(warden_policy::Governor::new(again, &policies).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("not newer"), "{err}");
    std::fs::write(&path, "version: [").unwrap();
    assert!(current.reload(&path).is_err());
    assert_eq!(current.get().manifest().version, 2);
}

/// Rotating the ledger key: the origin stays, old checkpoints keep verifying with the key list in
/// `ledger.pub`, new ones are signed by the new key, and the rotation is recorded.
#[test]
fn ledger_key_rotation_keeps_old_checkpoints_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    warden_runtime::starter::write(d).unwrap();
    let e = |i: u64| {
        warden_ledger::Entry::Event(warden_ledger::EventRecord {
            kind: "test".into(),
            agent: String::new(),
            tenant: String::new(),
            session: String::new(),
            reason: format!("event {i}"),
            trace_id: String::new(),
            request_id: format!("r{i}"),
            time: 0,
        })
    };
    let old_note = {
        let ledger =
            warden_runtime::witness::open_ledger(d, None, &Default::default(), Default::default())
                .unwrap();
        warden_runtime::agents::record_key_changes(d, &ledger, 0).unwrap();
        ledger.append(&e(1)).unwrap();
        ledger.checkpoint().unwrap()
    };
    let (old_id, new_id) =
        warden_runtime::witness::rotate_ledger_key(d, &Default::default(), None).unwrap();
    assert_ne!(old_id, new_id);
    let new_note = {
        let ledger =
            warden_runtime::witness::open_ledger(d, None, &Default::default(), Default::default())
                .unwrap();
        warden_runtime::agents::record_key_changes(d, &ledger, 0).unwrap();
        ledger.append(&e(2)).unwrap();
        ledger.checkpoint().unwrap()
    };
    // Same origin, another key.
    assert_eq!(old_note.lines().next(), new_note.lines().next());
    assert!(!new_note.contains(old_note.lines().last().unwrap()));
    let all =
        warden_runtime::witness::load_verifier(&warden_runtime::witness::pub_path(d)).unwrap();
    assert_eq!(all.key_ids().len(), 2);
    let mut store =
        warden_ledger::FileStore::open(&d.join("ledger"), warden_ledger::Mode::ReadOnly).unwrap();
    let report =
        warden_ledger::verify::verify_store(&mut store, &all, Some(&old_note), true).unwrap();
    assert_eq!(report.entries, 4); // key.created, event 1, key.rotated, event 2
    assert_eq!(report.extends_checkpoint, Some(2));
    let text = String::from_utf8(warden_ledger::store::read_entry(&mut store, 2).unwrap()).unwrap();
    assert!(
        text.contains("key.rotated") && text.contains(&new_id),
        "{text}"
    );
}

/// The admin listener: only the admin token opens it (never an agent credential); a kill on an
/// agent stops its very next call, resume lifts it, and both are recorded.
#[tokio::test]
async fn admin_brakes_take_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    warden_runtime::starter::write(dir.path()).unwrap();
    let app = runtime(dir.path(), None).await;
    let (adm, auth) = serve_admin(&app, dir.path()).await;
    let token = auth[0].1.trim_start_matches("Bearer ").to_owned();
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = l1.local_addr().unwrap();
    tokio::spawn(serve(l1, app, std::future::pending()));

    let call = |i: u32| {
        format!(
            r#"{{"agent":"coder-1","session":"s{i}","tool":"fs.read_file","arguments":{{"path":"/{i}"}}}}"#
        )
    };
    assert_eq!(
        request(api, "POST", "/v1/decide", call(1).as_bytes())
            .await
            .0,
        200
    );
    let kill =
        br#"{"action":"kill","scope":{"scope":"agent","id":"coder-1"},"reason":"incident 42"}"#;
    // Without the token, or with an agent's credential: refused.
    assert_eq!(request_with(adm, "/admin/v1/holds", &[], kill).await.0, 401);
    let agent_cred = [
        ("warden-credential", "x".to_string()),
        ("authorization", "Bearer x".to_string()),
    ];
    assert_eq!(
        request_with(adm, "/admin/v1/holds", &agent_cred, kill)
            .await
            .0,
        401
    );
    // The agent API does not serve admin routes at all.
    assert_eq!(
        request_with(
            api,
            "/admin/v1/holds",
            &[("authorization", format!("Bearer {token}"))],
            kill
        )
        .await
        .0,
        404
    );
    let (status, resp) = request_with(adm, "/admin/v1/holds", &auth, kill).await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("\"recorded\":true"), "{resp}");
    // The very next call is stopped, and says why.
    let (status, resp) = request(api, "POST", "/v1/decide", call(2).as_bytes()).await;
    assert_eq!(status, 403, "{resp}");
    assert!(
        resp.contains("kill") && resp.contains("incident 42"),
        "{resp}"
    );
    // Other agents are untouched.
    let ops = br#"{"agent":"ops-1","session":"o","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    assert_eq!(request(api, "POST", "/v1/decide", ops).await.0, 200);
    // Lockdown applies to tenants only; a mismatched scope is a clear 400.
    let bad = br#"{"action":"lockdown","scope":{"scope":"agent","id":"coder-1"}}"#;
    assert_eq!(
        request_with(adm, "/admin/v1/holds", &auth, bad).await.0,
        400
    );
    let resume = br#"{"action":"resume","scope":{"scope":"agent","id":"coder-1"}}"#;
    let (status, resp) = request_with(adm, "/admin/v1/holds", &auth, resume).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        request(api, "POST", "/v1/decide", call(3).as_bytes())
            .await
            .0,
        200
    );
    let kinds: Vec<String> = ledger_texts(dir.path())
        .into_iter()
        .filter(|t| t.contains("\"type\":\"event\""))
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| k.contains("hold.kill") && k.contains("incident 42")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k.contains("hold.resume")), "{kinds:?}");
}

/// Off loopback the unauthenticated `/v1/decide` is not served; signed proposals still are.
#[tokio::test]
async fn unauthenticated_decide_is_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    warden_runtime::starter::write(dir.path()).unwrap();
    let app = runtime(dir.path(), None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = warden_gateway::native_api::router_with(app, false);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let allow =
        br#"{"agent":"coder-1","session":"s","tool":"fs.read_file","arguments":{"path":"/a"}}"#;
    assert_eq!(request(addr, "POST", "/v1/decide", allow).await.0, 404);
    assert_eq!(request(addr, "POST", "/v1/proposals", allow).await.0, 401);
}

/// A reload that would change upstreams or pins is refused (the running Executor keeps its
/// own); one that does not is swapped in and moves the Executor's manifest clock.
#[test]
fn reloads_that_change_upstreams_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = warden_runtime::starter::write(dir.path()).unwrap();
    let v1 = std::fs::read_to_string(&path).unwrap();
    let current = warden_runtime::current::CurrentGovernor::new(
        warden_runtime::bundle::load_governor(&path).unwrap(),
    );
    let clock = warden_executor::ManifestClock::new(1);
    std::fs::write(
        &path,
        v1.replace("version: 1", "version: 2")
            .replace("command: [warden, demo-server]", "command: [/bin/true]"),
    )
    .unwrap();
    let book = warden_identity::approval::Book::new(Default::default());
    let e = warden_runtime::execution::reload(&current, &clock, &path, &book, &|_, _| Ok(false))
        .unwrap_err();
    assert!(
        matches!(e, warden_runtime::governance::ChangeError::NeedsRestart),
        "{e}"
    );
    assert_eq!((current.get().manifest().version, clock.get()), (1, 1));
    std::fs::write(&path, v1.replace("version: 1", "version: 2")).unwrap();
    assert_eq!(
        warden_runtime::execution::reload(&current, &clock, &path, &book, &|_, _| Ok(false))
            .unwrap()
            .0,
        2
    );
    assert_eq!((current.get().manifest().version, clock.get()), (2, 2));
    // Not newer: refused, clock unchanged.
    assert!(
        warden_runtime::execution::reload(&current, &clock, &path, &book, &|_, _| Ok(false))
            .is_err()
    );
    assert_eq!(clock.get(), 2);
}

/// The admin vote endpoint on bad input: no token, not JSON, unknown fields, a huge body, a
/// malformed or misdirected id, a forged signature, an unknown approver — each a clear error,
/// nothing counted, and the listener keeps serving; then a good vote counts.
#[tokio::test]
async fn approval_votes_refuse_bad_input_and_keep_serving() {
    use warden_identity::approval::{sign, Status, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let manifest = warden_runtime::starter::write(dir.path()).unwrap();
    let public =
        warden_runtime::approvals::create_approver_key(dir.path(), "alice@acme.example", false)
            .unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "\napprovals:\n",
        &format!("\napprovers:\n  - {{ id: alice@acme.example, key: \"{public}\" }}\napprovals:\n"),
    );
    std::fs::write(&manifest, text).unwrap();
    let app = runtime(dir.path(), None).await;
    let (adm, auth) = serve_admin(&app, dir.path()).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = l.local_addr().unwrap();
    tokio::spawn(serve(l, app.clone(), std::future::pending()));
    let now = warden_runtime::now_unix_ms();
    // coder-1's `demo.add` needs its owner: the call escalates and opens the request.
    let agent = SignedAgent::enroll(api, dir.path(), "coder-1").await;
    let add = br#"{"agent":"coder-1","session":"s","tool":"demo.add","arguments":{"a":2,"b":3}}"#;
    let (status, resp) = agent.propose(api, add).await;
    assert_eq!(status, 202, "{resp}");
    let id = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["approval"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.operator().approval(&id).unwrap();
    let path = format!("/admin/v1/approvals/{}/votes", r.id);
    let key = warden_runtime::approvals::load_approver_key(
        &warden_runtime::approvals::approver_key_path(dir.path(), "alice@acme.example"),
    )
    .unwrap();
    let good = sign(&key, &r, Verdict::Approve, "alice@acme.example", now).unwrap();
    let good_body = serde_json::to_vec(&good).unwrap();

    let (status, body) = send(adm, "POST", &path, &[], &good_body).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = send(adm, "POST", &path, &auth, b"{not json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a signed vote"), "{body}");
    let mut extra: serde_json::Value = serde_json::from_slice(&good_body).unwrap();
    extra["grant_everything"] = true.into();
    let (status, body) = send(adm, "POST", &path, &auth, extra.to_string().as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown field"), "{body}");
    let huge = vec![b'['; 4 << 20];
    let (status, _) = send(adm, "POST", &path, &auth, &huge).await;
    assert_eq!(status, 413);
    let (status, body) = send(
        adm,
        "POST",
        "/admin/v1/approvals/apr_x%0a/votes",
        &auth,
        &good_body,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let other = "apr_000000000000000000000000";
    let (status, body) = send(
        adm,
        "POST",
        &format!("/admin/v1/approvals/{other}/votes"),
        &auth,
        &good_body,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("not `apr_000000000000000000000000`"),
        "{body}"
    );
    // Forged: signed by another key; and an approver the manifest does not list.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let forged = sign(&forger, &r, Verdict::Approve, "alice@acme.example", now).unwrap();
    let (status, body) = send(
        adm,
        "POST",
        &path,
        &auth,
        &serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("approval.bad_signature"), "{body}");
    let stranger = sign(&forger, &r, Verdict::Approve, "mallory", now).unwrap();
    let (status, body) = send(
        adm,
        "POST",
        &path,
        &auth,
        &serde_json::to_vec(&stranger).unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("approval.unknown_approver"), "{body}");
    assert_eq!(
        app.operator().approval(&r.id).unwrap().status,
        Status::Pending
    );

    // Still serving: the good vote counts, and its replay is a conflict.
    let (status, body) = send(adm, "POST", &path, &auth, &good_body).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"approved\""), "{body}");
    let (status, body) = send(adm, "POST", &path, &auth, &good_body).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("approval.replayed"), "{body}");
    let kinds: Vec<String> = ledger_texts(dir.path())
        .iter()
        .filter_map(
            |t| match warden_ledger::Entry::from_bytes(t.as_bytes()).unwrap() {
                warden_ledger::Entry::Event(e) => Some(e.kind),
                _ => None,
            },
        )
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "approval.refused").count(),
        3,
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "approval.approved"), "{kinds:?}");
}

/// Governance (INV-020): with `governance` in the running manifest, a new bundle is swapped in
/// only after its approvers approved exactly that bundle; a reload without the approval, or of
/// files changed after it, is refused; the approval is used once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_changes_need_the_governance_approval_of_that_exact_bundle() {
    use warden_identity::approval::{sign, Request, Verdict};
    let dir = tempfile::tempdir().unwrap();
    let manifest = warden_runtime::starter::write(dir.path()).unwrap();
    let mut approvers = String::from("\napprovers:\n");
    for id in ["alice@acme.example", "carol"] {
        let public = warden_runtime::approvals::create_approver_key(dir.path(), id, false).unwrap();
        approvers.push_str(&format!("  - {{ id: {id}, key: \"{public}\" }}\n"));
    }
    let v1 = std::fs::read_to_string(&manifest).unwrap().replace(
        "\napprovals:\n",
        &format!("{approvers}governance: {{ approvers: 2 }}\napprovals:\n"),
    );
    std::fs::write(&manifest, &v1).unwrap();
    // Three approvers required but two listed: the manifest could never change; refused.
    let locked = v1.replace(
        "governance: { approvers: 2 }",
        "governance: { approvers: 3 }",
    );
    let e = warden_policy::parse_manifest("m.yaml", &locked)
        .unwrap_err()
        .to_string();
    assert!(e.contains("could never be changed"), "{e}");

    let app = runtime(dir.path(), None).await;
    let (adm, auth) = serve_admin(&app, dir.path()).await;

    // Version 2 loosens a rate. Without an approval, the reload is refused.
    let v2 = v1
        .replace("version: 1", "version: 2")
        .replace("rate: 100/h", "rate: 200/h");
    std::fs::write(&manifest, &v2).unwrap();
    let e = app.reload().await.unwrap_err().to_string();
    assert!(
        e.contains("needs the approval of 2 distinct human approver(s)"),
        "{e}"
    );
    assert_eq!(app.summary().manifest_version, 1);

    // Proposed: the preview is the diff.
    let (status, body) = send(adm, "POST", "/admin/v1/governance/proposals", &auth, b"").await;
    assert_eq!(status, 200, "{body}");
    let request: Request = serde_json::from_str(&body).unwrap();
    assert_eq!(request.binding.agent, "(governance)");
    assert_eq!(request.preview["loosened"], 1, "{}", request.preview);
    assert!(body.contains("rate 100/h -> 200/h"), "{body}");
    let vote = |who: &str| {
        let key = warden_runtime::approvals::load_approver_key(
            &warden_runtime::approvals::approver_key_path(dir.path(), who),
        )
        .unwrap();
        let v = sign(
            &key,
            &request,
            Verdict::Approve,
            who,
            warden_runtime::now_unix_ms(),
        )
        .unwrap();
        serde_json::to_vec(&v).unwrap()
    };
    let path = format!("/admin/v1/approvals/{}/votes", request.id);
    let (status, body) = send(adm, "POST", &path, &auth, &vote("alice@acme.example")).await;
    assert_eq!(status, 200, "{body}");
    // One of two: still refused.
    assert!(app.reload().await.is_err());
    let (status, body) = send(adm, "POST", &path, &auth, &vote("carol")).await;
    assert!(status == 200 && body.contains("\"approved\""), "{body}");

    // The files changed after the approval: a different bundle, refused.
    std::fs::write(&manifest, v2.replace("rate: 200/h", "rate: 900/h")).unwrap();
    assert!(app
        .reload()
        .await
        .unwrap_err()
        .to_string()
        .contains("needs the approval"));
    // The approved bundle goes in, once, naming its approvers.
    std::fs::write(&manifest, &v2).unwrap();
    assert_eq!(app.reload().await.unwrap(), 2);
    assert_eq!(app.summary().manifest_version, 2);
    let applied: Vec<String> = ledger_texts(dir.path())
        .into_iter()
        .filter(|t| t.contains("governance.applied"))
        .collect();
    assert!(
        applied.len() == 1 && applied[0].contains("approved by alice@acme.example, carol"),
        "{applied:?}"
    );
}

/// Webhooks: a brake change and a tripped breaker reach the receivers, in the shapes asked for,
/// signed so the receiver can verify them (checked here with an independent HMAC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_shaped_for_their_receivers() {
    use hmac::{Hmac, Mac};
    use tokio::io::AsyncReadExt as _;
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = receiver.accept().await.unwrap();
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if body.len() >= len {
                            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await
                                .unwrap();
                            got_tx.send((head.to_owned(), body.to_owned())).unwrap();
                            return;
                        }
                    }
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let manifest = warden_runtime::starter::write(dir.path()).unwrap();
    std::fs::write(dir.path().join("hook.key"), "webhook-key-0123456789").unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap()
        + &format!(
            "\nsecrets:\n  HOOK_KEY: {{ file: hook.key }}\nnotifications:\n  webhooks:\n    - {{ url: \"http://127.0.0.1:{port}/slack\", secret: HOOK_KEY, format: slack }}\n    - {{ url: \"http://127.0.0.1:{port}/tg\", secret: HOOK_KEY, format: telegram, chat_id: \"-1001\", events: [breaker.tripped] }}\n"
        );
    std::fs::write(&manifest, text).unwrap();
    let governor = warden_runtime::bundle::load_governor(&manifest).unwrap();
    let (notifier, errors) =
        warden_runtime::notify::Notifier::start(&governor.manifest().webhooks, |name| {
            (name == "HOOK_KEY").then(|| zeroize::Zeroizing::new("webhook-key-0123456789".into()))
        });
    assert!(errors.is_empty(), "{errors:?}");
    // The Runtime starts the same webhooks from the manifest (the key from `hook.key`).
    let app = runtime(dir.path(), None).await;
    let (adm, auth) = serve_admin(&app, dir.path()).await;
    let verify = |head: &str, body: &str| {
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap()
                .to_owned()
        };
        let ts = header("x-warden-timestamp");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"webhook-key-0123456789").unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header("x-warden-signature"), format!("v1={want}"));
        assert!((ts.parse::<i64>().unwrap() - warden_runtime::now_unix()).abs() < 60);
    };

    // A kill: only the Slack hook carries hold changes.
    let body =
        br#"{"action":"kill","scope":{"scope":"agent","id":"coder-1"},"reason":"webhook test"}"#;
    let (status, answer) = send(adm, "POST", "/admin/v1/holds", &auth, body).await;
    assert_eq!(status, 200, "{answer}");
    let (head, body) = tokio::time::timeout(std::time::Duration::from_secs(10), got.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("POST /slack "), "{head}");
    verify(&head, &body);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains("hold.changed: kill (agent `coder-1`): webhook test"),
        "{v}"
    );

    // A tripped breaker: both hooks, the Telegram one as sendMessage (sent here through a
    // notifier of the same webhooks; a breaker tripping for real is `tests/mcp`'s).
    notifier.notify(&warden_core::events::Event {
        kind: "breaker.tripped".into(),
        text: "agent `coder-1` paused: 3 consecutive failures".into(),
        details: serde_json::json!({"agent": "coder-1"}),
        time: warden_runtime::now_unix(),
    });
    let mut paths = Vec::new();
    for _ in 0..2 {
        let (head, body) = tokio::time::timeout(std::time::Duration::from_secs(10), got.recv())
            .await
            .unwrap()
            .unwrap();
        verify(&head, &body);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if head.starts_with("POST /tg ") {
            assert_eq!(v["chat_id"], "-1001", "{v}");
        }
        assert!(
            v["text"].as_str().unwrap().contains("breaker.tripped"),
            "{v}"
        );
        paths.push(head.lines().next().unwrap().to_owned());
    }
    paths.sort();
    assert_eq!(paths, ["POST /slack HTTP/1.1", "POST /tg HTTP/1.1"]);
}

/// The composition root assembles what `warden serve` runs: the Executor is part of it, so an
/// allowed signed proposal goes down the whole governed path and its answer never carries the
/// grant; the native API waits for an approval as the MCP front-end does; a manifest that does
/// not load assembles nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_assembles_the_gateway_production_runs() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = warden_runtime::starter::write_with_approvers(dir.path(), dir.path()).unwrap();
    // Calls may wait up to 20 s for their approval (the starter answers at once).
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("wait_seconds: 0 ", "wait_seconds: 20"),
    )
    .unwrap();
    let runtime = runtime(dir.path(), None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, runtime.clone(), std::future::pending()));
    let agent = SignedAgent::enroll(addr, dir.path(), "coder-1").await;
    let body = br#"{"agent":"coder-1","session":"s","tool":"demo.echo","arguments":{"text":"hi"}}"#;
    let (status, resp) = agent.propose(addr, body).await;
    // Allowed and recorded, then run by the Executor on the demo upstream.
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("\"decision\":\"allow\""), "{resp}");
    assert!(!resp.contains("\"grant\""), "{resp}");

    // The native API waits for an approval as the MCP front-end does (`Warden-Wait`):
    // coder-1's `demo.add` needs its owner; alice approves while the call waits, and the
    // call is then decided again, redeems it, and runs.
    let operator = runtime.operator();
    let key = warden_runtime::approvals::load_approver_key(
        &warden_runtime::approvals::approver_key_path(dir.path(), "alice@acme.example"),
    )
    .unwrap();
    let voter = tokio::spawn(async move {
        loop {
            let now = warden_runtime::now_unix_ms();
            let pending = operator
                .approvals()
                .into_iter()
                .find(|r| r.status == warden_identity::approval::Status::Pending);
            if let Some(r) = pending {
                let vote = warden_identity::approval::sign(
                    &key,
                    &r,
                    warden_identity::approval::Verdict::Approve,
                    "alice@acme.example",
                    now,
                )
                .unwrap();
                operator.vote(&r.id, &vote).await.unwrap();
                return r.id;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let add = br#"{"agent":"coder-1","session":"s","tool":"demo.add","arguments":{"a":2,"b":3}}"#;
    let (status, resp) = agent
        .propose_with(addr, add, &[("warden-wait", "15".into())])
        .await;
    let approved = voter.await.unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains("approval.redeemed") && resp.contains(&approved),
        "{resp}"
    );
    assert!(resp.contains("\"text\":\"5\""), "{resp}");
    runtime.shutdown().await;
    drop(runtime);

    // A manifest that does not load: nothing is assembled, and the error names it.
    std::fs::write(&manifest, "version: x\n").unwrap();
    let config = Config {
        data: dir.path().join("other"),
        ..config(dir.path())
    };
    let err = tokio::task::spawn_blocking(move || Runtime::open(config))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, warden_runtime::RuntimeError::Manifest { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("manifest.yaml"), "{err}");
}

/// Issue 18: a crash leaves a mark. A previous run recorded an allowed call and stopped before
/// its receipt (what a `kill -9` mid-call leaves in the ledger); the next start closes it with
/// a receipt of status `interrupted` before serving, and records the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_off_by_a_crash_is_closed_as_interrupted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    warden_runtime::starter::write(dir.path()).unwrap();
    let data = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let ledger = warden_runtime::witness::open_ledger(
            &data,
            None,
            &Default::default(),
            Default::default(),
        )
        .unwrap();
        let cut_off = warden_ledger::DecisionRecord {
            decision: warden_core::Verdict::Allow,
            rules: vec!["tier.low.auto".into()],
            policies: vec!["coder-reads".into()],
            rationale: "allowed".into(),
            escalation: None,
            manifest_version: 1,
            policy_hash: "sha256:00".into(),
            agent: "coder-1".into(),
            lineage: vec!["alice@acme.example".into(), "coder-1".into()],
            tenant: "acme".into(),
            session: "s".into(),
            trace_id: String::new(),
            request_id: "req-cut-off".into(),
            tool: "demo.echo".into(),
            operation: warden_core::Operation::Use,
            arguments_hash: "sha256:11".into(),
            time: warden_runtime::now_unix(),
            provenance: Vec::new(),
        };
        ledger
            .append(&warden_ledger::Entry::Decision(cut_off))
            .unwrap();
    })
    .await
    .unwrap();
    let _app = runtime(dir.path(), None).await;
    let texts = ledger_texts(dir.path());
    let closed: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("\"status\":\"interrupted\""))
        .collect();
    assert_eq!(closed.len(), 1, "{texts:?}");
    assert!(
        closed[0].contains("\"request_id\":\"req-cut-off\""),
        "{}",
        closed[0]
    );
    let started = texts
        .iter()
        .rfind(|t| t.contains("gateway.started"))
        .unwrap();
    assert!(started.contains("1 call(s)"), "{started}");
}

/// List changes (issue 20): a new manifest in force tells every listener to list its tools,
/// resources and prompts again, once each; nothing is told while nothing changes.
#[tokio::test]
async fn a_new_manifest_tells_each_listener_to_list_everything_again_once() {
    use warden_core::ActionKind;
    let dir = tempfile::tempdir().unwrap();
    let path = warden_runtime::starter::write(dir.path()).unwrap();
    let app = runtime(dir.path(), None).await;
    let manifest = warden_runtime::bundle::load_manifest(&path).unwrap();
    let now = warden_runtime::now_unix();
    let cred = warden_runtime::agents::enroll(dir.path(), &manifest, "coder-1", now, 3600).unwrap();
    let token = std::fs::read_to_string(&cred).unwrap();
    let caller = app.authenticate(Some(token.trim())).unwrap();
    let quiet = std::time::Duration::from_millis(300);
    let (mut a, mut b) = (app.catalog_changes(), app.catalog_changes());
    assert!(tokio::time::timeout(quiet, a.next(&caller)).await.is_err());

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("version: 1", "version: 2", 1)).unwrap();
    assert_eq!(app.reload().await.unwrap(), 2);
    // The swap is recorded, ungoverned as it is.
    let swaps: Vec<String> = ledger_texts(dir.path())
        .into_iter()
        .filter(|t| t.contains("manifest.reloaded"))
        .collect();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert!(
        swaps[0].contains("manifest version 2 (bundle sha256:")
            && swaps[0].contains("after version 1"),
        "{swaps:?}"
    );
    for listener in [&mut a, &mut b] {
        let mut told = Vec::new();
        for _ in 0..3 {
            told.push(
                tokio::time::timeout(quiet, listener.next(&caller))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            told,
            [
                Some(ActionKind::Tool),
                Some(ActionKind::Resource),
                Some(ActionKind::Prompt)
            ]
        );
        assert!(tokio::time::timeout(quiet, listener.next(&caller))
            .await
            .is_err());
    }
}
