//! One Redis pub/sub channel ([`crate::RedisBrakes`], [`crate::RedisNotices`]): a message is
//! one `PUBLISH`, and every listener holds a subscription on a connection of its own.
//!
//! Pub/sub delivers to whoever is subscribed at that moment: a listener whose subscription is
//! down (Redis restarting) misses what is published meanwhile. Each port says why that is
//! acceptable for what it carries.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How often a listener asks whether to stop (its subscription's read timeout).
const TICK: Duration = Duration::from_millis(200);

/// How long a quiet subscription goes before it is checked with a PING (a connection a
/// middlebox dropped in silence would otherwise never be noticed).
const PING_EVERY: Duration = Duration::from_secs(30);

/// A channel on the Redis a fleet shares, carrying messages of type `T` as JSON.
pub(crate) struct Channel {
    pool: crate::redis_pool::Pool,
    name: String,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the channel is shown.
        f.debug_struct("Channel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why the channel failed, as text (each port wraps it in its own error).
pub(crate) fn failure(e: &dyn std::fmt::Display) -> String {
    format!("redis: {e}")
}

impl Channel {
    /// The channel `name` on the Redis at `url`. Connects on first use.
    pub(crate) fn new(url: &str, name: String) -> Result<Channel, String> {
        Ok(Channel {
            pool: crate::redis_pool::Pool::open(url).map_err(|e| failure(&e))?,
            name,
        })
    }

    /// Publishes `message`.
    pub(crate) fn publish<T: Serialize>(&self, message: &T) -> Result<(), String> {
        let payload = serde_json::to_string(message).map_err(|e| failure(&e))?;
        self.pool
            .with(Duration::ZERO, |c| {
                redis::cmd("PUBLISH")
                    .arg(&self.name)
                    .arg(&payload)
                    .query::<i64>(c)
            })
            .map(|_| ())
            .map_err(|e| failure(&e))
    }

    /// Hands `on` each message published from the moment it subscribes, until `stop` answers
    /// true.
    pub(crate) fn listen<T: DeserializeOwned>(
        &self,
        on: &mut dyn FnMut(T),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let mut conn = self.pool.dedicated().map_err(|e| failure(&e))?;
        let mut sub = conn.as_pubsub();
        sub.set_read_timeout(Some(TICK)).map_err(|e| failure(&e))?;
        sub.subscribe(&self.name).map_err(|e| failure(&e))?;
        let mut heard = std::time::Instant::now();
        loop {
            if stop() {
                return Ok(());
            }
            let msg = match sub.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => {
                    if heard.elapsed() > PING_EVERY {
                        sub.ping::<()>().map_err(|e| failure(&e))?;
                        heard = std::time::Instant::now();
                    }
                    continue;
                }
                Err(e) => return Err(failure(&e)),
            };
            heard = std::time::Instant::now();
            // Anyone who can publish on the fleet's Redis can send anything: what is not a
            // message of this channel is ignored (and said), never acted on.
            match serde_json::from_slice::<T>(msg.get_payload_bytes()) {
                Ok(message) => on(message),
                Err(e) => {
                    tracing::warn!(error = %e, channel = %self.name, "a message of the wrong shape was ignored");
                }
            }
        }
    }
}
