//! [`RedisBrakes`]: the brake bus of a fleet (issue 22), on Redis pub/sub: an announcement is
//! one `PUBLISH` on `<prefix>brakes` (the scope as JSON), and every instance's listener holds a
//! subscription to it on a connection of its own.
//!
//! An instance whose subscription is down (Redis restarting) misses what is announced
//! meanwhile. That loses nothing that matters for safety: the hold is in the shared state,
//! which every decision reads, and the Executor reads it again right before each call runs;
//! what it misses is stopping a call already past both checks.

use warden_core::brakes::{BrakeBus, BrakeError};
use warden_core::state::HoldScope;

use crate::redis_bus::Channel;

/// The brake bus in a Redis shared by the instances of a fleet.
#[derive(Debug)]
pub struct RedisBrakes {
    channel: Channel,
}

impl RedisBrakes {
    /// The bus on the Redis at `url`, its channel under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`] for a malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisBrakes, BrakeError> {
        Ok(RedisBrakes {
            channel: Channel::new(url, format!("{prefix}brakes"))
                .map_err(BrakeError::Unavailable)?,
        })
    }
}

impl BrakeBus for RedisBrakes {
    fn announce(&self, scope: &HoldScope) -> Result<(), BrakeError> {
        self.channel.publish(scope).map_err(BrakeError::Unavailable)
    }

    fn listen(
        &self,
        on: &mut dyn FnMut(HoldScope),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), BrakeError> {
        self.channel
            .listen(on, stop)
            .map_err(BrakeError::Unavailable)
    }
}
