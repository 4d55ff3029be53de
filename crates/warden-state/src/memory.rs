//! The in-memory store.

use crate::engine::Engine;
use std::sync::Mutex;
use warden_core::state::{
    Charge, ChargeOutcome, Hold, HoldKind, HoldScope, Settle, Settled, StateError, StateStore,
};
use warden_core::time::UnixSeconds;

/// State kept in this process only. Every operation takes one lock, so check-and-charge is
/// atomic across threads.
#[derive(Debug, Default)]
pub struct MemoryState {
    // INVARIANT (atomic check-and-charge): every read-decide-write sequence on the engine happens
    // under this one lock.
    engine: Mutex<Engine>,
}

impl MemoryState {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn engine(&self) -> Result<std::sync::MutexGuard<'_, Engine>, StateError> {
        // INVARIANT (fail-closed): a poisoned lock means a thread died mid-update; refuse to
        // answer rather than trust half-written state.
        self.engine
            .lock()
            .map_err(|_| StateError::Unavailable("in-memory state lock poisoned".into()))
    }
}

impl StateStore for MemoryState {
    fn check_and_charge(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
    ) -> Result<ChargeOutcome, StateError> {
        Ok(self.engine()?.charge_in_place(charges, now))
    }

    fn observe_call(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: UnixSeconds,
        ttl: i64,
    ) -> Result<u32, StateError> {
        let mut engine = self.engine()?;
        let (repeats, op) = engine.plan_observe(session, fingerprint, now, ttl);
        engine.apply(op, now);
        Ok(repeats)
    }

    fn settle(&self, s: &Settle<'_>) -> Result<Settled, StateError> {
        Ok(self.engine()?.settle(s, None))
    }

    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        Ok(self.engine()?.holds_for(scopes))
    }

    fn set_hold(&self, hold: Hold) -> Result<(), StateError> {
        // Hold changes carry no clock: `i64::MIN` as "now" expires nothing.
        self.engine()?
            .apply(crate::engine::Op::SetHold { hold }, i64::MIN);
        Ok(())
    }

    fn clear_hold(&self, scope: &HoldScope, kind: HoldKind) -> Result<bool, StateError> {
        let mut engine = self.engine()?;
        let was = engine.has_hold(scope, kind);
        engine.apply(
            crate::engine::Op::ClearHold {
                scope: scope.clone(),
                kind,
            },
            i64::MIN,
        );
        Ok(was)
    }

    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        Ok(self.engine()?.all_holds())
    }
}
