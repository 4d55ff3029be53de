//! The events contract: what operators are told about, handed from the instance where it
//! happened to the instance that delivers it.
//!
//! Approval requests, brakes, tripped breakers, demotions and governance proposals become
//! [`Event`]s. The Runtime publishes each one to an [`EventQueue`] and never waits for its
//! delivery; a dispatcher takes them off the queue and posts them to the manifest's webhooks.
//! The queue is a port so that a fleet shares it: an event published on one instance is taken
//! by exactly one dispatcher, whichever instance runs it (a Redis stream read by a consumer
//! group is the shape the trait is cut for).
//!
//! Events are notifications, not the record: the same facts are in the ledger before an event
//! is published, so a lost event loses a message, never evidence.
//!
//! INVARIANT (off the governed path): publishing never blocks on delivery; a full queue refuses
//! the event ([`EventError::Full`]) and the caller logs it and carries on.

use crate::time::UnixSeconds;
use std::time::Duration;

/// Something operators are told about.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// What happened: `approval.requested`, `brake.kill`, `breaker.tripped`, ...
    pub kind: String,
    /// One line for a human (the ledger's reason; never a secret or an argument value).
    pub text: String,
    /// Structured details for receivers that read them.
    pub details: serde_json::Value,
    /// When it happened.
    pub time: UnixSeconds,
}

/// Why the queue could not take or hand out an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The queue holds as many undelivered events as it may: this one was not queued.
    #[error("event queue full ({0} undelivered events): event dropped")]
    Full(usize),
    /// The backing queue is unreachable or failed.
    #[error("event queue unavailable: {0}")]
    Unavailable(String),
}

/// Where events wait between the instance that publishes them and the one that delivers them.
pub trait EventQueue: Send + Sync {
    /// Queues `event` for delivery, without waiting for any dispatcher.
    ///
    /// # Errors
    /// [`EventError::Full`] when the queue is at its bound; [`EventError::Unavailable`] when
    /// the queue cannot be reached. Either way the event is not queued.
    fn publish(&self, event: Event) -> Result<(), EventError>;

    /// Takes up to `max` events, oldest first, waiting up to `wait` for the first one (an
    /// empty answer: none came). Each published event is taken once, by one caller, however
    /// many take at the same time. Blocks the calling thread.
    ///
    /// # Errors
    /// [`EventError::Unavailable`] when the queue cannot be reached.
    fn take(&self, max: usize, wait: Duration) -> Result<Vec<Event>, EventError>;
}
