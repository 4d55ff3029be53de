//! What an instance does with brakes applied through the others (issue 22): a thread listens
//! on the brake bus ([`warden_core::brakes::BrakeBus`]) and has the Executor stop what runs in
//! each scope announced. The hold itself needs no message: it is in the shared state store,
//! which every decision reads and the Executor reads again right before each call runs.
//!
//! INVARIANT (INV-025, fleet): a brake applied through any instance stops the calls already in
//! flight on every instance whose listener is subscribed; one whose bus is down keeps trying
//! every second (and says so), its new calls still refused by the hold.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::runtime::Shared;

/// How long a listener whose bus failed waits before listening again.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the listener of `shared`'s brake bus; it ends when the Runtime is dropped.
pub(crate) fn listen(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let started = std::thread::Builder::new()
        .name("warden-brakes".into())
        .spawn(move || run(&weak));
    if let Err(e) = started {
        tracing::error!(error = %e, "the brake listener did not start: brakes applied through other instances stop only new calls here");
    }
}

fn run(weak: &Weak<Shared>) {
    let mut failing = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let bus = Arc::clone(&shared.brakes);
        drop(shared);
        // INVARIANT (a clean stop): the listener holds the Runtime only while it acts on a
        // brake, so that when the Runtime goes, the Executor and the ledger go with it (the
        // ledger signs its last checkpoint as it closes).
        let gone = || weak.strong_count() == 0;
        let heard = bus.listen(
            &mut |scope| {
                let Some(shared) = weak.upgrade() else { return };
                let stopped = shared.executor.stop(&scope);
                if stopped > 0 {
                    tracing::info!(%scope, stopped, "brake from the fleet: calls in flight stopped");
                }
            },
            &gone,
        );
        match heard {
            Ok(()) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "brake bus down: listening again every second (holds still refuse new calls)");
                }
                failing = true;
                std::thread::sleep(RETRY);
            }
        }
    }
}
