//! Breakers' consecutive-failure counts kept in process ([`FailureCounts`] for one instance).

use std::collections::HashMap;
use std::sync::Mutex;
use warden_core::breakers::FailureCounts;
use warden_core::state::StateError;

/// Counts in memory (lost on restart: an agent starts again from zero).
#[derive(Debug, Default)]
pub struct MemoryFailures {
    counts: Mutex<HashMap<String, u32>>,
}

impl MemoryFailures {
    /// No failures yet.
    #[must_use]
    pub fn new() -> Self {
        MemoryFailures::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // Every update is one map operation: a poisoned map is still whole.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FailureCounts for MemoryFailures {
    fn failed(&self, agent: &str) -> Result<u32, StateError> {
        let mut m = self.lock();
        let n = m.entry(agent.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Ok(*n)
    }

    fn reset(&self, agent: &str) -> Result<(), StateError> {
        self.lock().remove(agent);
        Ok(())
    }
}
