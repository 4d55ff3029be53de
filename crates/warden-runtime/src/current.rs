//! The current Governor, swapped in whole when a new manifest version is loaded.
//!
//! Each decision takes the `Arc` of the Governor current when it starts and finishes under it
//! (its record cites that version); the next decision sees the new one. Grants carry the version
//! they were decided under, and are not honored once it is no longer current (docs/grants.md).

use std::path::Path;
use std::sync::{Arc, RwLock};

use warden_policy::Governor;

/// Why a new manifest was not swapped in. The current one stays in force.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// It does not load.
    #[error("the new manifest does not load: {0}")]
    Load(String),
    /// Its version does not move forward (a rollback or a forgotten bump).
    #[error("manifest version {new} is not newer than the current {current}; not swapped")]
    NotNewer {
        /// Current version.
        current: u64,
        /// Offered version.
        new: u64,
    },
    /// The lock is poisoned.
    #[error("governor lock poisoned")]
    Poisoned,
}

/// Holds the current Governor.
#[derive(Debug)]
pub struct CurrentGovernor {
    // INVARIANT (atomic manifest updates): replaced whole, never mutated in place.
    inner: RwLock<Arc<Governor>>,
    /// The version in force, for whoever waits for a swap (clients told to list again).
    version: tokio::sync::watch::Sender<u64>,
}

impl CurrentGovernor {
    /// Starts with `g`.
    #[must_use]
    pub fn new(g: Governor) -> Self {
        let version = tokio::sync::watch::Sender::new(g.manifest().version);
        CurrentGovernor {
            inner: RwLock::new(Arc::new(g)),
            version,
        }
    }

    /// The Governor current now. A poisoned lock still yields the last Governor swapped in
    /// (swaps replace a whole `Arc`, so it is never half-written).
    #[must_use]
    pub fn get(&self) -> Arc<Governor> {
        match self.inner.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Swaps in `g` if its manifest version is newer than the current one.
    ///
    /// # Errors
    /// [`SwapError::NotNewer`]; the current Governor stays.
    pub fn swap(&self, g: Governor) -> Result<u64, SwapError> {
        let mut cur = self.inner.write().map_err(|_| SwapError::Poisoned)?;
        let (current, new) = (cur.manifest().version, g.manifest().version);
        if new <= current {
            return Err(SwapError::NotNewer { current, new });
        }
        *cur = Arc::new(g);
        drop(cur);
        self.version.send_replace(new);
        Ok(new)
    }

    /// Sees each swap from now on (the version swapped in).
    #[must_use]
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Loads the bundle at `manifest` and swaps it in. Ungoverned: the serving path reloads
    /// through [`crate::execution::reload`], which enforces the manifest's `governance`.
    ///
    /// # Errors
    /// [`SwapError`]; the current Governor stays.
    pub fn reload(&self, manifest: &Path) -> Result<u64, SwapError> {
        let g = crate::bundle::load_governor(manifest).map_err(|e| {
            SwapError::Load(
                e.diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        self.swap(g)
    }
}
