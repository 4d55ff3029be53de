//! The session directory: how an MCP session opened through one instance of a fleet continues
//! on another (issue 22). Each instance keeps its open sessions in memory (the gateway's
//! `Sessions`); the directory is where every instance publishes the sessions it opens, so that
//! a request carrying an `Mcp-Session-Id` the instance has never seen — its client's previous
//! instance died, or a load balancer without stickiness sent it here — is looked up and
//! continued, for the credential that opened it only.
//!
//! Implementations: `warden_state::MemorySessions` (in process) and
//! `warden_state::RedisSessions` (a fleet); one conformance suite,
//! `crates/warden-state/tests/sessions.rs`. An instance alone keeps no directory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::StateError;

/// A session as the directory keeps it: who may continue it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionEntry {
    /// The credential id that opened it (only it may continue it).
    pub credential: String,
    /// Its agent.
    pub agent: String,
    /// The credential ids of its credential's chain, root first.
    pub credentials: Vec<String>,
    /// The agents of its credential's chain, root first.
    pub agents: Vec<String>,
    /// What its client declared it can answer (its `initialize`'s `capabilities`, as JSON), so
    /// that the instance continuing it asks the client only what it declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<serde_json::Value>,
}

/// Whether `id` may name a session in a directory: 1 to 128 visible ASCII characters (what an
/// `Mcp-Session-Id` may hold). Anything else is never looked up.
#[must_use]
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// How a directory writes who holds the reservation of a reply: the instance and its wait,
/// `<instance> <wait>` (an instance id holds no space; see [`valid_session_id`]).
#[must_use]
pub fn reply_holder(instance: &str, wait: u64) -> String {
    format!("{instance} {wait}")
}

/// The instance of a holder [`reply_holder`] wrote.
#[must_use]
pub fn holder_instance(holder: &str) -> Option<&str> {
    holder.split_once(' ').map(|(instance, _)| instance)
}

/// Where the instances of a fleet find each other's MCP sessions.
pub trait SessionDirectory: Send + Sync {
    /// Publishes session `id`; it is forgotten after `idle` without [`SessionDirectory::touch`].
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn publish(&self, id: &str, entry: &SessionEntry, idle: Duration) -> Result<(), StateError>;

    /// The session `id`, if it was published and has not ended or been forgotten.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached or holds something
    /// that is not an entry.
    fn lookup(&self, id: &str) -> Result<Option<SessionEntry>, StateError>;

    /// Keeps session `id` for another `idle` (it was used); `false` if the directory no
    /// longer has it (it ended through another instance, or was forgotten).
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn touch(&self, id: &str, idle: Duration) -> Result<bool, StateError>;

    /// Ends session `id` for every instance (an HTTP `DELETE`).
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn end(&self, id: &str) -> Result<(), StateError>;

    /// Publishes where instance `id` of the fleet takes what the others forward to it (the URL
    /// of its `/mcp`); forgotten after `ttl` unless published again.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn publish_instance(&self, id: &str, url: &str, ttl: Duration) -> Result<(), StateError>;

    /// Where instance `id` takes forwarded requests, if it published that and is not
    /// forgotten. Only a URL an instance published can come back: never one a client wrote.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached or holds something
    /// that is not a URL.
    fn instance(&self, id: &str) -> Result<Option<String>, StateError>;

    /// Reserves for the wait `wait` of instance `instance`, for `ttl`, the reply of session
    /// `id`'s client to the request `request` (the JSON of its id): `true` when the
    /// reservation is this wait's (it was free, or held by an earlier wait of the same
    /// instance, which keeps one wait per id itself), `false` when a call on another instance
    /// waits for a reply under the same id (as one instance refuses a second wait under one id).
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn note_waiting(
        &self,
        id: &str,
        request: &str,
        instance: &str,
        wait: u64,
        ttl: Duration,
    ) -> Result<bool, StateError>;

    /// The instance whose call waits for session `id`'s reply to `request`.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn waiting(&self, id: &str, request: &str) -> Result<Option<String>, StateError>;

    /// Gives up the reservation of session `id`'s reply to `request` made for the wait `wait`
    /// of instance `instance` (its call no longer waits); a later wait's, or another
    /// instance's, is left alone.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the directory cannot be reached.
    fn forget_waiting(
        &self,
        id: &str,
        request: &str,
        instance: &str,
        wait: u64,
    ) -> Result<(), StateError>;
}

/// What one instance of a fleet tells the others about an MCP session whose requests reach
/// several of them (a balancer without stickiness): a session's subscription is held by the
/// instance its `resources/subscribe` reached, its stream (`GET /mcp`) by the instance that
/// `GET` reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "notice", rename_all = "snake_case")]
pub enum SessionNotice {
    /// A resource session `session` subscribed to changed: for whichever instance holds the
    /// session's stream.
    Updated {
        /// The session.
        session: String,
        /// The resource.
        uri: String,
    },
    /// Session `session` unsubscribed from `uri`: whichever instance holds a subscription to
    /// it made before ends it (one made after, a subscribe again, is left alone).
    Unsubscribed {
        /// The session.
        session: String,
        /// The resource.
        uri: String,
        /// When, in Unix milliseconds.
        at_ms: i64,
    },
}

impl SessionNotice {
    /// The session it is about.
    #[must_use]
    pub fn session(&self) -> &str {
        match self {
            SessionNotice::Updated { session, .. }
            | SessionNotice::Unsubscribed { session, .. } => session,
        }
    }
}

/// Carries [`SessionNotice`]s to every instance of a fleet. Implementations:
/// `warden_state::MemoryNotices` (in process) and `warden_state::RedisNotices` (Redis pub/sub);
/// one conformance suite, `crates/warden-state/tests/notices.rs`. An instance alone needs none:
/// it holds all of its sessions.
pub trait NoticeBus: Send + Sync {
    /// Tells every instance listening (this one included) `notice`.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the bus cannot be reached.
    fn publish(&self, notice: &SessionNotice) -> Result<(), StateError>;

    /// Hands `on` each notice published from the moment it listens, until `stop` answers true
    /// (asked at least every 250 ms). Blocks the calling thread.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] when the bus fails; notices until the caller listens again
    /// are missed.
    fn listen(
        &self,
        on: &mut dyn FnMut(SessionNotice),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), StateError>;
}
