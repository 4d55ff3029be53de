//! # warden-runtime
//!
//! The one governed path and the composition root. A [`Runtime`] is assembled once from a
//! [`Config`] ([`Runtime::open`]) — by `warden serve`, `warden stdio`, the in-process tests and
//! the benchmarks alike — and is all a front-end holds: it authenticates callers
//! ([`caller`]), governs their calls from proposal to answer ([`governed`]: evidence, the
//! Governor's decision, record, grant, execute, receipt, write back) and gives the operator
//! its powers ([`operator`]). Front-ends cannot reach the Governor's state, the ledger, the
//! grant keys or the Executor: those are private to this crate.
//!
//! Reading order: [`runtime`] (what is assembled, in which order), [`caller`], [`governed`],
//! then what they use:
//!
//! - [`catalog`]: the resources and prompts an agent may see, and reads as proposals;
//! - [`catalog_changes`]: which lists a client should read again;
//! - [`approvals`]: approval requests as the Governor's evidence, and their records;
//! - [`breakers`]: consecutive failures per agent, and what a tripped breaker does;
//! - [`promotion`]: demotion on a violation, restoration and earned promotion;
//! - [`dry_run`]: the read-only state `/v1/decide` decides over;
//! - [`operator`]: brakes, approval votes, governance proposals, trust;
//! - [`governance`]: manifest changes that need the approval of that exact bundle;
//! - [`current`]: the current Governor, swapped whole on a new manifest version;
//! - [`bundle`]: reads a manifest and its Cedar policy files and builds the Governor;
//! - [`execution`]: builds the Executor from the manifest's upstreams and secrets;
//! - [`witness`]: opens the Witness ledger (key and store) and records events;
//! - [`recovery`]: at start-up, calls a crash left without a receipt are closed as
//!   `interrupted`;
//! - [`agents`]: the Governor key, agent enrolment and revocation;
//! - [`revocations`]: `DATA/revoked`, the embedded revocation store;
//! - [`keyfile`]: how secrets and public keys are written and read in the data directory;
//! - [`notify`]: the webhooks (approval requests, brakes, tripped breakers);
//! - [`starter`]: the starter manifest `warden init` writes.

pub mod agents;
pub mod approvals;
pub mod brakes;
pub mod breakers;
pub mod bundle;
pub mod caller;
pub mod catalog;
pub mod catalog_changes;
pub mod current;
pub mod dry_run;
pub mod execution;
pub mod fleet;
pub mod flows;
pub mod governance;
pub mod governed;
pub mod keyfile;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod otlp;
pub mod promotion;
pub mod recovery;
pub mod replay;
pub mod revocations;
pub mod runtime;
pub mod starter;
pub mod traces;
pub mod witness;
pub mod witnessing;

pub use caller::{Caller, Refusal, RefusalKind};
pub use flows::TaskRefused;
pub use governed::{Call, Outcome};
pub use runtime::{Backends, Config, Runtime, RuntimeError};
/// What a call that ran answered (a tool result, a resource's contents, a prompt's messages),
/// and the agent's client as the requests of the upstream serving a call reach it.
pub use warden_executor::{Answer, ClientSide, Subscription, UpdateSink};
pub use warden_manifest::raw::ClientRequestKind;

/// Current Unix time in milliseconds (approvals and grants).
#[must_use]
pub fn now_unix_ms() -> i64 {
    now_unix().saturating_mul(1000)
}

/// Current Unix time in seconds (the only clock the decision path uses).
#[must_use]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
