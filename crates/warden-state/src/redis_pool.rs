//! The connections a Redis-backed port keeps ([`crate::RedisState`], [`crate::RedisEvents`]):
//! a call takes an idle one (or opens one), and puts it back only when it succeeded, so a
//! connection that failed is dropped and the next call reconnects.

use std::sync::Mutex;
use std::time::Duration;

/// How long a connection may take to open, and a reply (beyond a call's own wait) to come.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);

/// A client and its idle connections.
pub(crate) struct Pool {
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
}

impl Pool {
    /// A pool on the Redis at `url` (nothing is connected yet).
    pub(crate) fn open(url: &str) -> redis::RedisResult<Pool> {
        Ok(Pool {
            client: redis::Client::open(url)?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A connection of its own (a subscription holds one for as long as it listens).
    pub(crate) fn dedicated(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self.client.get_connection_with_timeout(TIMEOUT)?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        Ok(conn)
    }

    /// Runs `f` on a connection whose replies may take `wait` more than [`TIMEOUT`].
    pub(crate) fn with<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self
            .idle
            .lock()
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::ClientError, "pool lock poisoned"))
            })?
            .pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.client.get_connection_with_timeout(TIMEOUT)?,
        };
        conn.set_read_timeout(Some(TIMEOUT + wait))?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        let out = f(&mut conn)?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        Ok(out)
    }
}
