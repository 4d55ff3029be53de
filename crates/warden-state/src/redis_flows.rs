//! Sessions' information flow in a fleet's Redis ([`FlowStore`] shared by every instance): one
//! key per session (`<prefix>flow:<agent/session>`), its value [`SessionFlow::to_bytes`],
//! forgotten after `idle` without a change. A change is an optimistic transaction (`WATCH`,
//! read, `MULTI` / `SET` / `EXEC`), retried when another instance changed the flow meanwhile,
//! so two results of one session labelled on two instances both count.

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

impl FlowStore for RedisFlows {
    fn load(&self, session_key: &str) -> Result<Arc<SessionFlow>, StateError> {
        let key = self.key(session_key);
        let bytes: Option<Vec<u8>> = self
            .pool
            .with(Duration::ZERO, |c| redis::cmd("GET").arg(&key).query(c))
            .map_err(unavailable)?;
        decode(bytes).map(Arc::new)
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
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // Another instance won the race: back off (1 ms doubling to 32 ms, jittered).
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let base = 1u64 << attempt.min(5);
                std::thread::sleep(Duration::from_micros(base * 1000 + u64::from(nanos % 1000)));
            }
            // Ok(Some(())) committed; Ok(None) another instance changed it first.
            let mut refused = None;
            let done = self
                .pool
                .with(Duration::ZERO, |c| {
                    redis::cmd("WATCH").arg(&key).query::<()>(c)?;
                    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(c)?;
                    let mut flow = match decode(bytes) {
                        Ok(f) => f,
                        Err(e) => {
                            redis::cmd("UNWATCH").query::<()>(c)?;
                            refused = Some(FlowError::State(e));
                            return Ok(None);
                        }
                    };
                    if let Err(e) = change(&mut flow) {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        refused = Some(e);
                        return Ok(None);
                    }
                    let committed: Option<()> = redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&key)
                        .arg(flow.to_bytes())
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore()
                        .query(c)?;
                    Ok(committed)
                })
                .map_err(|e| FlowError::State(unavailable(e)))?;
            if let Some(e) = refused {
                return Err(e);
            }
            if done.is_some() {
                return Ok(());
            }
        }
        Err(FlowError::State(StateError::Unavailable(format!(
            "the session's flow kept changing under {ATTEMPTS} attempts"
        ))))
    }
}
