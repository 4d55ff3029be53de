//! [`MemoryBrakes`]: the brake bus of one instance, in process. What is announced is handed to
//! whoever listens in this process (the instance's own Executor, which the operator's action has
//! already stopped: announcing again stops nothing twice).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use warden_core::brakes::{BrakeBus, BrakeError};
use warden_core::state::HoldScope;

/// How many announcements are kept for listeners that have not yet taken them.
const KEPT: usize = 1024;

/// How often a listener asks whether to stop.
const TICK: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Log {
    /// The sequence number of the first scope kept.
    first: u64,
    kept: VecDeque<HoldScope>,
}

/// The brake bus of one instance.
#[derive(Default)]
pub struct MemoryBrakes {
    log: Mutex<Log>,
    posted: Condvar,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl BrakeBus for MemoryBrakes {
    fn announce(&self, scope: &HoldScope) -> Result<(), BrakeError> {
        let mut log = self.lock();
        log.kept.push_back(scope.clone());
        if log.kept.len() > KEPT {
            log.kept.pop_front();
            log.first += 1;
        }
        self.posted.notify_all();
        Ok(())
    }

    fn listen(
        &self,
        on: &mut dyn FnMut(HoldScope),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), BrakeError> {
        let mut next = {
            let log = self.lock();
            log.first + log.kept.len() as u64
        };
        loop {
            if stop() {
                return Ok(());
            }
            let new: Vec<HoldScope> = {
                let mut log = self.lock();
                if log.first + (log.kept.len() as u64) <= next {
                    log = self
                        .posted
                        .wait_timeout(log, TICK)
                        .map(|(l, _)| l)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                // A listener that fell more than KEPT behind starts at the oldest kept.
                next = next.max(log.first);
                let skip = usize::try_from(next - log.first).unwrap_or(usize::MAX);
                let new: Vec<HoldScope> = log.kept.iter().skip(skip).cloned().collect();
                next += new.len() as u64;
                new
            };
            for scope in new {
                on(scope);
            }
        }
    }
}
