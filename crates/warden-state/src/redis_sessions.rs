//! [`RedisSessions`]: the MCP session directory of a fleet (issue 22): one key per session,
//! `<prefix>mcp-session:<id>`, its value the [`SessionEntry`] as JSON, expiring after the
//! session's idle time unless touched; one key per instance that takes forwarded requests,
//! `<prefix>mcp-instance:<id>`, its value the instance's URL, expiring unless published again;
//! and which instance waits for a session's reply to one request, `<prefix>mcp-replies:<id>:<request>`.

use std::time::Duration;

use crate::redis_pool::Pool;
use warden_core::sessions::{
    holder_instance, reply_holder, valid_session_id, SessionDirectory, SessionEntry,
};
use warden_core::state::StateError;

/// Reserves a reply (`KEYS[1]`) for an instance's wait (`ARGV[2]`, `<instance> <wait>`) for
/// `ARGV[3]` ms unless a wait of another instance than `ARGV[1]` holds it: 1 when it is the
/// wait's.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. ' ' then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Forgets a reservation (`KEYS[1]`) if the wait `ARGV[1]` (`<instance> <wait>`) holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The directory in a Redis shared by the instances of a fleet.
pub struct RedisSessions {
    pool: Pool,
    prefix: String,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the prefix is shown.
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisSessions {
    /// The directory on the Redis at `url`, its keys under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] for a malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisSessions, StateError> {
        Ok(RedisSessions {
            pool: Pool::open(url).map_err(|e| unavailable(&e))?,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}mcp-session:{id}", self.prefix)
    }

    fn reply_key(&self, id: &str, request: &str) -> String {
        format!("{}mcp-replies:{id}:{request}", self.prefix)
    }

    /// Sets `key` to `value`, forgotten after `ttl`.
    fn set_for(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StateError> {
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis(ttl))
                    .query::<()>(c)
            })
            .map_err(|e| unavailable(&e))
    }

    /// The string at `key`, if any.
    fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.pool
            .with(Duration::ZERO, |c| redis::cmd("GET").arg(key).query(c))
            .map_err(|e| unavailable(&e))
    }
}

impl SessionDirectory for RedisSessions {
    fn publish(&self, id: &str, entry: &SessionEntry, idle: Duration) -> Result<(), StateError> {
        let json = serde_json::to_string(entry).map_err(|e| unavailable(&e))?;
        let key = self.key(id);
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("PX")
                    .arg(millis(idle))
                    .query::<()>(c)
            })
            .map_err(|e| unavailable(&e))
    }

    fn lookup(&self, id: &str) -> Result<Option<SessionEntry>, StateError> {
        // INVARIANT (bad input): a session id a client made up is never a key of its choosing.
        if !valid_session_id(id) {
            return Ok(None);
        }
        let key = self.key(id);
        let value: Option<String> = self
            .pool
            .with(Duration::ZERO, |c| redis::cmd("GET").arg(&key).query(c))
            .map_err(|e| unavailable(&e))?;
        value
            .map(|v| {
                serde_json::from_str(&v).map_err(|e| {
                    StateError::Unavailable(format!(
                        "the MCP session `{id}` in Redis is not one Warden wrote ({e})"
                    ))
                })
            })
            .transpose()
    }

    fn touch(&self, id: &str, idle: Duration) -> Result<bool, StateError> {
        let key = self.key(id);
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(millis(idle))
                    .query::<i64>(c)
            })
            .map(|kept| kept == 1)
            .map_err(|e| unavailable(&e))
    }

    fn publish_instance(&self, id: &str, url: &str, ttl: Duration) -> Result<(), StateError> {
        self.set_for(&format!("{}mcp-instance:{id}", self.prefix), url, ttl)
    }

    fn instance(&self, id: &str) -> Result<Option<String>, StateError> {
        // INVARIANT (bad input): an instance id a client made up is never a key of its choosing.
        if !valid_session_id(id) {
            return Ok(None);
        }
        self.get(&format!("{}mcp-instance:{id}", self.prefix))
    }

    fn note_waiting(
        &self,
        id: &str,
        request: &str,
        instance: &str,
        wait: u64,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let key = self.reply_key(id, request);
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg(CLAIM)
                    .arg(1)
                    .arg(&key)
                    .arg(instance)
                    .arg(reply_holder(instance, wait))
                    .arg(millis(ttl))
                    .query::<i64>(c)
            })
            .map(|held| held == 1)
            .map_err(|e| unavailable(&e))
    }

    fn waiting(&self, id: &str, request: &str) -> Result<Option<String>, StateError> {
        // INVARIANT (bad input): a request id a client wrote is never a key of its choosing.
        if !valid_session_id(id) || !valid_session_id(request) {
            return Ok(None);
        }
        Ok(self
            .get(&self.reply_key(id, request))?
            .and_then(|h| holder_instance(&h).map(str::to_owned)))
    }

    fn forget_waiting(
        &self,
        id: &str,
        request: &str,
        instance: &str,
        wait: u64,
    ) -> Result<(), StateError> {
        let key = self.reply_key(id, request);
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(&key)
                    .arg(reply_holder(instance, wait))
                    .query::<i64>(c)
            })
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }

    fn end(&self, id: &str) -> Result<(), StateError> {
        let key = self.key(id);
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("DEL").arg(&key).query::<i64>(c)
            })
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }
}
