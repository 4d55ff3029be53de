//! The brake bus: how a brake applied through one instance stops what is already running on
//! every instance of a fleet (issue 22). The hold itself is in the shared state store, which
//! every decision reads, so nothing new starts anywhere once it is set; the bus carries only
//! "stop what runs in this scope" to the instances' Executors, for calls already in flight.
//!
//! Implementations: `warden_state::MemoryBrakes` (one instance) and `warden_state::RedisBrakes`
//! (Redis pub/sub, a fleet); one conformance suite, `crates/warden-state/tests/brakes.rs`.

use crate::state::HoldScope;

/// Why the bus could not carry a brake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrakeError {
    /// The bus cannot be reached (the hold is still in force: only calls in flight elsewhere
    /// keep running until they end).
    #[error("the brake bus cannot be reached: {0}")]
    Unavailable(String),
}

/// Carries brakes to every instance.
pub trait BrakeBus: Send + Sync {
    /// Tells every instance listening (this one included) to stop what runs in `scope`.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`] when the bus cannot be reached.
    fn announce(&self, scope: &HoldScope) -> Result<(), BrakeError>;

    /// Hands `on` each scope announced from the moment it listens, until `stop` answers true
    /// (asked at least every 250 ms). Blocks the calling thread.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`] when the bus fails; announcements until the caller listens
    /// again may be missed (the holds are still read by every decision).
    fn listen(
        &self,
        on: &mut dyn FnMut(HoldScope),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), BrakeError>;
}
