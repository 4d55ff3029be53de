//! Wires the Executor: the manifest's upstreams and secrets, the grant keys (verify side), the
//! replay guard for grants, the manifest clock and the ledger for receipts.

use std::path::Path;
use std::sync::Arc;
use warden_executor::{Config, Executor, ManifestClock, Secrets};
use warden_ledger::Ledger;
use warden_policy::manifest::Manifest;

/// Why the Executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The grant keys could not be read.
    #[error(transparent)]
    Keys(#[from] crate::agents::AgentsError),
    /// The redaction patterns could not be built.
    #[error(transparent)]
    Redact(#[from] warden_executor::redact::RedactError),
}

/// Builds the Executor for `manifest` (read from `manifest_path`). Secrets that do not load
/// are logged by name; the upstreams that need them stay down (fail closed), the rest run.
///
/// # Errors
/// [`ExecutionError`].
pub fn build(
    data: &Path,
    manifest_path: &Path,
    manifest: &Manifest,
    ledger: Arc<Ledger>,
    replay: Box<dyn warden_identity::ReplayGuard>,
    clock: Arc<ManifestClock>,
) -> Result<Executor, ExecutionError> {
    let dir = manifest_path.parent().unwrap_or_else(|| Path::new("."));
    let (secrets, errors) = Secrets::load(&manifest.secrets, dir);
    for e in errors {
        tracing::error!(error = %e, "secret not loaded; upstreams that need it will not start");
    }
    Ok(Executor::new(Config {
        upstreams: manifest.upstreams.clone(),
        secrets,
        grants: crate::agents::grant_keys(data)?,
        replay,
        manifest: clock,
        ledger,
    })?)
}
