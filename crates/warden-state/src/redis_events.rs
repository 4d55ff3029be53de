//! [`RedisEvents`]: the event queue a fleet shares (issue 22): events published on any instance
//! wait in one Redis list (`<prefix>events`) and each is taken by one dispatcher, whichever
//! instance runs it.
//!
//! `publish` is one script (the bound checked and the event appended atomically); `take` pops
//! up to `max` events at once (`LPOP key count`), waiting for the first with `BLPOP`. An event
//! popped by a dispatcher that then dies is lost: events are notifications, and the ledger holds
//! the facts they announce (the same as the in-process queue on a crash).

use std::time::Duration;

use warden_core::events::{Event, EventError, EventQueue};

/// Appends an event unless the list is at its bound. KEYS: the list. ARGV: the bound, the event.
/// Returns 1 if appended, 0 if full.
const PUBLISH: &str = r"
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
";

/// Events in a Redis shared by the instances of a fleet, at most `capacity` undelivered.
pub struct RedisEvents {
    pool: crate::redis_pool::Pool,
    key: String,
    capacity: usize,
}

impl std::fmt::Debug for RedisEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the key is shown.
        f.debug_struct("RedisEvents")
            .field("key", &self.key)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> EventError {
    EventError::Unavailable(format!("redis: {e}"))
}

impl RedisEvents {
    /// The queue on the Redis at `url`, its list under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`EventError::Unavailable`] for a malformed URL.
    pub fn new(url: &str, prefix: &str, capacity: usize) -> Result<RedisEvents, EventError> {
        Ok(RedisEvents {
            pool: crate::redis_pool::Pool::open(url).map_err(|e| unavailable(&e))?,
            key: format!("{prefix}events"),
            capacity,
        })
    }

    /// Runs `f` on a pooled connection whose replies may take `wait` more than usual.
    fn with<T>(
        &self,
        wait: Duration,
        f: impl Fn(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T, EventError> {
        self.pool.with(wait, f).map_err(|e| unavailable(&e))
    }
}

fn decode(raw: &str) -> Result<Event, EventError> {
    serde_json::from_str(raw)
        .map_err(|e| EventError::Unavailable(format!("an event in redis is not valid: {e}")))
}

impl EventQueue for RedisEvents {
    fn publish(&self, event: Event) -> Result<(), EventError> {
        let json = serde_json::to_string(&event)
            .map_err(|e| EventError::Unavailable(format!("cannot encode the event: {e}")))?;
        let added: i64 = self.with(Duration::ZERO, |c| {
            ::redis::cmd("EVAL")
                .arg(PUBLISH)
                .arg(1)
                .arg(&self.key)
                .arg(self.capacity)
                .arg(&json)
                .query(c)
        })?;
        if added == 1 {
            Ok(())
        } else {
            Err(EventError::Full(self.capacity))
        }
    }

    fn take(&self, max: usize, wait: Duration) -> Result<Vec<Event>, EventError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut raw: Vec<String> = self
            .with(Duration::ZERO, |c| {
                ::redis::cmd("LPOP")
                    .arg(&self.key)
                    .arg(max)
                    .query::<Option<Vec<String>>>(c)
            })?
            .unwrap_or_default();
        if raw.is_empty() && !wait.is_zero() {
            // Waits for the first; the rest that arrived with it come in the same round.
            let first: Option<(String, String)> = self.with(wait, |c| {
                ::redis::cmd("BLPOP")
                    .arg(&self.key)
                    .arg(wait.as_secs_f64().max(0.01))
                    .query(c)
            })?;
            if let Some((_, event)) = first {
                raw.push(event);
                if max > 1 {
                    let more: Option<Vec<String>> = self.with(Duration::ZERO, |c| {
                        ::redis::cmd("LPOP").arg(&self.key).arg(max - 1).query(c)
                    })?;
                    raw.extend(more.unwrap_or_default());
                }
            }
        }
        raw.iter().map(|r| decode(r)).collect()
    }
}
