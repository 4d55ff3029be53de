//! The fleet's manifest in force kept in process ([`FleetManifest`]): what several gateways in
//! one process (tests) share.

use std::sync::Mutex;
use warden_core::fleet_manifest::{compare, FleetManifest, Published, Served};
use warden_core::state::StateError;

/// The register in memory.
#[derive(Debug, Default)]
pub struct MemoryFleetManifest {
    current: Mutex<Option<Served>>,
    ledger: Mutex<Option<String>>,
}

impl MemoryFleetManifest {
    /// An empty register.
    #[must_use]
    pub fn new() -> Self {
        MemoryFleetManifest::default()
    }
}

impl FleetManifest for MemoryFleetManifest {
    fn publish(&self, served: &Served) -> Result<Published, StateError> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| StateError::Unavailable("fleet manifest lock poisoned".into()))?;
        let out = compare(current.as_ref(), served);
        if out == Published::Stored {
            *current = Some(served.clone());
        }
        Ok(out)
    }

    fn current(&self) -> Result<Option<Served>, StateError> {
        Ok(self
            .current
            .lock()
            .map_err(|_| StateError::Unavailable("fleet manifest lock poisoned".into()))?
            .clone())
    }

    fn agree_ledger(&self, origin: &str) -> Result<Option<String>, StateError> {
        let mut ledger = self
            .ledger
            .lock()
            .map_err(|_| StateError::Unavailable("fleet manifest lock poisoned".into()))?;
        let theirs = ledger.get_or_insert_with(|| origin.to_owned());
        Ok((theirs != origin).then(|| theirs.clone()))
    }
}
