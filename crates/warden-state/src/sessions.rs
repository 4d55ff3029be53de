//! MCP sessions' directory kept in process ([`SessionDirectory`]): what several gateways in
//! one process (tests) share; an instance alone keeps none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warden_core::sessions::{valid_session_id, SessionDirectory, SessionEntry};
use warden_core::state::StateError;

/// Each session's entry, with when it is forgotten.
type Entries = HashMap<String, (SessionEntry, Instant)>;

/// Entries in memory.
#[derive(Debug, Default)]
pub struct MemorySessions {
    entries: Mutex<Entries>,
    /// Each instance's URL, with when it is forgotten.
    instances: Mutex<HashMap<String, (String, Instant)>>,
    /// Where each session's call waits for its client's reply, with when it is forgotten.
    waiting: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemorySessions {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Self {
        MemorySessions::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Entries>, StateError> {
        self.entries.lock().map_err(|_| poisoned())
    }
}

impl SessionDirectory for MemorySessions {
    fn publish(&self, id: &str, entry: &SessionEntry, idle: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut entries = self.lock()?;
        entries.retain(|_, (_, until)| *until > now);
        entries.insert(id.to_owned(), (entry.clone(), now + idle));
        Ok(())
    }

    fn lookup(&self, id: &str) -> Result<Option<SessionEntry>, StateError> {
        if !valid_session_id(id) {
            return Ok(None);
        }
        let now = Instant::now();
        Ok(self
            .lock()?
            .get(id)
            .filter(|(_, until)| *until > now)
            .map(|(e, _)| e.clone()))
    }

    fn touch(&self, id: &str, idle: Duration) -> Result<bool, StateError> {
        let now = Instant::now();
        Ok(match self.lock()?.get_mut(id) {
            Some((_, until)) if *until > now => {
                *until = now + idle;
                true
            }
            _ => false,
        })
    }

    fn end(&self, id: &str) -> Result<(), StateError> {
        self.lock()?.remove(id);
        Ok(())
    }

    fn publish_instance(&self, id: &str, url: &str, ttl: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut instances = self.instances.lock().map_err(|_| poisoned())?;
        instances.retain(|_, (_, until)| *until > now);
        instances.insert(id.to_owned(), (url.to_owned(), now + ttl));
        Ok(())
    }

    fn instance(&self, id: &str) -> Result<Option<String>, StateError> {
        if !valid_session_id(id) {
            return Ok(None);
        }
        let now = Instant::now();
        Ok(self
            .instances
            .lock()
            .map_err(|_| poisoned())?
            .get(id)
            .filter(|(_, until)| *until > now)
            .map(|(url, _)| url.clone()))
    }

    fn note_waiting(&self, id: &str, instance: &str, ttl: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().map_err(|_| poisoned())?;
        waiting.retain(|_, (_, until)| *until > now);
        waiting.insert(id.to_owned(), (instance.to_owned(), now + ttl));
        Ok(())
    }

    fn waiting(&self, id: &str) -> Result<Option<String>, StateError> {
        let now = Instant::now();
        Ok(self
            .waiting
            .lock()
            .map_err(|_| poisoned())?
            .get(id)
            .filter(|(_, until)| *until > now)
            .map(|(instance, _)| instance.clone()))
    }
}

fn poisoned() -> StateError {
    StateError::Unavailable("session directory lock poisoned".into())
}
