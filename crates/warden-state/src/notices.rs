//! [`MemoryNotices`]: a session notice bus within one process (one instance holds all of its
//! sessions, so nothing needs to cross; this backend runs the conformance suite and serves
//! tests of several gateways in one process).

use warden_core::sessions::{NoticeBus, SessionNotice};
use warden_core::state::StateError;

/// A session notice bus in process.
#[derive(Default)]
pub struct MemoryNotices {
    bus: crate::memory_bus::Bus<SessionNotice>,
}

impl std::fmt::Debug for MemoryNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNotices").finish_non_exhaustive()
    }
}

impl MemoryNotices {
    /// An empty bus.
    #[must_use]
    pub fn new() -> MemoryNotices {
        MemoryNotices::default()
    }
}

impl NoticeBus for MemoryNotices {
    fn publish(&self, notice: &SessionNotice) -> Result<(), StateError> {
        self.bus.announce(notice.clone());
        Ok(())
    }

    fn listen(
        &self,
        on: &mut dyn FnMut(SessionNotice),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), StateError> {
        self.bus.listen(on, stop);
        Ok(())
    }
}
