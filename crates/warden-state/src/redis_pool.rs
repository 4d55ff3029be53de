//! The connections a Redis-backed port keeps ([`crate::RedisState`], [`crate::RedisEvents`]):
//! a call takes an idle one (or opens one), and puts it back only when it succeeded, so a
//! connection that failed is dropped and the next call reconnects; an idle connection the
//! server closed is replaced at once ([`Pool::with`]).

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
    ///
    /// An idle connection the server has closed since it was put back (Redis restarted, or
    /// dropped idle clients) fails at once with the connection gone: the other idle ones are
    /// then presumed gone too and dropped, and `f` is tried once more on a new connection, so
    /// the first requests after a Redis comes back are not refused for connections the pool
    /// no longer has. Only a server that ran a command and then closed the connection before
    /// its reply makes that command run twice (a spend counted twice, which errs towards
    /// stricter; an event or a notice published twice); without the retry the caller was told
    /// that such a command failed though it ran.
    pub(crate) fn with<T>(
        &self,
        wait: Duration,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        // Taken in a statement of its own: the lock is released before `f` runs.
        let pooled = self.idle()?.pop();
        if let Some(conn) = pooled {
            match self.run(conn, wait, &f) {
                Err(e) if e.is_connection_dropped() => self.idle()?.clear(),
                other => return other,
            }
        }
        let fresh = self.client.get_connection_with_timeout(TIMEOUT)?;
        self.run(fresh, wait, &f)
    }

    /// The idle connections.
    fn idle(&self) -> redis::RedisResult<std::sync::MutexGuard<'_, Vec<redis::Connection>>> {
        self.idle.lock().map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::ClientError, "pool lock poisoned"))
        })
    }

    /// `f` on `conn`, which goes back to the idle ones if it succeeded (and is dropped if not).
    fn run<T>(
        &self,
        mut conn: redis::Connection,
        wait: Duration,
        f: &impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        conn.set_read_timeout(Some(TIMEOUT + wait))?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        let out = f(&mut conn)?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        Ok(out)
    }
}
