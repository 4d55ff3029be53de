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
