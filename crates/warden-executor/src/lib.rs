//! # warden-executor
//!
//! The Executor runs only granted calls. Its one way in is [`Executor::execute`], which takes a
//! grant token and the exact call, and **redeems the grant itself** (MAC, expiry, the call it is
//! bound to, the current manifest version, single use) before anything reaches an upstream
//! (INV-002). The connections to upstream servers are private to this crate: the front-end
//! (`warden-gateway`) can list tools, but cannot call one without a grant that verifies.
//!
//! ```text
//! execute(grant, call) ── redeem ──▶ upstream `tools/call` (timeout, cancellation)
//!                                        │
//!                     redact (secrets, detectors) ◀─┘
//!                                        │
//!                     receipt ──▶ Witness ledger ──▶ result to the caller
//! ```
//!
//! - [`secrets`]: secret values, injected into upstream environments and headers only;
//! - [`redact`]: exact-secret and detector redaction of results (and scans of arguments);
//! - `upstream` (private): stdio children and their MCP client sessions.

pub mod redact;
mod sandboxed;
pub mod secrets;
pub mod tls;
mod upstream;

use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use warden_identity::{GrantError, GrantKeys, ReplayGuard};
use warden_ledger::{Entry, Ledger, Receipt, ReceiptStatus};

pub use redact::Redactor;

/// Entry points for `cargo fuzz` (`fuzz/fuzz_targets/redact.rs`); also run by the tests.
pub mod fuzz {
    use std::collections::BTreeSet;

    /// The secret the fuzz redactor holds.
    pub const SECRET: &str = "fuzz-Secret-value/42+";

    /// Redacts arbitrary upstream output, as JSON when it parses and as text otherwise, with
    /// every detector on. Returns what came out (the caller checks that the secret did not).
    #[must_use]
    pub fn redact(data: &[u8]) -> String {
        // Built once: compiling the patterns costs far more than one redaction.
        static REDACTOR: std::sync::OnceLock<Option<crate::Redactor>> = std::sync::OnceLock::new();
        let Some(r) = REDACTOR
            .get_or_init(|| crate::Redactor::new([SECRET].into_iter()).ok())
            .as_ref()
        else {
            return String::new();
        };
        let on: BTreeSet<String> = warden_policy::upstream::CREDENTIAL_DETECTORS
            .iter()
            .chain(warden_policy::upstream::PII_DETECTORS)
            .map(|s| (*s).to_owned())
            .collect();
        let text = String::from_utf8_lossy(data);
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(mut v) => {
                let _ = r.redact_json(&mut v, &on);
                let _ = r.scan(&v, &on);
                v.to_string()
            }
            Err(_) => r
                .redact_str(&text, &on)
                .map_or(text.into_owned(), |(t, _)| t),
        }
    }
}
pub use sandboxed::SandboxConfig;
pub use secrets::Secrets;
pub use upstream::{hash_file, Observed, ProgressSink};

/// Why a call did not run, or ran but cannot be returned.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The grant did not redeem: nothing ran.
    #[error("grant refused: {0}")]
    Grant(#[from] GrantError),
    /// No upstream serves this tool name.
    #[error("no upstream serves tool `{0}`")]
    UnknownTool(String),
    /// The upstream is down or cannot start.
    #[error("upstream `{upstream}` is unavailable: {why}")]
    Unavailable {
        /// The upstream.
        upstream: String,
        /// Why.
        why: String,
    },
    /// The upstream did not answer in time (a receipt was recorded).
    #[error("upstream `{upstream}` did not answer within {ms} ms")]
    Timeout {
        /// The upstream.
        upstream: String,
        /// The limit.
        ms: u64,
    },
    /// The upstream does not list the tool, or it was withdrawn because its pin no longer
    /// holds (a receipt was recorded).
    #[error("upstream `{upstream}` offers no tool `{tool}` (not listed, or withdrawn because its description or schema no longer matches its pin)")]
    Withdrawn {
        /// The upstream.
        upstream: String,
        /// The upstream's tool name.
        tool: String,
    },
    /// A kill switch, quarantine or pause holds the call's scope (a receipt was recorded).
    #[error("{scope} is held ({kind}): {reason}")]
    Held {
        /// The scope held.
        scope: String,
        /// `kill`, `quarantine` or `pause`.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The caller cancelled the call, or an operator's kill stopped it (a receipt was
    /// recorded).
    #[error("the call was cancelled")]
    Cancelled,
    /// The upstream answered with a protocol error (a receipt was recorded).
    #[error("upstream `{upstream}` failed: {why}")]
    Upstream {
        /// The upstream.
        upstream: String,
        /// Its error.
        why: String,
    },
    /// The receipt could not be recorded: the result is withheld (INV-003).
    #[error("the receipt could not be recorded, so the result is withheld: {0}")]
    Receipt(String),
}

/// The manifest version grants must have been minted under; the composition root moves it
/// when a newer manifest is swapped in.
#[derive(Debug, Default)]
pub struct ManifestClock(AtomicU64);

impl ManifestClock {
    /// A clock at `version`.
    #[must_use]
    pub fn new(version: u64) -> Self {
        ManifestClock(AtomicU64::new(version))
    }
    /// The current version.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    /// Moves to `version`.
    pub fn set(&self, version: u64) {
        self.0.store(version, Ordering::Release);
    }
}

/// One call to execute, exactly as it was decided.
pub struct Call<'a> {
    /// The grant token minted for this call.
    pub grant: &'a str,
    /// Session.
    pub session: &'a str,
    /// Agent.
    pub agent: &'a str,
    /// Tenant (for the receipt).
    pub tenant: &'a str,
    /// The federated tool name, `<upstream>.<tool>`.
    pub tool: &'a str,
    /// The arguments that run (their hash must be the granted one).
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Trace id (receipt).
    pub trace_id: &'a str,
    /// Request id of the decision (receipt).
    pub request_id: &'a str,
    /// Detectors the manifest turns on for this tool.
    pub redact: &'a BTreeSet<String>,
    /// Fires when the caller cancels.
    pub cancel: CancellationToken,
    /// Where the upstream's progress notifications go (the caller asked for progress).
    pub progress: Option<ProgressSink>,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // INVARIANT (no bearer material in logs): the grant token and arguments are not shown.
        f.debug_struct("Call")
            .field("session", &self.session)
            .field("agent", &self.agent)
            .field("tool", &self.tool)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// A call that ran.
#[derive(Debug)]
pub struct Executed {
    /// The redacted result, as the agent may see it.
    pub result: CallToolResult,
    /// Where its receipt is in the ledger.
    pub receipt_index: u64,
    /// How many values were redacted.
    pub redactions: u64,
}

/// What the Executor needs.
#[expect(
    missing_debug_implementations,
    reason = "holds grant keys and secrets, which are never printed"
)]
pub struct Config {
    /// The upstreams of the manifest.
    pub upstreams: Vec<warden_policy::upstream::Upstream>,
    /// Secret values.
    pub secrets: Secrets,
    /// Grant keys (verify only the grants the Governor minted).
    pub grants: GrantKeys,
    /// Remembers redeemed grants (in process, or in Redis for several instances).
    pub replay: Box<dyn ReplayGuard>,
    /// The current manifest version.
    pub manifest: Arc<ManifestClock>,
    /// Where receipts go.
    pub ledger: Arc<Ledger>,
    /// Holds (kill switch, quarantine, pause), checked again right before each call runs:
    /// a grant minted before a kill is not honored after it. `None` only in tests.
    pub holds: Option<Arc<dyn warden_core::state::StateStore>>,
    /// How to sandbox stdio servers whose manifest block asks for it; `None`: they do not start.
    pub sandbox: Option<SandboxConfig>,
}

/// A call in flight, as the kill switch sees it.
struct InFlight {
    tenant: String,
    agent: String,
    session_key: String,
    stop: CancellationToken,
}

/// The Executor.
pub struct Executor {
    upstreams: BTreeMap<String, Arc<upstream::Upstream>>,
    redactor: Arc<Redactor>,
    grants: GrantKeys,
    replay: Box<dyn ReplayGuard>,
    manifest: Arc<ManifestClock>,
    ledger: Arc<Ledger>,
    holds: Option<Arc<dyn warden_core::state::StateStore>>,
    inflight: std::sync::Mutex<std::collections::HashMap<u64, InFlight>>,
    next_call: AtomicU64,
    trees: Arc<sandboxed::Trees>,
    /// Sandboxed upstreams' runners, one per boundary (tenant, agent or session).
    runners: std::sync::Mutex<HashMap<RunnerKey, Runner>>,
    secrets: Arc<Secrets>,
    sandbox: Option<SandboxConfig>,
}

/// One runner of a sandboxed upstream, and whom it serves.
struct Runner {
    up: Arc<upstream::Upstream>,
    tenant: String,
    agent: String,
    session_key: String,
    last_used: std::time::Instant,
}

/// A per-session runner unused this long is destroyed (its session is over).
const SESSION_RUNNER_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// A boundary's key, also its directory name: the kind and the SHA-256 of the ids that
/// identify it (ids from callers never become paths; an agent's and a session's keys include
/// their tenant, so a reload that moves an agent never hands it another tenant's runner).
fn boundary_key(kind: &str, ids: &[&str]) -> String {
    // Each id length-prefixed: no id can be shifted into its neighbour.
    let framed: String = ids.iter().map(|i| format!("{}:{i}", i.len())).collect();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(framed.as_bytes());
    let mut out = format!("{kind}-");
    warden_core::canonical::push_hex(&mut out, &digest);
    out
}

/// Sandboxed runners one tenant may have of one upstream (agent and session runners): beyond
/// it, calls are refused (a caller cannot start sandboxes without end).
const MAX_RUNNERS_PER_TENANT: usize = 64;

/// Takes a call out of the in-flight registry when it ends, however it ends.
struct Registered<'a> {
    executor: &'a Executor,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.executor.inflight.lock() {
            m.remove(&self.id);
        }
    }
}

/// A runner's key: (upstream name, boundary).
type RunnerKey = (String, String);

/// Removes from `runners` those `pick` selects, with their keys.
fn take_runners(
    runners: &mut HashMap<RunnerKey, Runner>,
    pick: impl Fn(&RunnerKey, &Runner) -> bool,
) -> Vec<(RunnerKey, Runner)> {
    let keys: Vec<RunnerKey> = runners
        .iter()
        .filter(|(k, r)| pick(k, r))
        .map(|(k, _)| k.clone())
        .collect();
    keys.into_iter()
        .filter_map(|k| runners.remove(&k).map(|r| (k, r)))
        .collect()
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Starts each upstream without enforcing its pins, observes what it is (executable hash, each
/// tool's pin) and stops it: what `warden upstreams pin` writes. Runs nothing else.
///
/// # Errors
/// [`redact::RedactError`] if the redactor for upstream stderr cannot be built.
pub async fn observe(
    upstreams: Vec<warden_policy::upstream::Upstream>,
    secrets: Secrets,
    sandbox: Option<SandboxConfig>,
) -> Result<Vec<(String, Result<Observed, String>)>, redact::RedactError> {
    let redactor = Arc::new(Redactor::new(secrets.values())?);
    let secrets = Arc::new(secrets);
    // All at once: observing is starting each server, which takes a while.
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in upstreams.into_iter().enumerate() {
        let name = spec.name.clone();
        let u = upstream::Upstream::new(
            spec,
            Arc::clone(&secrets),
            Arc::clone(&redactor),
            None,
            sandbox.clone(),
            Arc::default(),
            "_pin".into(),
        );
        set.spawn(async move { (i, name, u.observe().await) });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    // In manifest order.
    out.sort_by_key(|(i, _, _)| *i);
    Ok(out.into_iter().map(|(_, n, r)| (n, r)).collect())
}

/// A failed exchange with an upstream: a server that went away (killed, crashed, its
/// transport closed) is unavailable, like one that cannot start; anything else is an error of
/// the upstream's protocol.
fn upstream_error(upstream: &str, e: &rmcp::ServiceError, why: String) -> ExecError {
    match e {
        rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_) => {
            ExecError::Unavailable {
                upstream: upstream.to_owned(),
                why: format!("the server went away ({why}); it is started again on the next call"),
            }
        }
        _ => ExecError::Upstream {
            upstream: upstream.to_owned(),
            why,
        },
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Executor {
    /// An Executor over these upstreams (started on first use, or by [`Executor::start`]).
    ///
    /// # Errors
    /// [`redact::RedactError`] if the redaction patterns cannot be built.
    pub fn new(config: Config) -> Result<Self, redact::RedactError> {
        tls::install_provider();
        let redactor = Arc::new(Redactor::new(config.secrets.values())?);
        let secrets = Arc::new(config.secrets);
        let trees = Arc::new(sandboxed::Trees::default());
        let sandbox = config.sandbox.clone();
        let upstreams = config
            .upstreams
            .into_iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    Arc::new(upstream::Upstream::new(
                        spec,
                        Arc::clone(&secrets),
                        Arc::clone(&redactor),
                        Some(Arc::clone(&config.ledger)),
                        config.sandbox.clone(),
                        Arc::clone(&trees),
                        "_tools".into(),
                    )),
                )
            })
            .collect();
        Ok(Executor {
            upstreams,
            redactor,
            grants: config.grants,
            replay: config.replay,
            manifest: config.manifest,
            ledger: config.ledger,
            holds: config.holds,
            inflight: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_call: AtomicU64::new(0),
            trees,
            runners: std::sync::Mutex::new(std::collections::HashMap::new()),
            secrets,
            sandbox,
        })
    }

    /// The redactor (the gateway scans egress arguments and its own logs with it).
    #[must_use]
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Starts every upstream at once and waits up to `wait` for them; returns those that failed
    /// or are still starting, with why. Those keep starting in the background; their tools are
    /// withheld until they are up.
    pub async fn start(&self, wait: std::time::Duration) -> Vec<(String, String)> {
        let mut set = tokio::task::JoinSet::new();
        for (name, u) in &self.upstreams {
            let (name, u) = (name.clone(), Arc::clone(u));
            set.spawn(async move { (name, u.client().await.err().map(|e| e.to_string())) });
        }
        let mut failed = Vec::new();
        let mut pending: BTreeSet<String> = self.upstreams.keys().cloned().collect();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = set.join_next() => match next {
                    Some(Ok((name, err))) => {
                        pending.remove(&name);
                        if let Some(e) = err {
                            tracing::error!(upstream = %name, error = %e, "upstream did not start");
                            failed.push((name, e));
                        }
                    }
                    Some(Err(e)) => tracing::error!(error = %e, "an upstream start panicked"),
                    None => break,
                },
                () = &mut deadline => {
                    set.detach_all();
                    failed.extend(pending.into_iter().map(|n| (n, "still starting".to_owned())));
                    break;
                }
            }
        }
        failed
    }

    /// Every tool of every upstream that is up, under its federated name `<upstream>.<tool>`.
    /// Never waits for an upstream: one that is down is (re)started in the background.
    #[must_use]
    pub fn tools(&self) -> Vec<Tool> {
        let mut out = Vec::new();
        for (name, u) in &self.upstreams {
            if let Some(tools) = u.tools_now() {
                out.extend(tools.into_iter().map(|mut t| {
                    t.name = format!("{name}.{}", t.name).into();
                    t
                }));
            }
        }
        out
    }

    /// Stops every call in flight within `scope` (the kill switch, quarantine, lockdown): each
    /// is cancelled at its upstream and receipted `killed`. Returns how many were stopped.
    /// Together with the hold check each call makes after registering, no call in `scope` runs
    /// after this returns, provided the hold was set before it was called.
    pub fn stop(&self, scope: &warden_core::state::HoldScope) -> usize {
        use warden_core::state::HoldScope as S;
        let Ok(m) = self.inflight.lock() else {
            return 0;
        };
        let mut n = 0;
        for c in m.values() {
            let hit = match scope {
                S::Global => true,
                S::Tenant(t) => c.tenant == *t,
                S::Agent(a) => c.agent == *a,
                S::Session(s) => c.session_key == *s,
            };
            if hit && !c.stop.is_cancelled() {
                c.stop.cancel();
                n += 1;
            }
        }
        drop(m);
        // The scope's own runners are killed and forgotten: the next call after `resume`
        // starts fresh ones.
        let (doomed, removed): (Vec<(String, String)>, Vec<Runner>) =
            take_runners(&mut self.runners(), |_, r| match scope {
                S::Global => true,
                S::Tenant(t) => r.tenant == *t,
                S::Agent(a) => r.agent == *a && !r.up.boundary.starts_with("tenant-"),
                S::Session(s) => r.session_key == *s && r.up.boundary.starts_with("session-"),
            })
            .into_iter()
            .unzip();
        let mut removed = Some(removed);
        if !doomed.is_empty() && !matches!(scope, S::Global) {
            let removed = removed.take().unwrap_or_default();
            let trees = Arc::clone(&self.trees);
            let ledger = Arc::clone(&self.ledger);
            // The runners stay alive until their trees are killed and recorded, then go.
            let kill = move || {
                let killed =
                    trees.kill_where(|n, b| doomed.iter().any(|(dn, db)| dn == n && db == b));
                drop(removed);
                killed
            };
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let killed = tokio::task::spawn_blocking(kill).await.unwrap_or_default();
                    for name in killed {
                        sandboxed::record(
                            Some(&ledger),
                            "sandbox.killed",
                            &name,
                            "a brake on its boundary ended its whole process tree".into(),
                        );
                    }
                });
            } else {
                kill();
            }
        }
        if matches!(scope, S::Global) {
            // INVARIANT (kill switch, seed 000 "Nuke"): a global kill ends every sandboxed
            // server's whole process tree, daemons and double forks included; each is started
            // again, fresh, by the first call after `resume`.
            // Off the async threads: killing waits until each tree is empty.
            let trees = Arc::clone(&self.trees);
            let ledger = Arc::clone(&self.ledger);
            // The runners stay alive until their trees are killed and recorded, then go.
            let removed = removed.take().unwrap_or_default();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let killed = tokio::task::spawn_blocking(move || {
                        let killed = trees.kill_all();
                        drop(removed);
                        killed
                    })
                    .await
                    .unwrap_or_default();
                    for name in killed {
                        sandboxed::record(
                            Some(&ledger),
                            "sandbox.killed",
                            &name,
                            "the kill switch ended its whole process tree".into(),
                        );
                    }
                });
            } else {
                trees.kill_all();
                drop(removed);
            }
        }
        // Nothing of the scope left to kill: the runners (none, or already handed over) go
        // off the async threads.
        self.dispose(removed.unwrap_or_default());
        n
    }

    /// The first hold over this call as the error that refuses it, if any; a store that cannot
    /// answer holds everything (fail closed).
    fn hold_error(&self, tenant: &str, agent: &str, session_key: &str) -> Option<ExecError> {
        use warden_core::state::HoldScope as S;
        let holds = self.holds.as_ref()?;
        let scopes = [
            S::Global,
            S::Tenant(tenant.to_owned()),
            S::Agent(agent.to_owned()),
            S::Session(session_key.to_owned()),
        ];
        let (scope, kind, reason) = match holds.holds(&scopes) {
            Ok(h) => {
                // A demotion is settled by the decision (its owner approves each call); it
                // does not hold an approved, granted call.
                let h = h
                    .into_iter()
                    .find(|h| h.kind != warden_core::state::HoldKind::Demote)?;
                (h.scope.to_string(), h.kind.as_str(), h.reason)
            }
            Err(e) => ("everything".into(), "unavailable", e.to_string()),
        };
        Some(ExecError::Held {
            scope,
            kind,
            reason,
        })
    }

    /// Records the receipt of a call that ended without a result, and returns `error`.
    async fn fail(&self, receipt: Entry, error: ExecError) -> Result<Executed, ExecError> {
        // Best effort: the call is refused (or was stopped) whether or not the receipt lands.
        self.record(&receipt).await.ok();
        Err(error)
    }

    /// Stops every upstream.
    pub async fn shutdown(&self) {
        for u in self.upstreams.values() {
            u.stop().await;
        }
        let runners: Vec<Arc<upstream::Upstream>> =
            self.runners().drain().map(|(_, r)| r.up).collect();
        for u in runners {
            u.stop().await;
        }
    }

    /// The runner that serves this caller: for a sandboxed upstream, the one of the caller's
    /// tenant, agent or session (made on first use); otherwise the upstream itself.
    fn runner(
        &self,
        template: &Arc<upstream::Upstream>,
        tenant: &str,
        agent: &str,
        session_key: &str,
    ) -> Result<Arc<upstream::Upstream>, ExecError> {
        use warden_policy::raw::RawRunner;
        let Some(sb) = &template.spec.sandbox else {
            return Ok(Arc::clone(template));
        };
        // INVARIANT (seed 000 §1-2): callers of different boundaries never share a process,
        // a workspace or a network path.
        let boundary = match sb.runner {
            RawRunner::Tenant => boundary_key("tenant", &[tenant]),
            RawRunner::Agent => boundary_key("agent", &[tenant, agent]),
            RawRunner::Session => boundary_key("session", &[tenant, agent, session_key]),
        };
        let name = template.spec.name.clone();
        let now = std::time::Instant::now();
        let mut m = self.runners();
        // Sessions end without telling the Executor: an idle session runner (no call in
        // flight) is destroyed, workspace and all.
        let reaped: Vec<Runner> = take_runners(&mut m, |(_, b), r| {
            b.starts_with("session-")
                && Arc::strong_count(&r.up) == 1
                && now.duration_since(r.last_used) > SESSION_RUNNER_IDLE
        })
        .into_iter()
        .map(|(_, r)| r)
        .collect();
        let key = (name.clone(), boundary.clone());
        if !m.contains_key(&key) && !boundary.starts_with("tenant-") {
            let mine = m
                .iter()
                .filter(|((n, b), r)| *n == name && !b.starts_with("tenant-") && r.tenant == tenant)
                .count();
            if mine >= MAX_RUNNERS_PER_TENANT {
                drop(m);
                self.dispose(reaped);
                return Err(ExecError::Unavailable {
                    upstream: name,
                    why: format!(
                        "tenant `{tenant}` already has {MAX_RUNNERS_PER_TENANT} sandboxed runners of this upstream"
                    ),
                });
            }
        }
        let r = m.entry(key).or_insert_with(|| Runner {
            up: Arc::new(upstream::Upstream::new(
                template.spec.clone(),
                Arc::clone(&self.secrets),
                Arc::clone(&self.redactor),
                Some(Arc::clone(&self.ledger)),
                self.sandbox.clone(),
                Arc::clone(&self.trees),
                boundary,
            )),
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
            session_key: session_key.to_owned(),
            last_used: now,
        });
        r.last_used = now;
        let up = Arc::clone(&r.up);
        drop(m);
        self.dispose(reaped);
        Ok(up)
    }

    /// Destroys the per-session runners of `session_key` (its session ended), workspace and
    /// all.
    pub fn end_session(&self, session_key: &str) {
        let removed: Vec<Runner> = take_runners(&mut self.runners(), |(_, b), r| {
            b.starts_with("session-") && r.session_key == session_key
        })
        .into_iter()
        .map(|(_, r)| r)
        .collect();
        self.dispose(removed);
    }

    /// The runners, by (upstream, boundary).
    fn runners(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerKey, Runner>> {
        // A poisoned map is still the map: recovering keeps boundaries apart (fail closed).
        self.runners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Destroys removed runners off the async threads (killing a tree waits until it is
    /// empty); a session runner's directory goes with it.
    fn dispose(&self, removed: Vec<Runner>) {
        if removed.is_empty() {
            return;
        }
        let dir = self.sandbox.as_ref().map(|c| c.dir.clone());
        let work = move || {
            for r in removed {
                let ephemeral = r.up.boundary.starts_with("session-");
                let path = dir
                    .as_ref()
                    .map(|d| d.join(&r.up.spec.name).join(&r.up.boundary));
                drop(r);
                if let (true, Some(p)) = (ephemeral, path) {
                    let _ = std::fs::remove_dir_all(p);
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }

    /// Runs one granted call.
    ///
    /// Order: the grant is redeemed against exactly this call (its arguments hashed here, from
    /// what will be sent) and the current manifest version; only then is the upstream
    /// reached. Whatever the upstream does after that — a result, an error, a timeout, a
    /// cancellation — a receipt is appended to the ledger; a result is returned only once its
    /// receipt is recorded.
    ///
    /// # Errors
    /// [`ExecError`] naming what stopped the call.
    pub async fn execute(&self, call: Call<'_>) -> Result<Executed, ExecError> {
        let arguments = serde_json::Value::Object(call.arguments);
        let arguments_hash = warden_core::canonical::json_digest(&arguments);
        let started = now_ms();
        // INVARIANT (fail-closed, INV-002): nothing below runs unless this grant verifies for
        // exactly this call under the current manifest, and has not been used.
        let claims = match self.grants.redeem(
            call.grant,
            &warden_identity::Call {
                session: call.session,
                agent: call.agent,
                tool: call.tool,
                arguments_hash: &arguments_hash,
            },
            self.manifest.get(),
            started,
            self.replay.as_ref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                // A refused grant is evidence (a replay, a forgery, a stale decision): recorded,
                // best effort — the call is refused whether or not the record lands.
                let event = Entry::Event(warden_ledger::EventRecord {
                    kind: "grant.refused".into(),
                    agent: call.agent.to_owned(),
                    tenant: call.tenant.to_owned(),
                    session: call.session.to_owned(),
                    reason: format!("tool `{}`: {e}", call.tool),
                    trace_id: call.trace_id.to_owned(),
                    request_id: call.request_id.to_owned(),
                    time: started.div_euclid(1000),
                });
                let _ = self.record(&event).await;
                return Err(ExecError::Grant(e));
            }
        };
        // INVARIANT (kill switch, INV-025): register first, then check holds. An operator's
        // kill sets the hold, then stops what is registered: a call is either stopped, or sees
        // the hold and does not start.
        let session_key = warden_policy::decide::session_key(call.agent, call.session);
        let stop = call.cancel.child_token();
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(
                id,
                InFlight {
                    tenant: call.tenant.to_owned(),
                    agent: call.agent.to_owned(),
                    session_key: session_key.clone(),
                    stop: stop.clone(),
                },
            );
        }
        let _registered = Registered { executor: self, id };
        let (up_name, tool_name) = call
            .tool
            .split_once('.')
            .ok_or_else(|| ExecError::UnknownTool(call.tool.to_owned()))?;
        let template = self
            .upstreams
            .get(up_name)
            .ok_or_else(|| ExecError::UnknownTool(call.tool.to_owned()))?;
        let runner = self.runner(template, call.tenant, call.agent, &session_key);
        let up = match &runner {
            Ok(u) => Arc::clone(u),
            Err(_) => Arc::clone(template),
        };
        let receipt = |status: ReceiptStatus, result_hash: String, redactions: u64| {
            Entry::Receipt(Receipt {
                trace_id: call.trace_id.to_owned(),
                request_id: call.request_id.to_owned(),
                tenant: call.tenant.to_owned(),
                agent: call.agent.to_owned(),
                action: call.tool.to_owned(),
                arguments_hash: arguments_hash.clone(),
                grant: claims.id_hex(),
                approval: None,
                started_at_ms: started,
                ended_at_ms: now_ms(),
                status,
                result_hash,
                executor: format!("mcp:{up_name}"),
                sandbox_profile: up.profile(),
                redactions,
            })
        };
        if let Err(e) = runner {
            return self
                .fail(receipt(ReceiptStatus::Refused, String::new(), 0), e)
                .await;
        }
        if let Some(e) = self.hold_error(call.tenant, call.agent, &session_key) {
            return self
                .fail(receipt(ReceiptStatus::Refused, String::new(), 0), e)
                .await;
        }
        // Starting the upstream may take a while: a kill meanwhile stops the call here.
        let connected = tokio::select! {
            c = up.client() => Some(c),
            () = stop.cancelled() => None,
        };
        let Some(connected) = connected else {
            return self
                .fail(
                    receipt(ReceiptStatus::Killed, String::new(), 0),
                    ExecError::Cancelled,
                )
                .await;
        };
        let (client, tools) = match connected {
            Ok(c) => c,
            Err(e) => {
                return self
                    .fail(receipt(ReceiptStatus::Refused, String::new(), 0), e)
                    .await;
            }
        };
        // INVARIANT (INV-023): only a tool the upstream lists and whose pin holds is called.
        if !tools.iter().any(|t| t.name == tool_name) {
            return self
                .fail(
                    receipt(ReceiptStatus::Refused, String::new(), 0),
                    ExecError::Withdrawn {
                        upstream: up_name.to_owned(),
                        tool: tool_name.to_owned(),
                    },
                )
                .await;
        }
        let mut params = CallToolRequestParams::new(tool_name.to_owned());
        if let serde_json::Value::Object(m) = arguments {
            params.arguments = Some(m);
        }
        // INVARIANT (kill switch, INV-025): last look before anything leaves for the upstream.
        if stop.is_cancelled() {
            return self
                .fail(
                    receipt(ReceiptStatus::Killed, String::new(), 0),
                    ExecError::Cancelled,
                )
                .await;
        }
        if let Some(e) = self.hold_error(call.tenant, call.agent, &session_key) {
            return self
                .fail(receipt(ReceiptStatus::Refused, String::new(), 0), e)
                .await;
        }
        let timeout = std::time::Duration::from_millis(up.spec.timeout_ms);
        let request =
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
        let handle = match client
            .peer()
            .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
            .await
        {
            Ok(h) => h,
            Err(e) => {
                self.record(&receipt(ReceiptStatus::Error, String::new(), 0))
                    .await
                    .ok();
                let why = e.to_string();
                let why = self
                    .redactor
                    .redact_str(&why, call.redact)
                    .map_or(why, |(r, _)| r);
                return Err(upstream_error(up_name, &e, why));
            }
        };
        // Progress: the upstream's notifications carry the token Warden's client gave this
        // request (an agent's token is never passed through, so agents cannot see or steer
        // each other's calls); they are redacted and relayed under the caller's own token.
        let _relay = call.progress.map(|sink| {
            let redactor = Arc::clone(&self.redactor);
            let on = call.redact.clone();
            let relayed: ProgressSink = Arc::new(move |p, t, m: Option<String>| {
                let m = m.map(|m| redactor.redact_str(&m, &on).map_or(m, |(r, _)| r));
                sink(p, t, m);
            });
            up.relay.register(handle.progress_token.clone(), relayed)
        });
        let (request_id, peer) = (handle.id.clone(), handle.peer.clone());
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, handle.await_response()) => Some(r),
            () = stop.cancelled() => None,
        };
        if matches!(outcome, Some(Ok(Ok(_)))) {
            up.answered();
        }
        if !matches!(outcome, Some(Ok(_))) {
            // Cancelled or timed out: tell the upstream to stop.
            let why = if outcome.is_none() {
                "cancelled by the caller"
            } else {
                "timed out"
            };
            let _ = peer
                .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                    Some(request_id),
                    Some(why.to_owned()),
                ))
                .await;
        }
        let mut result = match outcome {
            None => {
                return self
                    .fail(
                        receipt(ReceiptStatus::Killed, String::new(), 0),
                        ExecError::Cancelled,
                    )
                    .await;
            }
            Some(Err(_)) => {
                // The connection itself may be what failed: check it (in the background).
                up.probe(&client);
                return self
                    .fail(
                        receipt(ReceiptStatus::Timeout, String::new(), 0),
                        ExecError::Timeout {
                            upstream: up_name.to_owned(),
                            ms: up.spec.timeout_ms,
                        },
                    )
                    .await;
            }
            Some(Ok(Ok(rmcp::model::ServerResult::CallToolResult(r)))) => r,
            Some(Ok(Ok(_))) => {
                let why =
                    "answered with an input request or a task, which Warden does not relay yet"
                        .to_owned();
                return self
                    .fail(
                        receipt(ReceiptStatus::Error, String::new(), 0),
                        ExecError::Upstream {
                            upstream: up_name.to_owned(),
                            why,
                        },
                    )
                    .await;
            }
            Some(Ok(Err(e))) => {
                // The upstream's own message may quote a secret: redact it too.
                let why = e.to_string();
                let why = self
                    .redactor
                    .redact_str(&why, call.redact)
                    .map_or(why, |(r, _)| r);
                return self
                    .fail(
                        receipt(ReceiptStatus::Error, String::new(), 0),
                        upstream_error(up_name, &e, why),
                    )
                    .await;
            }
        };
        // INVARIANT (INV-010): the result is redacted before the receipt hashes it and before
        // anyone sees it.
        let redactions = self.redact_result(&mut result, call.redact);
        let value = serde_json::to_value(&result).unwrap_or(serde_json::Value::Null);
        let status = if result.is_error == Some(true) {
            ReceiptStatus::Error
        } else {
            ReceiptStatus::Ok
        };
        let index = self
            .record(&receipt(
                status,
                warden_core::canonical::json_digest(&value),
                redactions,
            ))
            .await
            .map_err(ExecError::Receipt)?;
        Ok(Executed {
            result,
            receipt_index: index,
            redactions,
        })
    }

    fn redact_result(&self, result: &mut CallToolResult, on: &BTreeSet<String>) -> u64 {
        // Redact the whole result as JSON (every content block type, structured content,
        // metadata) and read it back: nothing is skipped because of its type.
        let Ok(mut value) = serde_json::to_value(&*result) else {
            // INVARIANT (INV-010, fail closed): what cannot be inspected is not passed on.
            *result = CallToolResult::error(vec![rmcp::model::ContentBlock::text(
                "[REDACTED: the result could not be inspected for secrets]",
            )]);
            return 1;
        };
        let n = self.redactor.redact_json(&mut value, on);
        if n > 0 {
            match serde_json::from_value::<CallToolResult>(value) {
                Ok(r) => *result = r,
                Err(_) => {
                    // A redaction broke a typed field (e.g. base64 data): withhold everything.
                    *result = CallToolResult::error(vec![rmcp::model::ContentBlock::text(
                        "[REDACTED: the result held secrets in a field that cannot be redacted in place]",
                    )]);
                }
            }
        }
        n
    }

    async fn record(&self, entry: &Entry) -> Result<u64, String> {
        let ticket = self.ledger.submit(entry).map_err(|e| e.to_string())?;
        ticket.recorded().await.map_err(|e| {
            tracing::error!(error = %e, "receipt not recorded");
            e.to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::boundary_key;

    #[test]
    fn boundary_keys_separate_kinds_tenants_and_ids() {
        let t = boundary_key("tenant", &["acme"]);
        assert!(t.starts_with("tenant-") && t.len() == "tenant-".len() + 64);
        // The same agent id under two tenants: two runners.
        assert_ne!(
            boundary_key("agent", &["acme", "a"]),
            boundary_key("agent", &["globex", "a"])
        );
        // Ids cannot be shifted between fields.
        assert_ne!(
            boundary_key("session", &["a", "b\u{0}c", "d"]),
            boundary_key("session", &["a", "b", "c\u{0}d"])
        );
        // Nothing of the id reaches the directory name.
        assert!(!boundary_key("session", &["../../etc"]).contains(".."));
    }
}
