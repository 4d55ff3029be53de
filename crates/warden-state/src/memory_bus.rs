//! A bus within one process ([`crate::MemoryBrakes`], [`crate::MemoryNotices`]): what is
//! announced is kept (the latest [`KEPT`]) for every listener that has not taken it yet, each
//! listener from the moment it starts.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How many announcements are kept for listeners that have not yet taken them.
const KEPT: usize = 1024;

/// How often a listener asks whether to stop.
const TICK: Duration = Duration::from_millis(200);

struct Log<T> {
    /// The sequence number of the first message kept.
    first: u64,
    kept: VecDeque<T>,
}

/// The messages of one in-process bus.
pub(crate) struct Bus<T> {
    log: Mutex<Log<T>>,
    posted: Condvar,
}

impl<T> Default for Bus<T> {
    fn default() -> Self {
        Bus {
            log: Mutex::new(Log {
                first: 0,
                kept: VecDeque::new(),
            }),
            posted: Condvar::new(),
        }
    }
}

impl<T: Clone> Bus<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log<T>> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `message` to every listener.
    pub(crate) fn announce(&self, message: T) {
        let mut log = self.lock();
        log.kept.push_back(message);
        if log.kept.len() > KEPT {
            log.kept.pop_front();
            log.first += 1;
        }
        self.posted.notify_all();
    }

    /// Hands `on` each message announced from now on, until `stop` answers true.
    pub(crate) fn listen(&self, on: &mut dyn FnMut(T), stop: &dyn Fn() -> bool) {
        let mut next = {
            let log = self.lock();
            log.first + log.kept.len() as u64
        };
        loop {
            if stop() {
                return;
            }
            let new: Vec<T> = {
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
                let new: Vec<T> = log.kept.iter().skip(skip).cloned().collect();
                next += new.len() as u64;
                new
            };
            for message in new {
                on(message);
            }
        }
    }
}
