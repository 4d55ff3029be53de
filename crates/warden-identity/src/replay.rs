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

/// A guard shared by several Warden instances through Redis: `SET key 1 NX PX ttl`, so an id is
/// accepted by exactly one instance. Any Redis error refuses (fail closed).
pub struct RedisReplayGuard {
    client: redis::Client,
    prefix: String,
    conn: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for RedisReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the key prefix is shown.
        f.debug_struct("RedisReplayGuard")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisReplayGuard {
    /// A guard on the Redis at `url`, keys under `prefix` (e.g. `warden:replay:`).
    ///
    /// # Errors
    /// [`ReplayError::Unavailable`] for a malformed URL (connecting happens on first use).
    pub fn new(url: &str, prefix: &str) -> Result<Self, ReplayError> {
        let client = redis::Client::open(url)
            .map_err(|e| ReplayError::Unavailable(format!("redis URL: {e}")))?;
        Ok(RedisReplayGuard {
            client,
            prefix: prefix.to_owned(),
            conn: Mutex::new(None),
        })
    }
}

impl ReplayGuard for RedisReplayGuard {
    fn consume(&self, id: &[u8; 16], expires_ms: i64, now_ms: i64) -> Result<(), ReplayError> {
        let mut key = self.prefix.clone();
        warden_core::canonical::push_hex(&mut key, id);
        // Remembered until expiry (at least 1 ms; an expired token is refused before this).
        let ttl = expires_ms.saturating_sub(now_ms).max(1);
        // INVARIANT (fail-closed): a poisoned lock or any Redis error refuses the id.
        let mut slot = self
            .conn
            .lock()
            .map_err(|_| ReplayError::Unavailable("replay guard lock poisoned".into()))?;
        // A kept connection a restarted Redis closed: once more on a new one. The id was not
        // recorded through a closed connection (or, if Redis recorded it and then closed the
        // connection unanswered, it is refused as seen: fail closed).
        let set = crate::kept_connection::run(
            &self.client,
            &mut slot,
            |conn| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query::<Option<String>>(conn)
            },
            |e: &redis::RedisError| {
                if e.is_connection_dropped() {
                    crate::kept_connection::Meant::Closed
                } else {
                    crate::kept_connection::Meant::Broken
                }
            },
        );
        match set {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ReplayError::Seen),
            Err(e) => Err(ReplayError::Unavailable(format!("redis: {e}"))),
        }
    }
}
