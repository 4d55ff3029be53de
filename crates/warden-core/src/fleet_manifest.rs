//! The fleet's manifest in force: which manifest version (and exact bundle) every instance of
//! a fleet serves (issue 22). Each instance loads the manifest from its own files; the register
//! is where the fleet agrees on which one is in force. An instance publishes the bundle it
//! serves once it is swapped in; an instance that finds the fleet ahead of it reloads its files
//! and, until they give the fleet's bundle, decides nothing (fail closed: no instance serves an
//! older manifest than the fleet's).
//!
//! Implementations: `warden_state::MemoryFleetManifest` (in process) and
//! `warden_state::RedisFleetManifest` (a fleet); one conformance suite,
//! `crates/warden-state/tests/fleet_manifest.rs`. An instance alone keeps none.

use crate::state::StateError;

/// A manifest as served: its version and the hash of its bundle (manifest and policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The manifest's `version`.
    pub version: u64,
    /// The bundle's hash (`sha256:...`).
    pub bundle: String,
}

/// What publishing a served manifest found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// It is now the fleet's (the first, or newer than what the fleet had).
    Stored,
    /// The fleet already serves exactly it.
    Same,
    /// The fleet serves a newer version: this one is behind.
    Behind(Served),
    /// The fleet serves the same version with another bundle: two different manifests carry
    /// one version number.
    Conflict(Served),
}

/// Where a fleet's instances agree on the manifest in force.
pub trait FleetManifest: Send + Sync {
    /// Offers `served` as the fleet's manifest in force: stored only if it is newer than the
    /// fleet's (or the fleet has none).
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the register cannot be reached or holds something
    /// Warden did not write.
    fn publish(&self, served: &Served) -> Result<Published, StateError>;

    /// The fleet's manifest in force, if any was published.
    ///
    /// # Errors
    /// As [`FleetManifest::publish`].
    fn current(&self) -> Result<Option<Served>, StateError>;

    /// Offers `origin` as the origin of the fleet's one shared ledger: kept if the fleet has
    /// none; `Some(theirs)` if the fleet's is another (this instance would write a log of its
    /// own into the shared store).
    ///
    /// # Errors
    /// As [`FleetManifest::publish`].
    fn agree_ledger(&self, origin: &str) -> Result<Option<String>, StateError>;
}

/// What `publish` decides for `offered` against the fleet's `current`: shared by every
/// implementation that can compute it in place.
#[must_use]
pub fn compare(current: Option<&Served>, offered: &Served) -> Published {
    match current {
        None => Published::Stored,
        Some(c) if offered.version > c.version => Published::Stored,
        Some(c) if offered.version == c.version && offered.bundle == c.bundle => Published::Same,
        Some(c) if offered.version == c.version => Published::Conflict(c.clone()),
        Some(c) => Published::Behind(c.clone()),
    }
}
