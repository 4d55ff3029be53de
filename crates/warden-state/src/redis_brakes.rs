//! [`RedisBrakes`]: the brake bus of a fleet (issue 22), on Redis pub/sub: an announcement is
//! one `PUBLISH` on `<prefix>brakes` (the scope as JSON), and every instance's listener holds a
//! subscription to it on a connection of its own.
//!
//! Pub/sub delivers to whoever is subscribed at that moment: an instance whose subscription is
//! down (Redis restarting) misses what is announced meanwhile. That loses nothing that matters
//! for safety: the hold is in the shared state, which every decision reads, and the Executor
//! reads it again right before each call runs; what it misses is stopping a call already past
//! both checks.

use std::time::Duration;

use warden_core::brakes::{BrakeBus, BrakeError};
use warden_core::state::HoldScope;

/// How often a listener asks whether to stop (its subscription's read timeout).
const TICK: Duration = Duration::from_millis(200);

/// How long a quiet subscription goes before it is checked with a PING (a connection a
/// middlebox dropped in silence would otherwise never be noticed).
const PING_EVERY: Duration = Duration::from_secs(30);

/// The brake bus in a Redis shared by the instances of a fleet.
pub struct RedisBrakes {
    pool: crate::redis_pool::Pool,
    channel: String,
}

impl std::fmt::Debug for RedisBrakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the channel is shown.
        f.debug_struct("RedisBrakes")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> BrakeError {
    BrakeError::Unavailable(format!("redis: {e}"))
}

impl RedisBrakes {
    /// The bus on the Redis at `url`, its channel under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`] for a malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisBrakes, BrakeError> {
        Ok(RedisBrakes {
            pool: crate::redis_pool::Pool::open(url).map_err(|e| unavailable(&e))?,
            channel: format!("{prefix}brakes"),
        })
    }
}

impl BrakeBus for RedisBrakes {
    fn announce(&self, scope: &HoldScope) -> Result<(), BrakeError> {
        let payload = serde_json::to_string(scope).map_err(|e| unavailable(&e))?;
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(payload)
                    .query::<i64>(c)
            })
            .map(|_| ())
            .map_err(|e| unavailable(&e))
    }

    fn listen(
        &self,
        on: &mut dyn FnMut(HoldScope),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), BrakeError> {
        let mut conn = self.pool.dedicated().map_err(|e| unavailable(&e))?;
        let mut sub = conn.as_pubsub();
        sub.set_read_timeout(Some(TICK))
            .map_err(|e| unavailable(&e))?;
        sub.subscribe(&self.channel).map_err(|e| unavailable(&e))?;
        let mut heard = std::time::Instant::now();
        loop {
            if stop() {
                return Ok(());
            }
            let msg = match sub.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => {
                    if heard.elapsed() > PING_EVERY {
                        sub.ping::<()>().map_err(|e| unavailable(&e))?;
                        heard = std::time::Instant::now();
                    }
                    continue;
                }
                Err(e) => return Err(unavailable(&e)),
            };
            heard = std::time::Instant::now();
            // Anyone who can publish on the fleet's Redis can send anything: what is not a
            // scope is ignored (and said), never acted on.
            match serde_json::from_slice::<HoldScope>(msg.get_payload_bytes()) {
                Ok(scope) => on(scope),
                Err(e) => {
                    tracing::warn!(error = %e, channel = %self.channel, "brake bus: a message that is not a scope was ignored");
                }
            }
        }
    }
}
