//! The composition root: one [`Runtime`] assembled from a [`Config`], the same way for
//! `warden serve`, `warden stdio`, the in-process tests and the benchmarks. It opens, in order
//! and failing closed at each step: the manifest and its policies (the Governor), the state
//! store, the Witness ledger (recording key changes since the last start), the identity state,
//! the approval book, and the Executor over the manifest's upstreams (started by
//! [`Runtime::start`]).
//!
//! A front-end holds a `Runtime` and nothing else. Its fields are private to this crate: a
//! front-end can authenticate a caller ([`crate::caller`]), propose a call as that caller
//! ([`crate::governed`]) and ask what the manifest lets it see; it cannot decide, record, mint a
//! grant or reach an upstream, because it has no handle to the Governor's state, the ledger,
//! the grant keys or the Executor.

use std::path::PathBuf;
use std::sync::Arc;
use warden_core::events::{Event, EventQueue};

use warden_executor::{Executor, ManifestClock};
use warden_identity::approval::ApprovalStore;
use warden_identity::ReplayGuard;

/// Where a gateway's data and manifest are, and which shared services it uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory: state, keys, the embedded ledger, sandbox workspaces.
    pub data: PathBuf,
    /// The manifest file (its policy files are found from it).
    pub manifest: PathBuf,
    /// Keep the ledger in this PostgreSQL database instead of `DATA/ledger`.
    pub ledger_postgres: Option<String>,
    /// Where the ledger's signing key is kept (`DATA/keys/ledger.key` by default).
    pub ledger_key: crate::witness::LedgerKey,
    /// When receipts are durable: grouped (the default) or strict.
    pub receipts: warden_ledger::Receipts,
    /// Witnesses outside the data directory the ledger's checkpoints are sent to.
    pub witnesses: Vec<crate::witnessing::WitnessTarget>,
    /// Remember signed-request nonces and redeemed grants in this Redis, shared by instances.
    pub replay_redis: Option<String>,
    /// Keep counters, session history and holds in this Redis, shared by the instances of a
    /// fleet, instead of `DATA/state`.
    pub state_redis: Option<String>,
    /// The prefix of the state's keys in that Redis (one per fleet).
    pub state_prefix: String,
    /// The `warden` binary, whose `sandbox exec` launches sandboxed upstreams.
    pub helper: PathBuf,
    /// Where governed calls' spans go (off unless the `OTEL_*` variables ask:
    /// [`crate::traces::Traces::from_env`]).
    pub traces: crate::traces::Traces,
    /// Whether governed calls are counted and timed for `/metrics` (`warden serve
    /// --no-metrics` turns it off; `warden stdio`, which serves no `/metrics`, too).
    pub metrics: bool,
}

impl Config {
    /// The embedded defaults over `data`: the manifest at `data/manifest.yaml`, the ledger in
    /// `data/ledger`, replay protection in process, and `helper` for sandboxed upstreams.
    #[must_use]
    pub fn embedded(data: &std::path::Path, helper: PathBuf) -> Config {
        Config {
            data: data.to_path_buf(),
            manifest: data.join("manifest.yaml"),
            ledger_postgres: None,
            ledger_key: crate::witness::LedgerKey::DataDir,
            receipts: warden_ledger::Receipts::default(),
            witnesses: Vec::new(),
            replay_redis: None,
            state_redis: None,
            state_prefix: DEFAULT_STATE_PREFIX.to_owned(),
            helper,
            traces: crate::traces::Traces::off(),
            metrics: true,
        }
    }
}

/// The prefix of the state's keys in a shared Redis, unless configured.
pub const DEFAULT_STATE_PREFIX: &str = "warden:state:";

/// Why a gateway could not be assembled. Each is fail-closed: nothing is served.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The manifest or its policies do not load.
    #[error("manifest `{path}` does not load")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Every problem, with file, line and key.
        #[source]
        error: warden_policy::LoadError,
    },
    /// The state store cannot be opened.
    #[error("opening state: {0}")]
    State(#[from] warden_state::OpenError),
    /// The shared state store (Redis) does not answer.
    #[error("opening the shared state store: {0}")]
    SharedState(#[from] warden_core::state::StateError),
    /// The shared event queue (Redis) cannot be set up.
    #[error("opening the shared event queue: {0}")]
    Events(#[from] warden_core::events::EventError),
    /// The Witness ledger cannot be opened (INV-003: no ledger, no gateway).
    #[error("opening the Witness ledger: {0}")]
    Ledger(#[from] crate::witness::WitnessError),
    /// Keys, credentials or the revocation list cannot be read.
    #[error("opening the agent identity state: {0}")]
    Identity(#[from] crate::agents::AgentsError),
    /// The replay store (Redis) cannot be set up.
    #[error("replay protection: {0}")]
    Replay(#[from] warden_identity::ReplayError),
    /// The Executor cannot be set up over the manifest's upstreams.
    #[error("setting up the Executor: {0}")]
    Executor(#[from] crate::execution::ExecutionError),
    /// The brake bus (Redis) cannot be set up.
    #[error("the brake bus: {0}")]
    Brakes(warden_core::brakes::BrakeError),
    /// The shared approval store (Redis) cannot be set up.
    #[error("the approval store: {0}")]
    Approvals(warden_identity::approval::ApprovalError),
    /// The instance's manifest is not the fleet's.
    #[error("the fleet's manifest: {0}")]
    Fleet(crate::fleet::JoinError),
}

/// What the governed path, the operator's actions and the lifecycle share. Crate-private: no
/// front-end sees it.
pub(crate) struct Shared {
    /// The Governor for the current manifest version.
    pub(crate) governor: Arc<crate::current::CurrentGovernor>,
    /// Counters, session history and holds.
    pub(crate) state: Arc<dyn warden_core::state::StateStore>,
    /// The Witness ledger every decision is recorded in.
    pub(crate) ledger: Arc<warden_ledger::Ledger>,
    /// Credentials, revocations, request nonces and the grant keys.
    pub(crate) identity: Arc<crate::agents::IdentityState>,
    /// The Executor: runs granted calls.
    pub(crate) executor: Arc<Executor>,
    /// The manifest version the Executor honours grants for; moved on a reload.
    pub(crate) clock: Arc<ManifestClock>,
    /// Approval requests of escalated calls.
    pub(crate) approvals: Arc<dyn ApprovalStore>,
    /// Consecutive failures per agent (circuit breakers).
    pub(crate) breakers: crate::breakers::Breakers,
    /// SHA-256 of the admin token (`DATA/keys/admin.token`, made at assembly).
    // INVARIANT (separate credential, INV-025): only this token opens the admin API.
    pub(crate) admin_token: [u8; 32],
    /// Events on their way to the webhooks (approval requests, brakes, tripped breakers).
    pub(crate) events: Arc<dyn EventQueue>,
    /// What each session has read (information-flow labels).
    pub(crate) flows: Arc<dyn warden_core::flow::FlowStore>,
    /// What `/metrics` reports.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Carries brakes to every instance.
    pub(crate) brakes: Arc<dyn warden_core::brakes::BrakeBus>,
    /// This instance's listener on it (started by [`Runtime::start`]).
    pub(crate) brake_listener: crate::brakes::Listener,
    /// The fleet's MCP session directory, if it has one.
    pub(crate) sessions: Option<Arc<dyn warden_core::sessions::SessionDirectory>>,
    /// What the fleet's instances tell each other about sessions they both serve.
    pub(crate) notices: Option<Arc<dyn warden_core::sessions::NoticeBus>>,
    /// The fleet's manifest in force, if this instance is one of a fleet.
    pub(crate) fleet: Option<crate::fleet::Fleet>,
    /// What it was assembled from.
    pub(crate) config: Config,
}

impl Shared {
    /// Publishes an event for the webhooks; never waits for its delivery. The ledger already
    /// holds what it announces, so an event the queue refuses is logged and dropped.
    pub(crate) fn publish(&self, kind: &str, text: String, details: serde_json::Value) {
        let event = Event {
            kind: kind.to_owned(),
            text,
            details,
            time: crate::now_unix(),
        };
        if let Err(e) = self.events.publish(event) {
            tracing::warn!(event = kind, error = %e, "notification not queued");
        }
    }
}

/// An assembled gateway. Cheap to clone (one shared value).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The manifest and its policies, as the Governor (fail closed: nothing is assembled without).
fn load(config: &Config) -> Result<warden_policy::Governor, RuntimeError> {
    crate::bundle::load_governor(&config.manifest).map_err(|error| RuntimeError::Manifest {
        path: config.manifest.clone(),
        error,
    })
}

/// Closes the calls a previous run left without a receipt ([`crate::recovery`]) and records
/// this start; with a shared (PostgreSQL) ledger, other instances' calls are in flight, so the
/// scan waits for fleet mode's instance identities.
fn close_interrupted(config: &Config, ledger: &warden_ledger::Ledger) -> Result<(), RuntimeError> {
    if config.ledger_postgres.is_some() {
        tracing::info!("shared ledger: calls interrupted by a crash are not closed at start");
        let adopted = ledger.unsigned_at_open();
        if adopted > 0 {
            let event = warden_ledger::Entry::Event(warden_ledger::EventRecord::about_gateway(
                "ledger.unsigned_tail_adopted",
                format!(
                    "{adopted} entries after the last signed checkpoint adopted and signed now"
                ),
                crate::now_unix(),
            ));
            ledger
                .append(&event)
                .map_err(|e| RuntimeError::Ledger(crate::witness::WitnessError::from(e)))?;
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let r = crate::recovery::close_interrupted(ledger, crate::now_unix_ms())
        .map_err(|e| RuntimeError::Ledger(crate::witness::WitnessError::from(e)))?;
    if r.interrupted > 0 {
        tracing::warn!(
            calls = r.interrupted,
            "calls allowed before the last stop had no receipt: closed as interrupted"
        );
    }
    tracing::info!(
        entries = r.scanned,
        ms = started.elapsed().as_millis(),
        "ledger scanned since the previous start"
    );
    Ok(())
}

/// Events waiting for the webhooks, at most (the embedded queue).
const EVENTS_QUEUED: usize = 1024;

/// A replay guard: Redis (shared by instances) when a URL is given, else in process.
fn replay_guard(
    redis: Option<&str>,
    prefix: &str,
) -> Result<Box<dyn ReplayGuard>, warden_identity::ReplayError> {
    Ok(match redis {
        Some(url) => Box::new(warden_identity::RedisReplayGuard::new(url, prefix)?),
        None => Box::new(warden_identity::MemoryReplayGuard::new()),
    })
}

/// What a Runtime keeps its shared state in, each behind its port: counters, session history
/// and holds ([`warden_core::state::StateStore`]); the Witness ledger (over any
/// [`warden_ledger::LedgerStore`]); the signed-request nonces and the redeemed grants
/// ([`ReplayGuard`]); the approval requests ([`ApprovalStore`]); the revocations
/// ([`warden_identity::RevocationStore`]); the events for the webhooks ([`EventQueue`]).
/// [`Backends::embedded`] is what one Warden on a laptop uses; several instances share Redis
/// and PostgreSQL through the same ports.
pub struct Backends {
    /// Counters, session history and holds.
    pub state: Arc<dyn warden_core::state::StateStore>,
    /// The Witness ledger.
    pub ledger: warden_ledger::Ledger,
    /// Signed-request nonces (each accepted once).
    pub nonces: Box<dyn ReplayGuard>,
    /// Redeemed grants (each honoured once).
    pub redeemed: Box<dyn ReplayGuard>,
    /// Approval requests and their votes (their durations are set from the manifest).
    pub approvals: Arc<dyn ApprovalStore>,
    /// Revoked agents and credentials.
    pub revocations: Arc<dyn warden_identity::RevocationStore>,
    /// What operators are told about, on its way to the webhooks.
    pub events: Arc<dyn EventQueue>,
    /// What each session has read (information-flow labels, `docs/ifc.md`).
    pub flows: Arc<dyn warden_core::flow::FlowStore>,
    /// Carries a brake to every instance's Executor (calls already in flight).
    pub brakes: Arc<dyn warden_core::brakes::BrakeBus>,
    /// Where a fleet's instances find each other's MCP sessions; `None` for an instance alone.
    pub sessions: Option<Arc<dyn warden_core::sessions::SessionDirectory>>,
    /// What a fleet's instances tell each other about MCP sessions they both serve (a
    /// subscription held by one, the session's stream by another); `None` for an instance
    /// alone.
    pub notices: Option<Arc<dyn warden_core::sessions::NoticeBus>>,
    /// Where a fleet agrees on the manifest in force; `None` for an instance alone.
    pub fleet_manifest: Option<Arc<dyn warden_core::fleet_manifest::FleetManifest>>,
    /// Breakers' consecutive-failure counts.
    pub failures: Arc<dyn warden_core::breakers::FailureCounts>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("ledger", &self.ledger.origin())
            .finish_non_exhaustive()
    }
}

/// How long a session's information flow is kept without a call (as its history is, by default).
const FLOWS_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Backends {
    /// The backends `config` names: the state store in `DATA/state`, or in Redis; the ledger in
    /// `DATA/ledger`, or in PostgreSQL; nonces and redeemed grants in process, or in Redis;
    /// approval requests in process, or in the state's Redis; events in process, or in the state's Redis; revocations
    /// in `DATA/revoked`, or in the state's Redis.
    /// Blocks on the ledger: call it outside an async runtime, or on a blocking thread.
    ///
    /// # Errors
    /// [`RuntimeError`] naming the backend that could not be opened.
    pub fn embedded(config: &Config) -> Result<Backends, RuntimeError> {
        // INVARIANT (fail-closed): a shared state store that does not answer at start stops
        // the start; one that stops answering later makes every decision a deny.
        let state: Arc<dyn warden_core::state::StateStore> = match &config.state_redis {
            Some(url) => Arc::new(warden_state::RedisState::connect(
                url,
                &config.state_prefix,
            )?),
            None => Arc::new(warden_state::FileState::open(
                &config.data.join("state"),
                crate::now_unix(),
            )?),
        };
        // INVARIANT (fail-closed, INV-003): without a working ledger the gateway does not start.
        let ledger = crate::witness::open_ledger(
            &config.data,
            config.ledger_postgres.as_deref(),
            &config.ledger_key,
            config.receipts,
        )?;
        Ok(Backends {
            state,
            ledger,
            nonces: replay_guard(config.replay_redis.as_deref(), "warden:nonce:")?,
            redeemed: replay_guard(config.replay_redis.as_deref(), "warden:grant:")?,
            // A fleet's approvals are shared: asked through one instance, voted through a
            // second, run once through any.
            approvals: match &config.state_redis {
                Some(url) => Arc::new(
                    warden_identity::approval::RedisBook::new(
                        url,
                        &config.state_prefix,
                        warden_identity::approval::Settings::default(),
                    )
                    .map_err(RuntimeError::Approvals)?,
                ),
                None => Arc::new(warden_identity::approval::Book::new(
                    warden_identity::approval::Settings::default(),
                )),
            },
            revocations: crate::agents::revocation_store(
                &config.data,
                config
                    .state_redis
                    .as_deref()
                    .map(|url| (url, config.state_prefix.as_str())),
            )?,
            // A fleet's events wait in its Redis, for whichever instance's dispatcher.
            events: match &config.state_redis {
                Some(url) => Arc::new(warden_state::RedisEvents::new(
                    url,
                    &config.state_prefix,
                    EVENTS_QUEUED,
                )?),
                None => Arc::new(warden_state::MemoryEvents::new(EVENTS_QUEUED)),
            },
            // A fleet's sessions may move between instances: their flows are shared too.
            flows: match &config.state_redis {
                Some(url) => Arc::new(warden_state::RedisFlows::new(
                    url,
                    &config.state_prefix,
                    FLOWS_IDLE,
                )?),
                None => Arc::new(warden_state::MemoryFlows::new(FLOWS_IDLE)),
            },
            // A brake applied through one instance stops what runs on all of them.
            brakes: match &config.state_redis {
                Some(url) => Arc::new(
                    warden_state::RedisBrakes::new(url, &config.state_prefix)
                        .map_err(RuntimeError::Brakes)?,
                ),
                None => Arc::new(warden_state::MemoryBrakes::new()),
            },
            // A fleet's MCP sessions continue on any instance.
            sessions: match &config.state_redis {
                Some(url) => Some(Arc::new(
                    warden_state::RedisSessions::new(url, &config.state_prefix)
                        .map_err(RuntimeError::SharedState)?,
                )),
                None => None,
            },
            notices: match &config.state_redis {
                Some(url) => Some(Arc::new(
                    warden_state::RedisNotices::new(url, &config.state_prefix)
                        .map_err(RuntimeError::SharedState)?,
                )),
                None => None,
            },
            // A fleet counts an agent's failures in a row together.
            failures: match &config.state_redis {
                Some(url) => Arc::new(
                    warden_state::RedisFailures::new(url, &config.state_prefix)
                        .map_err(RuntimeError::SharedState)?,
                ),
                None => Arc::new(warden_state::MemoryFailures::new()),
            },
            // Every instance of a fleet serves one manifest.
            fleet_manifest: match &config.state_redis {
                Some(url) => Some(Arc::new(
                    warden_state::RedisFleetManifest::new(url, &config.state_prefix)
                        .map_err(RuntimeError::SharedState)?,
                )),
                None => None,
            },
        })
    }
}

impl Runtime {
    /// Assembles a gateway from `config` over its [`Backends::embedded`] backends. It waits for
    /// the ledger (key changes are recorded before anything is served): call it outside an
    /// async runtime, or on a blocking thread.
    ///
    /// # Errors
    /// [`RuntimeError`] naming the part that could not be opened.
    pub fn open(config: Config) -> Result<Runtime, RuntimeError> {
        let governor = load(&config)?;
        let backends = Backends::embedded(&config)?;
        Runtime::build(config, governor, backends)
    }

    /// Assembles a gateway from `config` over `backends` (what [`Runtime::open`] does with the
    /// embedded ones). Blocks like it.
    ///
    /// # Errors
    /// [`RuntimeError`] naming the part that could not be opened.
    pub fn assemble(config: Config, backends: Backends) -> Result<Runtime, RuntimeError> {
        let governor = load(&config)?;
        Runtime::build(config, governor, backends)
    }

    /// The steps after the manifest loaded, in order: key changes recorded in the ledger, the
    /// identity state, the admin token, the approval store's durations, the Executor.
    fn build(
        config: Config,
        governor: warden_policy::Governor,
        backends: Backends,
    ) -> Result<Runtime, RuntimeError> {
        let Backends {
            state,
            ledger,
            nonces,
            redeemed,
            approvals,
            revocations,
            events,
            flows,
            brakes,
            sessions,
            notices,
            fleet_manifest,
            failures,
        } = backends;
        // A fleet's instance decides over the shared state only while it serves the fleet's
        // manifest; it joins the fleet with the manifest it loaded (or does not start).
        let fleet = fleet_manifest.map(|register| crate::fleet::Fleet {
            register,
            behind: Arc::default(),
        });
        let state: Arc<dyn warden_core::state::StateStore> = match &fleet {
            Some(f) => {
                let shared_ledger = config.ledger_postgres.as_ref().map(|_| ledger.origin());
                f.join(&governor, shared_ledger)
                    .map_err(RuntimeError::Fleet)?;
                Arc::new(crate::fleet::Gated {
                    inner: state,
                    behind: Arc::clone(&f.behind),
                })
            }
            None => state,
        };
        crate::agents::record_key_changes(&config.data, &ledger, crate::now_unix())?;
        close_interrupted(&config, &ledger)?;
        tracing::info!(
            origin = ledger.origin(),
            verifier = %crate::witness::pub_path(&config.data).display(),
            "ledger open"
        );
        tracing::info!(
            manifest = %config.manifest.display(),
            version = governor.manifest().version,
            policy_hash = governor.policy_hash(),
            "manifest loaded"
        );
        approvals.set_settings(crate::approvals::settings(governor.manifest()));
        let identity = crate::agents::IdentityState::open_with(&config.data, nonces, revocations)?;
        let admin_token = crate::operator::load_token_hash(&config.data)?;
        let clock = Arc::new(ManifestClock::new(governor.manifest().version));
        let ledger = Arc::new(ledger);
        let executor = Arc::new(crate::execution::build(
            &config.data,
            &config.helper,
            &config.manifest,
            governor.manifest(),
            Arc::clone(&ledger),
            redeemed,
            Arc::clone(&clock),
            Arc::clone(&state),
            crate::execution::sandbox_config(
                &config.data,
                governor.manifest(),
                config.helper.clone(),
            ),
        )?);
        let metrics = if config.metrics {
            crate::metrics::Metrics::default()
        } else {
            crate::metrics::Metrics::off()
        };
        metrics.watch_ledger(&ledger);
        Ok(Runtime {
            shared: Arc::new(Shared {
                governor: Arc::new(crate::current::CurrentGovernor::new(governor)),
                state,
                ledger,
                identity: Arc::new(identity),
                executor,
                clock,
                approvals,
                breakers: crate::breakers::Breakers::new(failures),
                admin_token,
                events,
                flows,
                metrics,
                brakes,
                brake_listener: crate::brakes::Listener::default(),
                sessions,
                notices,
                fleet,
                config,
            }),
        })
    }

    /// The Prometheus exposition (`GET /metrics` on the admin listener): the governed path's
    /// counters and histograms, and the ledger, holds, approvals and manifest as they are now.
    /// A part that cannot be read is left out (and logged); the rest is still served. `None`
    /// when metrics are off ([`Config::metrics`]).
    pub async fn metrics(&self) -> Option<String> {
        let s = &self.shared;
        if !s.metrics.on() {
            return None;
        }
        let ledger = Arc::clone(&s.ledger);
        let (entries, checkpoint) = tokio::task::spawn_blocking(move || {
            let entries = ledger.size().unwrap_or(0);
            let checkpoint = ledger
                .with_store(|st| st.latest_checkpoint().map_err(Into::into))
                .ok()
                .flatten()
                .and_then(|note| {
                    warden_ledger::note::Checkpoint::open(
                        &note,
                        &ledger.verifier(),
                        ledger.origin(),
                    )
                    .ok()
                });
            (entries, checkpoint)
        })
        .await
        .unwrap_or((0, None));
        let now = crate::now_unix();
        let mut holds = std::collections::BTreeMap::new();
        match s.state.all_holds() {
            Ok(all) => {
                for h in all {
                    *holds.entry(h.kind.as_str()).or_insert(0u64) += 1;
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: holds unreadable"),
        }
        let now_ms = crate::now_unix_ms();
        let pending: Vec<i64> = s
            .approvals
            .list(now_ms)
            .iter()
            .filter(|r| r.status == warden_identity::approval::Status::Pending)
            .map(|r| r.created_ms)
            .collect();
        let scrape = crate::metrics::Scrape {
            ledger_entries: entries,
            checkpoint_age_seconds: checkpoint.map(|c| now - c.time),
            holds,
            approvals_pending: pending.len() as u64,
            oldest_approval_seconds: pending
                .iter()
                .min()
                .map_or(0, |created| (now_ms - created) / 1000),
            manifest_version: s.governor.get().manifest().version,
            executor: s.executor.counted(),
            upstreams: s.executor.health().await,
            spans_dropped: s.config.traces.dropped(),
        };
        Some(scrape.write(&s.metrics))
    }

    /// What it was assembled from.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Brings the gateway up on the current Tokio runtime: starts the manifest's webhooks,
    /// records the approvers in force, records expired approval requests within a second from
    /// now on, and starts the upstreams, waiting up to `wait` for them. Answers the upstreams
    /// still starting (their tools are withheld until they are up).
    pub async fn start(&self, wait: std::time::Duration) -> Vec<(String, String)> {
        self.start_webhooks();
        crate::brakes::listen(&self.shared);
        if let Some(fleet) = &self.shared.fleet {
            crate::fleet::watch(self, fleet.clone());
        }
        crate::witnessing::start(&self.shared.ledger, &self.shared.config.witnesses);
        let governor = self.shared.governor.get();
        crate::approvals::record_approvers(
            &self.shared.ledger,
            governor.manifest(),
            "approvers at start",
        )
        .await;
        let (book, ledger) = (
            Arc::clone(&self.shared.approvals),
            Arc::clone(&self.shared.ledger),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                crate::approvals::record_expired(book.as_ref(), &ledger).await;
            }
        });
        self.shared.executor.start(wait).await
    }

    /// Starts the manifest's webhooks (their HMAC keys are secrets from the manifest's
    /// `secrets`) and the dispatcher that hands them the events.
    fn start_webhooks(&self) {
        let governor = self.shared.governor.get();
        let m = governor.manifest();
        let dir = self
            .shared
            .config
            .manifest
            .parent()
            .unwrap_or(std::path::Path::new("."));
        let (secrets, _) = warden_executor::Secrets::load(&m.secrets, dir);
        let (notifier, errors) =
            crate::notify::Notifier::start(&m.webhooks, |name| secrets.get(name));
        for e in errors {
            tracing::error!("{e}");
        }
        if !m.webhooks.is_empty() {
            tracing::info!(webhooks = m.webhooks.len(), "notifications on");
        }
        notifier.dispatch(Arc::downgrade(&self.shared.events));
    }

    /// Stops the upstreams (the ledger signs its last checkpoint when the last handle goes).
    pub async fn shutdown(&self) {
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || shared.brake_listener.stop()).await;
        self.shared.executor.shutdown().await;
        // The last spans are exported (waiting up to 5 s for the collector, off the reactor).
        let traces = self.shared.config.traces.clone();
        if traces.on() {
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
    }

    /// Loads the manifest file again and swaps it in whole if it loads, is newer, and (with
    /// `governance`) was approved; records what happened either way. Answers the version now in
    /// force, or why the reload was refused.
    ///
    /// # Errors
    /// Why the new manifest was not swapped in (the current one stays in force).
    pub async fn reload(&self) -> Result<u64, crate::governance::ChangeError> {
        let s = &self.shared;
        let old = s.governor.get();
        let before = crate::approvals::approver_summary(old.manifest());
        let (c, m, k, b, fleet) = (
            Arc::clone(&s.governor),
            s.config.manifest.clone(),
            Arc::clone(&s.clock),
            Arc::clone(&s.approvals),
            s.fleet.clone(),
        );
        let reloaded = tokio::task::spawn_blocking(move || {
            // A bundle the fleet already serves was admitted (and its approval used) by the
            // instance that published it.
            let served = crate::fleet::served(&c.get());
            let admitted = |v: u64, bundle: &str| match &fleet {
                Some(f) => f.admits(&served, v, bundle),
                None => Ok(false),
            };
            let out = crate::execution::reload(&c, &k, &m, b.as_ref(), &admitted);
            if let (Ok(_), Some(f)) = (&out, &fleet) {
                let now = crate::fleet::served(&c.get());
                match f.register.publish(&now) {
                    Ok(warden_core::fleet_manifest::Published::Stored | warden_core::fleet_manifest::Published::Same) => {}
                    Ok(other) => tracing::error!(?other, "the reloaded manifest is not the fleet's"),
                    Err(e) => tracing::warn!(error = %e, "could not publish the reloaded manifest to the fleet (tried again every second)"),
                }
            }
            out
        })
        .await;
        match reloaded {
            Ok(Ok((v, approval))) => {
                tracing::info!(version = v, "manifest reloaded");
                let now = s.governor.get();
                // Every swap is recorded with what came in, governed or not (the decisions
                // after it cite the version; this says when and from what).
                let swapped = crate::witness::record(
                    &s.ledger,
                    "manifest.reloaded",
                    crate::witness::About::governance(),
                    format!(
                        "manifest version {v} (bundle {}) in force, after version {} (bundle {})",
                        now.policy_hash(),
                        old.manifest().version,
                        old.policy_hash()
                    ),
                )
                .await;
                if !swapped {
                    tracing::error!(
                        version = v,
                        "the manifest swap is in force but not recorded"
                    );
                }
                crate::promotion::record_raised(&s.ledger, old.manifest(), now.manifest()).await;
                if let Some(r) = approval {
                    crate::witness::record(
                        &s.ledger,
                        "governance.applied",
                        crate::witness::About::governance(),
                        format!(
                            "manifest version {v} (bundle {}) swapped in, approved by {} (approval {})",
                            r.binding.arguments_hash,
                            r.approved_by().join(", "),
                            r.id
                        ),
                    )
                    .await;
                }
                // An approver's key rotated, or approvers changed: recorded.
                if crate::approvals::approver_summary(now.manifest()) != before {
                    crate::approvals::record_approvers(
                        &s.ledger,
                        now.manifest(),
                        "approvers changed by a manifest reload",
                    )
                    .await;
                }
                Ok(v)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "manifest reload refused");
                let about = crate::witness::About::governance();
                crate::witness::record(&s.ledger, "manifest.reload_refused", about, e.to_string())
                    .await;
                Err(e)
            }
            Err(e) => {
                tracing::error!(error = %e, "manifest reload failed");
                Err(crate::governance::ChangeError::Interrupted(e.to_string()))
            }
        }
    }

    /// The manifest in force, to read (what the operator's CLI prints and enrols at start):
    /// the manifest alone, never the Governor that decides on it.
    #[must_use]
    pub fn manifest(&self) -> InForce {
        InForce(self.shared.governor.get())
    }

    /// The version, policy hash and sizes of the manifest in force.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let g = self.shared.governor.get();
        let m = g.manifest();
        Summary {
            manifest_version: m.version,
            policy_hash: g.policy_hash().to_owned(),
            agents: m.agents.len(),
            tools: m.tools.len(),
            policies: g.cedar().policy_count,
        }
    }

    /// The longest a call may wait for its approval (the manifest's `approvals.wait_seconds`).
    #[must_use]
    pub fn max_wait_secs(&self) -> u64 {
        self.shared.governor.get().manifest().approvals.wait_secs
    }

    /// The tools `caller` may see (its tenant, zone and trust level, and its credential's tool
    /// list: seed 003), as the upstreams describe them.
    #[must_use]
    pub fn visible_tools(&self, caller: &crate::caller::Caller) -> Vec<rmcp::model::Tool> {
        let governor = self.shared.governor.get();
        let identity = caller.identity();
        self.shared
            .executor
            .tools()
            .into_iter()
            .filter(|t| {
                governor.may_see(&identity.agent, &t.name)
                    && identity
                        .tools
                        .as_ref()
                        .is_none_or(|allowed| allowed.contains(t.name.as_ref()))
            })
            .collect()
    }

    /// Where the fleet's instances find each other's MCP sessions (`None` for an instance
    /// alone): the MCP front-end publishes its sessions there and continues those it finds.
    #[must_use]
    pub fn session_directory(&self) -> Option<Arc<dyn warden_core::sessions::SessionDirectory>> {
        self.shared.sessions.clone()
    }

    /// What the fleet's instances tell each other about MCP sessions they both serve (`None`
    /// for an instance alone, which holds all of its sessions).
    #[must_use]
    pub fn session_notices(&self) -> Option<Arc<dyn warden_core::sessions::NoticeBus>> {
        self.shared.notices.clone()
    }

    /// An HTTP client for another instance of this fleet at `url`, to pass it a request that
    /// only it can serve (the Executor's client: verified TLS against the system's roots for
    /// https, no redirect followed, no environment proxy).
    ///
    /// # Errors
    /// The system's roots cannot be read (for an https URL), or the client cannot be built.
    pub fn fleet_client(
        &self,
        url: &str,
    ) -> Result<reqwest::Client, warden_executor::tls::TlsError> {
        warden_executor::tls::http_client(url, None)
    }

    /// Ends a session's per-session sandbox runners (`key` from
    /// [`warden_core::state::session_key`]).
    pub fn end_session(&self, key: &str) {
        self.shared.executor.end_session(key);
    }

    /// The operator's powers over this gateway (brakes, approvals, governance, trust), for the
    /// admin listener.
    #[must_use]
    pub fn operator(&self) -> crate::operator::Operator {
        crate::operator::Operator {
            runtime: self.clone(),
        }
    }
}

/// The manifest in force, read-only ([`Runtime::manifest`]).
#[derive(Debug, Clone)]
pub struct InForce(Arc<warden_policy::Governor>);

impl std::ops::Deref for InForce {
    type Target = warden_policy::manifest::Manifest;

    fn deref(&self) -> &Self::Target {
        self.0.manifest()
    }
}

/// The manifest in force, in numbers (`GET /v1/manifest`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Its version.
    pub manifest_version: u64,
    /// The hash of its policies.
    pub policy_hash: String,
    /// How many agents it lists.
    pub agents: usize,
    /// How many tools it lists.
    pub tools: usize,
    /// How many Cedar policies are in force.
    pub policies: usize,
}
