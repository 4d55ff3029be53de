//! The revocation store: the port through which revocations reach every instance. A
//! revocation is appended, durably, and never taken back; each instance reads what was
//! appended since it last looked (its cursor) and applies it to the [`Revocations`] its
//! credential verifier consults, so a revocation written anywhere — by another instance, or by
//! `warden agents revoke` — refuses the agent's next request everywhere.
//!
//! [`MemoryRevocations`] is the in-process implementation (for tests and one process); the
//! Runtime's `DATA/revoked` file is the embedded one. Each runs the conformance suite in
//! `crates/warden-runtime/tests/revocations.rs`.

use std::sync::{Arc, Mutex};

use crate::credential::Revocations;

/// What is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedKind {
    /// An agent, and every credential derived from any of its credentials.
    Agent,
    /// One credential, and everything derived from it.
    Credential,
}

impl RevokedKind {
    /// Its name, as the store writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedKind::Agent => "agent",
            RevokedKind::Credential => "credential",
        }
    }

    /// The kind named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<RevokedKind> {
        match s {
            "agent" => Some(RevokedKind::Agent),
            "credential" => Some(RevokedKind::Credential),
            _ => None,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What is revoked.
    pub kind: RevokedKind,
    /// The agent or credential id: one word, no whitespace.
    pub id: String,
}

impl Revocation {
    /// A revocation of `kind` for `id`.
    ///
    /// # Errors
    /// [`RevocationError::BadId`] for an empty id or one with whitespace (it could not be read
    /// back as one).
    pub fn new(kind: RevokedKind, id: &str) -> Result<Revocation, RevocationError> {
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(RevocationError::BadId(id.to_owned()));
        }
        Ok(Revocation {
            kind,
            id: id.to_owned(),
        })
    }

    /// Applies it to `to`.
    pub fn apply(&self, to: &Revocations) {
        match self.kind {
            RevokedKind::Agent => to.revoke_agent(&self.id),
            RevokedKind::Credential => to.revoke_credential(&self.id),
        }
    }
}

/// Why the store could not revoke or answer. Callers refuse requests then (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// An id that is empty or has whitespace.
    #[error("cannot revoke {0:?}: an id is one word without whitespace")]
    BadId(String),
    /// The store failed.
    #[error("{store}: {what}")]
    Store {
        /// Which store (a file path, a URL).
        store: String,
        /// What went wrong.
        what: String,
    },
}

/// Where revocations are kept.
pub trait RevocationStore: Send + Sync {
    /// Appends `revocation`, durably, before it returns.
    ///
    /// # Errors
    /// [`RevocationError::Store`] if it could not be written.
    fn revoke(&self, revocation: &Revocation) -> Result<(), RevocationError>;

    /// Every revocation appended after `cursor` (0: from the start), by anyone, and the cursor
    /// to ask from next time. A cursor the store no longer knows (the store was replaced)
    /// answers everything again: revoking twice is harmless.
    ///
    /// # Errors
    /// [`RevocationError::Store`] if the store cannot be read or holds something that is not a
    /// revocation.
    fn since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), RevocationError>;
}

/// Revocations in this process. Clones share one list (as instances share a store).
#[derive(Debug, Clone, Default)]
pub struct MemoryRevocations {
    list: Arc<Mutex<Vec<Revocation>>>,
}

impl MemoryRevocations {
    /// None yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl RevocationStore for MemoryRevocations {
    fn revoke(&self, revocation: &Revocation) -> Result<(), RevocationError> {
        let r = Revocation::new(revocation.kind, &revocation.id)?;
        self.list.lock().map_err(|_| poisoned())?.push(r);
        Ok(())
    }

    fn since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), RevocationError> {
        let list = self.list.lock().map_err(|_| poisoned())?;
        let len = list.len();
        let from = usize::try_from(cursor).unwrap_or(usize::MAX);
        let from = if from > len { 0 } else { from };
        let new = list
            .get(from..)
            .map(<[Revocation]>::to_vec)
            .unwrap_or_default();
        Ok((new, len as u64))
    }
}

fn poisoned() -> RevocationError {
    RevocationError::Store {
        store: "memory".into(),
        what: "the list is poisoned".into(),
    }
}

/// Revocations in a Redis shared by the instances of a fleet: one list (`<prefix>revoked`),
/// each entry `agent <id>` or `credential <id>`, appended with `RPUSH`; the cursor is the list's
/// length. Every Redis error refuses (fail closed). Durable as the Redis is (`appendonly yes`).
pub struct RedisRevocations {
    client: redis::Client,
    key: String,
    conn: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the key is shown.
        f.debug_struct("RedisRevocations")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisRevocations {
    /// The store on the Redis at `url`, its list under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`RevocationError::Store`] for a malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<Self, RevocationError> {
        let client = redis::Client::open(url).map_err(|e| redis_err(&e))?;
        Ok(RedisRevocations {
            client,
            key: format!("{prefix}revoked"),
            conn: Mutex::new(None),
        })
    }

    /// Runs `f` on the connection (opened if needed); any error drops it (the next call
    /// reconnects) and is returned. A connection kept from earlier that the server has closed
    /// (it restarted, or dropped idle clients) is opened again and `f` tried once more on the
    /// new one, so the first request after a Redis comes back is not refused for a connection
    /// it no longer has. `f` must be safe to run twice: reads are, and a revocation pushed
    /// twice revokes the same.
    fn with<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RevocationError> {
        let mut slot = self.conn.lock().map_err(|_| poisoned())?;
        crate::kept_connection::run(&self.client, &mut slot, f, |e: &redis::RedisError| {
            if e.is_connection_dropped() || e.is_io_error() {
                crate::kept_connection::Meant::Closed
            } else {
                crate::kept_connection::Meant::Broken
            }
        })
        .map_err(|e| redis_err(&e))
    }
}

fn redis_err(e: &dyn std::fmt::Display) -> RevocationError {
    RevocationError::Store {
        store: "redis".into(),
        what: e.to_string(),
    }
}

impl RevocationStore for RedisRevocations {
    fn revoke(&self, r: &Revocation) -> Result<(), RevocationError> {
        let r = Revocation::new(r.kind, &r.id)?;
        let line = format!("{} {}", r.kind.as_str(), r.id);
        self.with(|c| {
            redis::cmd("RPUSH")
                .arg(&self.key)
                .arg(&line)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    fn since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), RevocationError> {
        // Nothing new is one LLEN; what is new comes in one LRANGE (bounded by a round of
        // revocations, never by the list).
        let len: u64 = self.with(|c| redis::cmd("LLEN").arg(&self.key).query(c))?;
        let from = if cursor > len { 0 } else { cursor };
        if from == len {
            return Ok((Vec::new(), len));
        }
        let lines: Vec<String> = self.with(|c| {
            redis::cmd("LRANGE")
                .arg(&self.key)
                .arg(from)
                .arg(len.saturating_sub(1))
                .query(c)
        })?;
        let new = lines
            .iter()
            .map(|l| {
                let (kind, id) = l.split_once(' ').unwrap_or(("", ""));
                let kind = RevokedKind::parse(kind).ok_or_else(|| RevocationError::Store {
                    store: "redis".into(),
                    what: format!("`{l}` is not a revocation"),
                })?;
                Revocation::new(kind, id)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((new, len))
    }
}
