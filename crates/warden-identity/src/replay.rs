//! Replay protection: each grant (and, later, approval and signed request) is accepted once.
//!
//! A guard remembers an id until its expiry; after that the token carrying it is refused as
//! expired anyway, so the id can be forgotten and memory stays bounded by what is live.

use std::collections::HashMap;
use std::sync::Mutex;

/// Why an id was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Seen before.
    #[error("already used")]
    Seen,
    /// The guard cannot answer; callers must refuse (fail closed).
    #[error("replay guard unavailable: {0}")]
    Unavailable(String),
}

/// Remembers used ids.
pub trait ReplayGuard: Send + Sync {
    /// Atomically: if `id` was not seen, remember it until `expires_ms` and succeed; else fail.
    ///
    /// # Errors
    /// [`ReplayError::Seen`] on a replay; [`ReplayError::Unavailable`] if the guard cannot
    /// answer.
    fn consume(&self, id: &[u8; 16], expires_ms: i64, now_ms: i64) -> Result<(), ReplayError>;
}

/// An in-process guard (one Warden instance). Sharded to keep lock hold times short.
#[derive(Debug, Default)]
pub struct MemoryReplayGuard {
    shards: [Mutex<Shard>; 16],
}

#[derive(Debug, Default)]
struct Shard {
    seen: HashMap<[u8; 16], i64>,
    next_sweep_ms: i64,
}

impl MemoryReplayGuard {
    /// An empty guard.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Ids currently remembered (for tests and metrics).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|g| g.seen.len()).unwrap_or(0))
            .sum()
    }

    /// True when nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn consume(&self, id: &[u8; 16], expires_ms: i64, now_ms: i64) -> Result<(), ReplayError> {
        let shard = self
            .shards
            .get(usize::from(id[0] & 15))
            .ok_or_else(|| ReplayError::Unavailable("no shard".into()))?;
        // INVARIANT (fail-closed): a poisoned lock refuses rather than forgets.
        let mut g = shard
            .lock()
            .map_err(|_| ReplayError::Unavailable("replay guard lock poisoned".into()))?;
        if now_ms >= g.next_sweep_ms {
            g.seen.retain(|_, exp| *exp > now_ms);
            g.next_sweep_ms = now_ms.saturating_add(1_000);
        }
        if g.seen.contains_key(id) {
            return Err(ReplayError::Seen);
        }
        g.seen.insert(*id, expires_ms);
        Ok(())
    }
}
