//! What an instance does with brakes applied through the others (issue 22): a thread listens
//! on the brake bus ([`warden_core::brakes::BrakeBus`]) and has the Executor stop what runs in
//! each scope announced. The hold itself needs no message: it is in the shared state store,
//! which every decision reads and the Executor reads again right before each call runs.
//!
//! INVARIANT (INV-025, fleet): a brake applied through any instance stops the calls already in
//! flight on every instance whose listener is subscribed; one whose bus is down keeps trying
//! every second (and says so), its new calls still refused by the hold.
//!
//! INVARIANT (a message is not a brake): a scope heard on the bus stops calls only if a kill or
//! quarantine is in force for it in the shared state (or the state cannot be read: fail
//! closed). A stale message (the brake since lifted) or one forged by anyone able to publish on
//! the fleet's Redis stops nothing and is logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use warden_core::state::{HoldKind, HoldScope};

use crate::runtime::Shared;

/// How long a listener whose bus failed waits before listening again.
const RETRY: Duration = Duration::from_secs(1);

/// The listener's thread and its stop flag, kept by the Runtime so that a shutdown ends it.
#[derive(Default)]
pub(crate) struct Listener(Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>);

impl Listener {
    /// Stops the listener and waits for it (within one tick of its bus).
    pub(crate) fn stop(&self) {
        let taken = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((stop, thread)) = taken {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Starts the listener of `shared`'s brake bus, inside the caller's async runtime (what it
/// stops is recorded through it); it ends at [`Listener::stop`] or when the Runtime is dropped.
pub(crate) fn listen(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let handle = tokio::runtime::Handle::try_current().ok();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let started = std::thread::Builder::new()
        .name("warden-brakes".into())
        .spawn(move || {
            let _inside = handle.as_ref().map(tokio::runtime::Handle::enter);
            run(&weak, &flag);
        });
    match started {
        Ok(thread) => {
            *shared
                .brake_listener
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stop, thread));
        }
        Err(e) => {
            tracing::error!(error = %e, "the brake listener did not start: brakes applied through other instances stop only new calls here")
        }
    }
}

fn run(weak: &Weak<Shared>, stop: &AtomicBool) {
    let mut failing = false;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let bus = Arc::clone(&shared.brakes);
        drop(shared);
        // INVARIANT (a clean stop): the listener holds the Runtime only while it acts on a
        // brake, so that when the Runtime goes, the Executor and the ledger go with it (the
        // ledger signs its last checkpoint as it closes).
        let done = || stop.load(Ordering::Relaxed) || weak.strong_count() == 0;
        let listening = Instant::now();
        let heard = bus.listen(&mut |scope| act(weak, &scope), &done);
        match heard {
            Ok(()) => return,
            Err(e) => {
                // A bus that served a while before failing is a new outage, said again.
                if listening.elapsed() > Duration::from_secs(10) {
                    failing = false;
                }
                if !failing {
                    tracing::warn!(error = %e, "brake bus down: listening again every second (holds still refuse new calls)");
                }
                failing = true;
                if done() {
                    return;
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// Stops what runs in `scope` here, if a kill or quarantine is in force for it.
fn act(weak: &Weak<Shared>, scope: &HoldScope) {
    let Some(shared) = weak.upgrade() else { return };
    let in_force = match shared.state.holds(std::slice::from_ref(scope)) {
        Ok(holds) => holds
            .iter()
            .any(|h| h.scope == *scope && matches!(h.kind, HoldKind::Kill | HoldKind::Quarantine)),
        // Fail closed: a brake that cannot be checked is honoured.
        Err(_) => true,
    };
    if !in_force {
        tracing::warn!(%scope, "brake bus: no kill or quarantine is in force for this scope; nothing stopped (a stale or forged message)");
        return;
    }
    let stopped = shared.executor.stop(scope);
    if stopped > 0 {
        tracing::info!(%scope, stopped, "brake from the fleet: calls in flight stopped");
    }
}
