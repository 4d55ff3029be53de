//! Sessions' information flow kept in process ([`FlowStore`] for one instance).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden_core::flow::{FlowError, FlowStore, SessionFlow};
use warden_core::state::StateError;

/// Flows in memory, each forgotten once its session has been idle for `idle` (as the
/// session's call history is). Nothing survives a restart: a session that continues after one
/// starts with no labels, which the documentation states (docs/ifc.md).
#[derive(Debug)]
pub struct MemoryFlows {
    idle: Duration,
    flows: Mutex<Flows>,
}

/// Each session's flow and when it was last used.
type Flows = HashMap<String, (Arc<SessionFlow>, Instant)>;

impl MemoryFlows {
    /// Flows forgotten after `idle` without a call or an output.
    #[must_use]
    pub fn new(idle: Duration) -> Self {
        MemoryFlows {
            idle,
            flows: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Flows>, StateError> {
        self.flows
            .lock()
            .map_err(|_| StateError::Unavailable("flow store lock poisoned".into()))
    }
}

impl Default for MemoryFlows {
    fn default() -> Self {
        MemoryFlows::new(Duration::from_secs(24 * 3600))
    }
}

/// Sessions held before idle ones are swept on the next insert.
const SWEEP_AT: usize = 4096;

impl FlowStore for MemoryFlows {
    fn load(&self, session_key: &str) -> Result<Arc<SessionFlow>, StateError> {
        let now = Instant::now();
        let mut flows = self.lock()?;
        Ok(match flows.get_mut(session_key) {
            Some((f, used)) if now.duration_since(*used) < self.idle => {
                *used = now;
                Arc::clone(f)
            }
            // INVARIANT (fail towards stricter): a session whose flow was forgotten may still
            // act on what it read; it is judged as if all of it was untrusted.
            Some(_) => Arc::new(SessionFlow::forgotten()),
            None => Arc::new(SessionFlow::default()),
        })
    }

    fn update(
        &self,
        session_key: &str,
        change: &mut dyn FnMut(&mut SessionFlow) -> Result<(), FlowError>,
    ) -> Result<(), FlowError> {
        let now = Instant::now();
        let mut flows = self.lock()?;
        if flows.len() >= SWEEP_AT && !flows.contains_key(session_key) {
            let idle = self.idle;
            flows.retain(|_, (_, used)| now.duration_since(*used) < idle);
        }
        let entry = flows
            .entry(session_key.to_owned())
            .or_insert_with(|| (Arc::new(SessionFlow::default()), now));
        if now.duration_since(entry.1) >= self.idle {
            entry.0 = Arc::new(SessionFlow::forgotten());
        }
        entry.1 = now;
        // Copied only while a decision still holds the previous version.
        change(Arc::make_mut(&mut entry.0))
    }
}
