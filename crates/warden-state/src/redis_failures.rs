//! [`RedisFailures`]: breakers' consecutive-failure counts in a fleet's Redis (issue 22): one
//! counter per agent (`<prefix>failures:<agent>`, forgotten after a day without a failure) and
//! the set of agents whose count is not zero (`<prefix>failing`).
//!
//! A failure is one script (count and mark, one round trip). A success resets the count — but a
//! success is nearly every call, so it costs a round trip only for an agent this instance knows
//! may be failing: one it counted a failure for, or one in the set as read at most a second ago
//! (a thread reads it every second). A success in the second after another instance's first
//! failure of that agent can therefore miss its reset: the count is then higher than the failures
//! in a row, and the breaker trips sooner — stricter, never laxer.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use crate::redis_pool::Pool;
use warden_core::breakers::FailureCounts;
use warden_core::state::StateError;

/// How long a count lasts without a new failure, ms.
const FORGET_MS: u64 = 24 * 3600 * 1000;
/// How often the set of failing agents is read.
const REFRESH: Duration = Duration::from_secs(1);

/// KEYS: the counter, the set. ARGV: the agent, the counter's time to live in ms.
const FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return n
";

/// KEYS: the counter, the set. ARGV: the agent.
const RESET: &str = r"
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 0
";

struct Shared {
    pool: Pool,
    prefix: String,
    /// Agents whose count may not be zero.
    failing: RwLock<HashSet<String>>,
}

/// Counts in a Redis shared by the instances of a fleet.
pub struct RedisFailures {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the prefix is shown.
        f.debug_struct("RedisFailures")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

impl Shared {
    fn counter(&self, agent: &str) -> String {
        format!("{}failures:{agent}", self.prefix)
    }

    fn set(&self) -> String {
        format!("{}failing", self.prefix)
    }

    fn refresh(&self) -> Result<(), StateError> {
        let set = self.set();
        let members: HashSet<String> = self
            .pool
            .with(Duration::ZERO, |c| {
                redis::cmd("SMEMBERS").arg(&set).query(c)
            })
            .map_err(|e| unavailable(&e))?;
        let mut failing = self.failing.write().unwrap_or_else(PoisonError::into_inner);
        *failing = members;
        Ok(())
    }
}

impl RedisFailures {
    /// The counts on the Redis at `url`, under `prefix`; a thread reads which agents are failing
    /// every second until this is dropped.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] for a malformed URL, or a thread that cannot start.
    pub fn new(url: &str, prefix: &str) -> Result<RedisFailures, StateError> {
        let shared = Arc::new(Shared {
            pool: Pool::open(url).map_err(|e| unavailable(&e))?,
            prefix: prefix.to_owned(),
            failing: RwLock::new(HashSet::new()),
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("warden-failures".into())
            .spawn(move || loop {
                std::thread::sleep(REFRESH);
                let Some(shared) = weak.upgrade() else { return };
                // A failed read keeps the last set; a failure counted meanwhile is in it.
                if let Err(e) = shared.refresh() {
                    tracing::debug!(error = %e, "could not read the fleet's failing agents");
                }
            })
            .map_err(|e| StateError::Unavailable(format!("failures thread: {e}")))?;
        Ok(RedisFailures { shared })
    }
}

impl FailureCounts for RedisFailures {
    fn failed(&self, agent: &str) -> Result<u32, StateError> {
        let s = &self.shared;
        s.failing
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(agent.to_owned());
        let n: i64 = s
            .pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg(FAILED)
                    .arg(2)
                    .arg(s.counter(agent))
                    .arg(s.set())
                    .arg(agent)
                    .arg(FORGET_MS)
                    .query(c)
            })
            .map_err(|e| unavailable(&e))?;
        Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    }

    fn reset(&self, agent: &str) -> Result<(), StateError> {
        let s = &self.shared;
        let maybe = s
            .failing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(agent);
        if !maybe {
            return Ok(());
        }
        s.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg(RESET)
                    .arg(2)
                    .arg(s.counter(agent))
                    .arg(s.set())
                    .arg(agent)
                    .query::<i64>(c)
            })
            .map_err(|e| unavailable(&e))?;
        s.failing
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(agent);
        Ok(())
    }
}
