//! Breakers' consecutive-failure counts: the port through which an instance counts an agent's
//! failures in a row, so that a fleet counts them together (issue 22). What a failure is, and
//! what a trip does, is the Runtime's (`warden_runtime::breakers`).
//!
//! Implementations: `warden_state::MemoryFailures` (one instance) and
//! `warden_state::RedisFailures` (a fleet); one conformance suite,
//! `crates/warden-state/tests/failures.rs`.

use crate::state::StateError;

/// Consecutive failures per agent.
pub trait FailureCounts: Send + Sync {
    /// One more failure of `agent`: how many in a row now (this one included).
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the count cannot be kept.
    fn failed(&self, agent: &str) -> Result<u32, StateError>;

    /// `agent` succeeded, or its breaker tripped: its count starts again from zero.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the count cannot be reset.
    fn reset(&self, agent: &str) -> Result<(), StateError>;
}
