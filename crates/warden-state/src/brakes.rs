//! [`MemoryBrakes`]: the brake bus of one instance, in process. What is announced is handed to
//! whoever listens in this process (the instance's own Executor, which the operator's action has
//! already stopped: announcing again stops nothing twice).

use warden_core::brakes::{BrakeBus, BrakeError};
use warden_core::state::HoldScope;

/// The brake bus of one instance.
#[derive(Default)]
pub struct MemoryBrakes {
    bus: crate::memory_bus::Bus<HoldScope>,
}

impl std::fmt::Debug for MemoryBrakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBrakes").finish_non_exhaustive()
    }
}

impl MemoryBrakes {
    /// An empty bus.
    #[must_use]
    pub fn new() -> MemoryBrakes {
        MemoryBrakes::default()
    }
}

impl BrakeBus for MemoryBrakes {
    fn announce(&self, scope: &HoldScope) -> Result<(), BrakeError> {
        self.bus.announce(scope.clone());
        Ok(())
    }

    fn listen(
        &self,
        on: &mut dyn FnMut(HoldScope),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), BrakeError> {
        self.bus.listen(on, stop);
        Ok(())
    }
}
