//! The composition root: one [`Runtime`] assembled from a [`Config`], the same way for
//! `warden serve`, `warden stdio` and any in-process gateway. It opens, in order and failing
//! closed at each step: the manifest and its policies (the Governor), the state store, the
//! Witness ledger (recording key changes since the last start), the identity state, the
//! approval book, and the Executor over the manifest's upstreams (not started: see
//! [`warden_executor::Executor::start`]).
//!
//! What is not here yet (issue 19): backends other than the embedded ones behind one
//! `Backends` value, and front-ends that receive only the Runtime (they still take its
//! [`AppState`] and Executor).

use std::path::PathBuf;
use std::sync::Arc;

use warden_executor::{Executor, ManifestClock};
use warden_identity::ReplayGuard;

use crate::server::AppState;

/// Where a gateway's data and manifest are, and which shared services it uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory: state, keys, the embedded ledger, sandbox workspaces.
    pub data: PathBuf,
    /// The manifest file (its policy files are found from it).
    pub manifest: PathBuf,
    /// Keep the ledger in this PostgreSQL database instead of `DATA/ledger`.
    pub ledger_postgres: Option<String>,
    /// Remember signed-request nonces and redeemed grants in this Redis, shared by instances.
    pub replay_redis: Option<String>,
    /// The `warden` binary, whose `sandbox exec` launches sandboxed upstreams.
    pub helper: PathBuf,
}

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
}

/// An assembled gateway.
#[derive(Clone)]
pub struct Runtime {
    /// What the front-ends and the governed path share.
    pub app: AppState,
    /// The Executor (also in `app`), to start, list tools and shut down.
    pub executor: Arc<Executor>,
    /// The manifest version the Executor honours grants for; moved on a reload.
    pub clock: Arc<ManifestClock>,
    /// What it was assembled from.
    pub config: Config,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

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

impl Runtime {
    /// Assembles a gateway from `config`. It waits for the ledger (key changes are recorded
    /// before anything is served): call it outside an async runtime, or on a blocking thread.
    ///
    /// # Errors
    /// [`RuntimeError`] naming the part that could not be opened.
    pub fn open(config: Config) -> Result<Runtime, RuntimeError> {
        let governor = crate::bundle::load_governor(&config.manifest).map_err(|error| {
            RuntimeError::Manifest {
                path: config.manifest.clone(),
                error,
            }
        })?;
        let state = warden_state::FileState::open(&config.data.join("state"), crate::now_unix())?;
        // INVARIANT (fail-closed, INV-003): without a working ledger the gateway does not start.
        let ledger = crate::witness::open_ledger(&config.data, config.ledger_postgres.as_deref())?;
        crate::agents::record_key_changes(&config.data, &ledger, crate::now_unix())?;
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
        let approvals = crate::approvals::settings(governor.manifest());
        let identity = crate::agents::IdentityState::open_with(
            &config.data,
            replay_guard(config.replay_redis.as_deref(), "warden:nonce:")?,
        )?;
        let clock = Arc::new(ManifestClock::new(governor.manifest().version));
        let state: Arc<dyn warden_core::state::StateStore> = Arc::new(state);
        let ledger = Arc::new(ledger);
        let executor = Arc::new(crate::execution::build(
            &config.data,
            &config.manifest,
            governor.manifest(),
            Arc::clone(&ledger),
            replay_guard(config.replay_redis.as_deref(), "warden:grant:")?,
            Arc::clone(&clock),
            Arc::clone(&state),
            crate::execution::sandbox_config(
                &config.data,
                governor.manifest(),
                config.helper.clone(),
            ),
        )?);
        let app = AppState {
            governor: Arc::new(crate::current::CurrentGovernor::new(governor)),
            state,
            ledger,
            identity: Arc::new(identity),
            // The native API runs allowed signed proposals through the same Executor.
            executor: Some(Arc::clone(&executor)),
            approvals: Arc::new(warden_identity::approval::Book::new(approvals)),
            breakers: Arc::default(),
            notifier: crate::notify::Notifier::default(),
        };
        Ok(Runtime {
            app,
            executor,
            clock,
            config,
        })
    }

    /// The admin listener's state over this gateway (the token in `DATA/keys/admin.token`,
    /// made on first use).
    ///
    /// # Errors
    /// [`RuntimeError::Identity`] if the admin token cannot be read or made.
    pub fn admin(&self) -> Result<crate::admin::AdminState, RuntimeError> {
        Ok(crate::admin::AdminState {
            state: Arc::clone(&self.app.state),
            ledger: Arc::clone(&self.app.ledger),
            token_hash: crate::admin::load_token_hash(&self.config.data)?,
            executor: Some(Arc::clone(&self.executor)),
            approvals: Arc::clone(&self.app.approvals),
            governor: Arc::clone(&self.app.governor),
            manifest_path: Some(self.config.manifest.clone()),
            notifier: self.app.notifier.clone(),
        })
    }
}
