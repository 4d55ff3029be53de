//! Sessions' information flow in a fleet's Redis ([`FlowStore`] shared by every instance): one
//! key per session (`<prefix>flow:<agent/session>`), its value [`SessionFlow::to_bytes`],
//! forgotten after `idle` without a change. A change is optimistic: computed from the flow as
//! this instance last read or wrote it, and written by one compare-and-set script only if the
//! key still holds that; otherwise the script answers what it holds and the change is computed
//! again on it. So two results of one session labelled on two instances both count, and a
//! change costs one round trip when nobody else changed the flow.

use crate::redis_pool::Pool;
use std::sync::Arc;
use std::time::Duration;
use warden_core::flow::{FlowError, FlowStore, SessionFlow};
use warden_core::state::StateError;

/// How often a change is tried again when another instance changed the flow meanwhile.
const ATTEMPTS: u32 = 32;
/// Locks that serialise this instance's own changes (by session), so that retries are needed
/// only against other instances.
const STRIPES: usize = 64;

/// Flows in Redis.
pub struct RedisFlows {
    pool: Pool,
    prefix: String,
    idle: Duration,
    stripes: Vec<std::sync::Mutex<()>>,
    /// Each flow as this instance last read or wrote it: what its next change is checked
    /// against, so that a change is one round trip when nobody else changed the flow.
    seen: std::sync::Mutex<std::collections::HashMap<String, Option<Vec<u8>>>>,
}

impl std::fmt::Debug for RedisFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFlows")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisFlows {
    /// Flows on the Redis at `url`, under `prefix`, forgotten after `idle` without a change.
    /// Connects on first use.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(url: &str, prefix: &str, idle: Duration) -> Result<RedisFlows, StateError> {
        Ok(RedisFlows {
            pool: Pool::open(url).map_err(unavailable)?,
            prefix: prefix.to_owned(),
            idle,
            stripes: (0..STRIPES).map(|_| std::sync::Mutex::new(())).collect(),
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// This instance's lock for `key`.
    fn stripe(&self, key: &str) -> Option<std::sync::MutexGuard<'_, ()>> {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0);
        self.stripes.get(i).and_then(|m| m.lock().ok())
    }

    fn key(&self, session_key: &str) -> String {
        format!("{}flow:{session_key}", self.prefix)
    }
}

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

/// The stored flow: none is an empty one; anything else must decode.
fn decode(bytes: Option<Vec<u8>>) -> Result<SessionFlow, StateError> {
    match bytes {
        None => Ok(SessionFlow::default()),
        Some(b) => SessionFlow::from_bytes(&b).map_err(|e| StateError::Corrupted(e.to_string())),
    }
}

/// Writes the flow if the key still holds what the caller saw. KEYS: the flow. ARGV: `1` and
/// the bytes seen (or `0`: absent), the new bytes, the time to live in ms. Answers `{1}`, or
/// `{0, current}` (`{0}`: absent) so the caller tries again on what is there without reading.
const COMPARE_AND_SET: &str = r"
local now = redis.call('GET', KEYS[1])
local same
if ARGV[1] == '1' then same = (now == ARGV[2]) else same = (now == false) end
if same then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return {1}
end
if now then return {0, now} end
return {0}
";

/// Most flows remembered as last seen (beyond it, forgotten at once: a miss costs one read).
const SEEN_KEPT: usize = 16_384;

impl RedisFlows {
    fn remember(&self, key: &str, bytes: Option<Vec<u8>>) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= SEEN_KEPT && !seen.contains_key(key) {
                seen.clear();
            }
            seen.insert(key.to_owned(), bytes);
        }
    }

    fn last_seen(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.seen.lock().ok()?.remove(key)
    }

    /// Writes `new` at `key` if it still holds `seen`: `Ok(None)` written, `Ok(Some(now))`
    /// what it holds instead.
    fn compare_and_set(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<Option<Vec<u8>>>, StateError> {
        let answer: Vec<redis::Value> = self
            .pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg(COMPARE_AND_SET)
                    .arg(1)
                    .arg(key)
                    .arg(if seen.is_some() { "1" } else { "0" })
                    .arg(seen.unwrap_or_default())
                    .arg(new)
                    .arg(ttl_ms)
                    .query(c)
            })
            .map_err(unavailable)?;
        match answer.as_slice() {
            [redis::Value::Int(1)] => Ok(None),
            [redis::Value::Int(0)] => Ok(Some(None)),
            [redis::Value::Int(0), redis::Value::BulkString(now)] => Ok(Some(Some(now.clone()))),
            _ => Err(StateError::Unavailable(
                "redis answered the flow's compare-and-set with something else".into(),
            )),
        }
    }
}

impl FlowStore for RedisFlows {
    fn load(&self, session_key: &str) -> Result<Arc<SessionFlow>, StateError> {
        let key = self.key(session_key);
        let bytes: Option<Vec<u8>> = self
            .pool
            .with(Duration::ZERO, |c| redis::cmd("GET").arg(&key).query(c))
            .map_err(unavailable)?;
        let flow = decode(bytes.clone()).map(Arc::new)?;
        // The call's update after its decision starts from this (checked by the write).
        self.remember(&key, bytes);
        Ok(flow)
    }

    fn update(
        &self,
        session_key: &str,
        change: &mut dyn FnMut(&mut SessionFlow) -> Result<(), FlowError>,
    ) -> Result<(), FlowError> {
        let key = self.key(session_key);
        let ttl_ms = u64::try_from(self.idle.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let _local = self.stripe(&key);
        // What the flow was when this instance last saw it; none: read it.
        let mut seen = self.last_seen(&key);
        let mut raced = 0u32;
        for _ in 0..ATTEMPTS {
            let current = match seen.take() {
                Some(bytes) => bytes,
                None => self
                    .pool
                    .with(Duration::ZERO, |c| redis::cmd("GET").arg(&key).query(c))
                    .map_err(|e| FlowError::State(unavailable(e)))?,
            };
            let mut flow = decode(current.clone()).map_err(FlowError::State)?;
            change(&mut flow)?;
            let new = flow.to_bytes();
            match self
                .compare_and_set(&key, current.as_deref(), &new, ttl_ms)
                .map_err(FlowError::State)?
            {
                None => {
                    self.remember(&key, Some(new));
                    return Ok(());
                }
                Some(now) => {
                    // Another instance changed it (or what was remembered is old): try again
                    // on what is there, backing off once it is a race (1 ms doubling to 32 ms,
                    // jittered).
                    if raced > 0 {
                        let nanos = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos());
                        let base = 1u64 << raced.min(5);
                        std::thread::sleep(Duration::from_micros(
                            base * 1000 + u64::from(nanos % 1000),
                        ));
                    }
                    raced += 1;
                    seen = Some(now);
                }
            }
        }
        Err(FlowError::State(StateError::Unavailable(format!(
            "the session's flow kept changing under {ATTEMPTS} attempts"
        ))))
    }
}
