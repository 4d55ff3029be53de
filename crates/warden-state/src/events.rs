//! The in-process event queue: one instance publishes and delivers.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use warden_core::events::{Event, EventError, EventQueue};

/// Events waiting in this process, at most `capacity` of them (lost on exit: the ledger holds
/// the facts they announce).
#[derive(Debug)]
pub struct MemoryEvents {
    queue: Mutex<VecDeque<Event>>,
    arrived: Condvar,
    capacity: usize,
}

impl MemoryEvents {
    /// An empty queue that holds up to `capacity` undelivered events.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            arrived: Condvar::new(),
            capacity,
        }
    }

    fn queue(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<Event>>, EventError> {
        self.queue
            .lock()
            .map_err(|_| EventError::Unavailable("event queue lock poisoned".into()))
    }
}

impl EventQueue for MemoryEvents {
    fn publish(&self, event: Event) -> Result<(), EventError> {
        let mut queue = self.queue()?;
        if queue.len() >= self.capacity {
            return Err(EventError::Full(queue.len()));
        }
        queue.push_back(event);
        drop(queue);
        self.arrived.notify_one();
        Ok(())
    }

    fn take(&self, max: usize, wait: Duration) -> Result<Vec<Event>, EventError> {
        let deadline = Instant::now().checked_add(wait);
        let mut queue = self.queue()?;
        while queue.is_empty() {
            let left = deadline.map_or(wait, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(Vec::new());
            }
            queue = self
                .arrived
                .wait_timeout(queue, left)
                .map_err(|_| EventError::Unavailable("event queue lock poisoned".into()))?
                .0;
        }
        let n = max.min(queue.len());
        Ok(queue.drain(..n).collect())
    }
}
