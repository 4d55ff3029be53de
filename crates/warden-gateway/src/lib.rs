//! # warden-gateway
//!
//! The composition root: the one crate that touches the file system and the network on the
//! Governor's behalf and wires the pieces together. The binary (`warden-cli`) and the
//! integration tests both use it.
//!
//! - [`runtime`]: [`runtime::Runtime::open`], the one place a gateway is assembled from its
//!   configuration (`warden serve` and `warden stdio` both start there);
//! - [`keyfile`]: how secrets and public keys are written and read in the data directory;
//! - [`current`]: the current Governor, swapped whole on a new manifest version;
//! - [`bundle`]: reads a manifest and its Cedar policy files from disk and builds a
//!   [`warden_policy::Governor`];
//! - [`starter`]: the starter manifest `warden init` writes;
//! - [`server`]: the HTTP API (`/healthz`, `/v1/manifest`, `/v1/sessions`, `/v1/proposals`) over
//!   a Governor, a state store and the ledger;
//! - [`dry_run`]: `/v1/decide`, the Governor's answer with nothing charged, recorded or run;
//! - [`witness`]: opens the Witness ledger (key and store) from the data directory;
//! - [`demo`]: `warden demo-server`, the starter manifest's harmless upstream;
//! - [`execution`]: builds the Executor from the manifest's upstreams and secrets;
//! - [`path`]: the governed path shared by every front-end (decide, record, grant, execute,
//!   re-decide once if the manifest moved on);
//! - [`mcp`]: the MCP front-end (Streamable HTTP at `/mcp`, and stdio), which turns `tools/call`
//!   into proposals and runs allowed calls through the Executor;
//! - [`admin`]: the admin listener (kill switch, quarantine, lockdown, resume);
//! - [`agents`]: the Governor key, agent enrolment and revocation, the identity state of the
//!   signed-proposal API.

pub mod admin;
pub mod agents;
pub mod approvals;
pub mod breakers;
pub mod bundle;
pub mod current;
pub mod demo;
pub mod dry_run;
pub mod execution;
pub mod governance;
pub mod keyfile;
pub mod mcp;
pub mod notify;
pub mod path;
pub mod process;
pub mod promotion;
pub mod runtime;
pub mod server;
pub mod sessions;
pub mod starter;
pub mod witness;

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
