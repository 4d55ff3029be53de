//! [`RedisNotices`]: the session notice bus of a fleet, on Redis pub/sub: a notice is one
//! `PUBLISH` on `<prefix>mcp-notices` (the notice as JSON), and every instance's listener holds
//! a subscription to it on a connection of its own.
//!
//! An instance whose subscription is down (Redis restarting) misses what is published
//! meanwhile: an update its session's client is not told of (updates say only "read it
//! again"), or an unsubscription, after which the subscription it holds goes on until the
//! session ends or its idle copy is swept. Neither reaches anything the client may not see:
//! the stream checks its credential before each message.

use warden_core::sessions::{NoticeBus, SessionNotice};
use warden_core::state::StateError;

use crate::redis_bus::Channel;

/// The session notice bus in a Redis shared by the instances of a fleet.
#[derive(Debug)]
pub struct RedisNotices {
    channel: Channel,
}

impl RedisNotices {
    /// The bus on the Redis at `url`, its channel under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] for a malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisNotices, StateError> {
        Ok(RedisNotices {
            channel: Channel::new(url, format!("{prefix}mcp-notices"))
                .map_err(StateError::Unavailable)?,
        })
    }
}

impl NoticeBus for RedisNotices {
    fn publish(&self, notice: &SessionNotice) -> Result<(), StateError> {
        self.channel
            .publish(notice)
            .map_err(StateError::Unavailable)
    }

    fn listen(
        &self,
        on: &mut dyn FnMut(SessionNotice),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), StateError> {
        self.channel
            .listen(on, stop)
            .map_err(StateError::Unavailable)
    }
}
