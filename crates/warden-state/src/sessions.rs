//! MCP sessions' directory kept in process ([`SessionDirectory`]): what several gateways in
//! one process (tests) share; an instance alone keeps none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warden_core::sessions::{
    holder_instance, reply_holder, valid_session_id, SessionDirectory, SessionEntry,
};
use warden_core::state::StateError;

/// Each session's entry, with when it is forgotten.
type Entries = HashMap<String, (SessionEntry, Instant)>;

/// Entries in memory.
#[derive(Debug, Default)]
pub struct MemorySessions {
    entries: Mutex<Entries>,
    /// Each instance's URL.
    instances: Expiring,
    /// Where each session's call waits for its client's reply.
    waiting: Expiring,
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
        self.instances.set(id, url, ttl)
    }

    fn instance(&self, id: &str) -> Result<Option<String>, StateError> {
        if !valid_session_id(id) {
            return Ok(None);
        }
        self.instances.get(id)
    }

    fn note_waiting(
        &self,
        id: &str,
        request: &str,
        instance: &str,
        wait: u64,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        self.waiting.claim(
            &reply_key(id, request),
            instance,
            &reply_holder(instance, wait),
            ttl,
        )
    }

    fn waiting(&self, id: &str, request: &str) -> Result<Option<String>, StateError> {
        if !valid_session_id(id) || !valid_session_id(request) {
            return Ok(None);
        }
        Ok(self
            .waiting
            .get(&reply_key(id, request))?
            .and_then(|h| holder_instance(&h).map(str::to_owned)))
    }

    fn forget_waiting(
        &self,
        id: &str,
        request: &str,
        instance: &str,
        wait: u64,
    ) -> Result<(), StateError> {
        self.waiting
            .release(&reply_key(id, request), &reply_holder(instance, wait))
    }
}

/// Strings by key, each forgotten after its time.
#[derive(Debug, Default)]
struct Expiring(Mutex<HashMap<String, (String, Instant)>>);

impl Expiring {
    fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut all = self.0.lock().map_err(|_| poisoned())?;
        all.retain(|_, (_, until)| *until > now);
        all.insert(key.to_owned(), (value.to_owned(), now + ttl));
        Ok(())
    }

    /// Sets `key` to `value` unless a value of another instance than `instance` holds it;
    /// whether `value` holds it now.
    fn claim(
        &self,
        key: &str,
        instance: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let now = Instant::now();
        let mut all = self.0.lock().map_err(|_| poisoned())?;
        all.retain(|_, (_, until)| *until > now);
        let of_instance = |held: &str| holder_instance(held) == Some(instance);
        if all.get(key).is_some_and(|(held, _)| !of_instance(held)) {
            return Ok(false);
        }
        all.insert(key.to_owned(), (value.to_owned(), now + ttl));
        Ok(true)
    }

    /// Forgets `key` if `value` holds it.
    fn release(&self, key: &str, value: &str) -> Result<(), StateError> {
        let mut all = self.0.lock().map_err(|_| poisoned())?;
        if all.get(key).is_some_and(|(held, _)| held == value) {
            all.remove(key);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        let now = Instant::now();
        Ok(self
            .0
            .lock()
            .map_err(|_| poisoned())?
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value.clone()))
    }
}

/// The key of session `id`'s reply to `request` (a space cannot be in either).
fn reply_key(id: &str, request: &str) -> String {
    format!("{id} {request}")
}

fn poisoned() -> StateError {
    StateError::Unavailable("session directory lock poisoned".into())
}
