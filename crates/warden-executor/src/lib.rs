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
//! - `execution` (private): [`Executor::execute`], one granted call, step by step;
//! - `in_flight` (private): the calls in flight, which the kill switch stops;
//! - `runners` (private): the sandboxed upstreams' runners, one per boundary;
//! - `upstream` (private): stdio children and their MCP client sessions.

mod catalog;
pub mod client_requests;
pub mod counters;
mod execution;
mod in_flight;
mod list_changes;
mod logs_in_order;
pub mod redact;
mod runners;
mod sandboxed;
pub mod secrets;
pub mod tls;
mod traced_http;
mod upstream;

use rmcp::model::{CallToolResult, Tool};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use warden_identity::{GrantError, GrantKeys, ReplayGuard};
use warden_ledger::Ledger;

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
        let on: BTreeSet<String> = warden_manifest::upstream::CREDENTIAL_DETECTORS
            .iter()
            .chain(warden_manifest::upstream::PII_DETECTORS)
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
pub use catalog::{Boundary, Subscription, UpdateSink};
pub use client_requests::ClientSide;
pub use list_changes::ListChanged;
pub use sandboxed::SandboxConfig;
pub use secrets::Secrets;
pub use upstream::{hash_file, ConnectError, Observed, ProgressSink};

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
    /// The federated name, `<upstream>.<tool>` (or of a resource or prompt entry).
    pub tool: &'a str,
    /// What the granted entry is: a tool called, a resource read (its `uri` argument), a
    /// prompt got. Taken from the manifest entry the grant names, never from the agent.
    pub kind: warden_core::ActionKind,
    /// Whether the entry is used or one of its arguments completed (`completion/complete`,
    /// the arguments then a [`warden_core::Completing`]), as decided.
    pub operation: warden_core::Operation,
    /// The arguments that run (their hash must be the granted one).
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Trace id (receipt).
    pub trace_id: &'a str,
    /// The W3C `traceparent` the upstream is sent (in the call's `_meta`, and as an HTTP header
    /// to a Streamable HTTP upstream) when the call is traced; its parent is the upstream span.
    pub traceparent: Option<&'a str>,
    /// Request id of the decision (receipt).
    pub request_id: &'a str,
    /// Detectors the manifest turns on for this tool.
    pub redact: &'a BTreeSet<String>,
    /// Fires when the caller cancels.
    pub cancel: CancellationToken,
    /// Where the upstream's progress notifications go (the caller asked for progress).
    pub progress: Option<ProgressSink>,
    /// The agent's client, for what the upstream asks of it while serving this call
    /// (sampling, elicitation, roots, log messages); `None` where the connection cannot
    /// carry them.
    pub client: Option<Arc<dyn ClientSide>>,
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

/// What an upstream answered, by the kind of action.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A tool's result.
    Tool(CallToolResult),
    /// A resource's contents.
    Resource(rmcp::model::ReadResourceResult),
    /// A prompt's messages.
    Prompt(rmcp::model::GetPromptResult),
    /// An argument's completions.
    Completion(rmcp::model::CompleteResult),
}

impl Answer {
    /// Whether the upstream reported a failure in it (only tool results can).
    #[must_use]
    pub fn is_error(&self) -> bool {
        matches!(self, Answer::Tool(r) if r.is_error == Some(true))
    }

    /// What its receipt cites: the digest of [`Answer::to_value`], taken from the typed result
    /// without building that value.
    #[must_use]
    pub fn digest(&self) -> String {
        use warden_core::canonical::typed_digest;
        let d = match self {
            Answer::Tool(r) => typed_digest(r),
            Answer::Resource(r) => typed_digest(r),
            Answer::Prompt(r) => typed_digest(r),
            Answer::Completion(r) => typed_digest(r),
        };
        d.unwrap_or_else(|_| warden_core::canonical::json_digest(&serde_json::Value::Null))
    }

    /// Its digest (as [`Answer::digest`]) if `pass` holds for every string in it, member names
    /// included, and every number as written; `None` if one fails (or it is one only its
    /// `Value` can be written from).
    pub fn digest_if_every_string_and_number(
        &self,
        pass: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        use warden_core::canonical::digest_if_every_string_and_number as checked;
        match self {
            Answer::Tool(r) => checked(r, pass),
            Answer::Resource(r) => checked(r, pass),
            Answer::Prompt(r) => checked(r, pass),
            Answer::Completion(r) => checked(r, pass),
        }
    }

    /// It as JSON (what the native API returns; its canonical form is what the receipt hashes).
    #[must_use]
    pub fn to_value(&self) -> serde_json::Value {
        let v = match self {
            Answer::Tool(r) => serde_json::to_value(r),
            Answer::Resource(r) => serde_json::to_value(r),
            Answer::Prompt(r) => serde_json::to_value(r),
            Answer::Completion(r) => serde_json::to_value(r),
        };
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// A call that ran.
#[derive(Debug)]
pub struct Executed {
    /// The redacted result, as the agent may see it.
    pub result: Answer,
    /// Where its receipt is in the ledger.
    pub receipt_index: u64,
    /// How many values were redacted.
    pub redactions: u64,
}

/// When an execution's stages ran (for the stage histograms and the trace's spans); a stage
/// the execution did not reach is `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    /// The upstream's `tools/call`, from sending it to its answer (or timeout, or cancel).
    pub upstream: Option<Interval>,
    /// The result redacted.
    pub redaction: Option<Interval>,
    /// The receipt recorded (written, or synced under strict receipts).
    pub receipt: Option<Interval>,
}

/// A stage's start and end.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    /// When it started.
    pub start: std::time::Instant,
    /// When it ended.
    pub end: std::time::Instant,
}

impl Interval {
    /// From `start` to now.
    #[must_use]
    pub fn since(start: std::time::Instant) -> Interval {
        Interval {
            start,
            end: std::time::Instant::now(),
        }
    }

    /// How long it took.
    #[must_use]
    pub fn elapsed(&self) -> std::time::Duration {
        self.end.saturating_duration_since(self.start)
    }
}

/// What became of one execution, and when its stages ran.
#[derive(Debug)]
pub struct Timed {
    /// The call's result, or why it did not complete.
    pub result: Result<Executed, ExecError>,
    /// Its stages.
    pub stages: Stages,
}

/// What the Executor needs.
#[expect(
    missing_debug_implementations,
    reason = "holds grant keys and secrets, which are never printed"
)]
pub struct Config {
    /// The upstreams of the manifest.
    pub upstreams: Vec<warden_manifest::upstream::Upstream>,
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
/// The Executor.
pub struct Executor {
    upstreams: BTreeMap<String, Arc<upstream::Upstream>>,
    redactor: Arc<Redactor>,
    grants: GrantKeys,
    replay: Box<dyn ReplayGuard>,
    manifest: Arc<ManifestClock>,
    ledger: Arc<Ledger>,
    holds: Option<Arc<dyn warden_core::state::StateStore>>,
    inflight: std::sync::Mutex<std::collections::HashMap<u64, in_flight::InFlight>>,
    next_call: AtomicU64,
    trees: Arc<sandboxed::Trees>,
    /// Sandboxed upstreams' runners, one per boundary (tenant, agent or session).
    runners: std::sync::Mutex<HashMap<runners::RunnerKey, runners::Runner>>,
    secrets: Arc<Secrets>,
    sandbox: Option<SandboxConfig>,
    counters: Arc<counters::Counters>,
    /// Where upstreams announce changes to their lists.
    changes: list_changes::ListChanges,
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
    upstreams: Vec<warden_manifest::upstream::Upstream>,
    secrets: Secrets,
    sandbox: Option<SandboxConfig>,
) -> Result<Vec<(String, Result<Observed, ConnectError>)>, redact::RedactError> {
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
            upstream::Common::default(),
            sandboxed::Boundary::unowned("_pin"),
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
        let counters = Arc::new(counters::Counters::default());
        let changes = list_changes::ListChanges::default();
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
                        upstream::Common {
                            trees: Arc::clone(&trees),
                            counters: Arc::clone(&counters),
                            changes: changes.clone(),
                        },
                        sandboxed::Boundary::unowned("_tools"),
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
            counters,
            changes,
        })
    }

    /// Announcements of upstreams' list changes from now on (a listener that falls behind
    /// gets `Lagged`: take every list as changed).
    #[must_use]
    pub fn list_changes(&self) -> tokio::sync::broadcast::Receiver<ListChanged> {
        self.changes.listen()
    }

    /// What it has counted (sandbox launches, egress connections, tools withdrawn).
    #[must_use]
    pub fn counted(&self) -> counters::Counted {
        self.counters.read()
    }

    /// Whether each upstream's tools are served now (its server connected), by name. Waits at
    /// most 100 ms for an upstream busy starting (then counted as not serving).
    pub async fn health(&self) -> Vec<(String, bool)> {
        let mut out = Vec::with_capacity(self.upstreams.len());
        for (name, u) in &self.upstreams {
            out.push((name.clone(), u.serving_now().await));
        }
        out
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
                out.extend(tools.iter().map(|t| {
                    let mut t = t.clone();
                    t.name = format!("{name}.{}", t.name).into();
                    t
                }));
            }
        }
        out
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
}
