//! MCP sessions over Streamable HTTP, kept by Warden itself.
//!
//! rmcp serves every `/mcp` request statelessly (a handler per request, nothing kept between
//! requests), so an idle session costs only its entry here — a few hundred bytes instead of
//! the worker task and channels a session of rmcp's own keeps. What a session is for:
//!
//! - **Identity of the conversation.** The session id (`Mcp-Session-Id`, 128 random bits)
//!   is the `session` of every proposal made in it: session budgets, loop detection and
//!   session pauses count per session, and a `runner: session` sandbox lives as long as it.
//! - **Ownership.** A session answers only to the credential that opened it (403
//!   `session.not_yours`); an unknown or ended id is a 404, on which clients open a new one.
//! - **Cancellation.** `notifications/cancelled` arrives on a request of its own; it cancels
//!   the call it names in the same session, if that call is still running.
//! - **End.** `DELETE` ends a session; so does [`Limits::idle`] without a request, and so
//!   does eviction (below). Its calls in flight are cancelled and its session runners
//!   destroyed.
//!
//! - **A fleet.** With a session directory (the Runtime's, on the fleet's Redis), every session
//!   opened is published there, and a request naming a session this instance does not hold is
//!   looked up and continued here — for the credential that opened it only — so a client
//!   whose instance died, or a load balancer without stickiness, loses nothing. `DELETE` ends
//!   it for every instance; a session used only elsewhere ends here after its idle time.
//!
//! Bounds: an agent holds at most [`Limits::per_agent`] sessions and the gateway
//! [`Limits::total`]. At an agent's bound, its new session ends its own least recently used
//! *idle* session, so one agent filling its share hurts only itself; at the total bound, the
//! least recently used idle session of any agent ends. Only when every candidate has a call in
//! flight is `initialize` refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warden_core::sessions::{SessionDirectory, SessionEntry};

/// How often, at most, a session in use is touched in a fleet's directory.
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// How long sessions live and how many there may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A session without a request for this long ends (calls in flight keep it open).
    pub idle: Duration,
    /// Sessions per agent.
    pub per_agent: usize,
    /// Sessions in all.
    pub total: usize,
}

impl Default for Limits {
    /// 30 minutes idle; 1,024 sessions per agent; 100,000 in all (a few tens of MiB).
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(30 * 60),
            per_agent: 1024,
            total: 100_000,
        }
    }
}

/// Why a session id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such session: never opened, ended, or expired.
    Unknown,
    /// Opened with another credential.
    NotYours,
    /// Not held here, and the fleet's session directory cannot be reached (or this instance
    /// has no room to continue it).
    Unavailable,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Every session that could make room has a call in flight.
    #[error(
        "no room for another MCP session: {0} open, each with a call in flight; end some \
         (HTTP DELETE /mcp with their Mcp-Session-Id) or try again when calls finish"
    )]
    Full(usize),
    /// The operating system gave no randomness for the id.
    #[error("no randomness for a session id")]
    NoRandomness,
    /// The fleet's session directory cannot be reached: a session other instances could not
    /// continue is not opened.
    #[error("the fleet's MCP session directory cannot be reached: {0}")]
    Unavailable(String),
}

/// Requests waiting for their client's reply, per session, at most.
const MAX_REPLIES: usize = 16;

/// Messages queued for a session's standalone stream, at most.
pub(crate) const STREAM_QUEUE: usize = 64;

/// A reserved wait for a client's reply ([`Sessions::expect_reply`]).
#[derive(Debug)]
pub(crate) struct Waiting {
    /// Where the reply comes.
    pub(crate) reply: tokio::sync::oneshot::Receiver<serde_json::Value>,
    /// Its registration number (for [`Sessions::forget_reply`]).
    pub(crate) number: u64,
}

struct Open {
    credential: String,
    agent: String,
    /// The credential ids and agents of its credential's chain, root first: revoking any of
    /// them ends the session at the next sweep.
    chain: (Vec<String>, Vec<String>),
    /// Its runners' key (`session_key(agent, id)`), computed once.
    runner_key: String,
    seen: Instant,
    /// When the directory was last told it is in use.
    published: Instant,
    /// Its calls in flight: (JSON of the request id, registration number, the call's token).
    /// A session with any is neither expired nor evicted.
    calls: Vec<(String, u64, CancellationToken)>,
    /// What its client declared it can answer (`initialize`'s `capabilities`, kept in the
    /// fleet's directory too).
    client: Option<rmcp::model::ClientCapabilities>,
    /// Requests sent to its client on a call's stream, waiting for the reply the client POSTs
    /// (by the JSON of the request's id): the waiter's registration number and where the reply
    /// goes.
    replies: HashMap<String, (u64, tokio::sync::oneshot::Sender<serde_json::Value>)>,
    /// Its standalone stream (an HTTP `GET`, see `mcp_stream`), if one is open: its number
    /// (a later `GET` replaces it) and where its messages go. Dropping the sender ends it.
    stream: Option<(u64, tokio::sync::mpsc::Sender<serde_json::Value>)>,
    /// What its client subscribed to (`resources/subscribe`), by URI: dropping one
    /// unsubscribes, so the session's end ends them all.
    subscriptions: HashMap<String, (i64, Held)>,
}

/// Now, in Unix milliseconds (when a subscription was made, when an unsubscribe was asked).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A subscription a session holds (a [`warden_runtime::Subscription`]): dropping it ends it.
type Held = Box<dyn std::any::Any + Send + Sync>;

/// (last seen, id): least recently used first.
type Lru = BTreeSet<(Instant, String)>;

#[derive(Default)]
struct Inner {
    open: HashMap<String, Open>,
    /// Every open session by last use.
    lru: Lru,
    /// Each agent's open sessions by last use.
    by_agent: HashMap<String, Lru>,
    next_call: u64,
}

impl Inner {
    fn remove(&mut self, id: &str) -> Option<Open> {
        let open = self.open.remove(id)?;
        let key = (open.seen, id.to_owned());
        self.lru.remove(&key);
        if let Some(set) = self.by_agent.get_mut(&open.agent) {
            set.remove(&key);
            if set.is_empty() {
                self.by_agent.remove(&open.agent);
            }
        }
        // INVARIANT (an ended session runs nothing): its calls in flight stop with it.
        for (_, _, token) in &open.calls {
            token.cancel();
        }
        Some(open)
    }

    /// Marks session `id` used at `now` (keeping both orders in step).
    fn touch(&mut self, id: &str, now: Instant) {
        let Some(o) = self.open.get_mut(id) else {
            return;
        };
        // Reordering costs two tree updates; a session used again within a second stays put.
        if now.saturating_duration_since(o.seen) < Duration::from_secs(1) {
            return;
        }
        let old = (o.seen, id.to_owned());
        o.seen = now;
        self.lru.remove(&old);
        self.lru.insert((now, id.to_owned()));
        if let Some(set) = self.by_agent.get_mut(&o.agent) {
            set.remove(&old);
            set.insert((now, id.to_owned()));
        }
    }

    /// The least recently used session of `order` without a call in flight.
    fn idlest(&self, order: Option<&Lru>) -> Option<String> {
        order?
            .iter()
            .find(|(_, id)| self.open.get(id).is_some_and(|o| o.calls.is_empty()))
            .map(|(_, id)| id.clone())
    }
}

/// What ends a session's runners (the Executor's `end_session`, given the runner key).
pub type OnEnd = Box<dyn Fn(&str) + Send + Sync>;

/// The open MCP sessions of this gateway.
pub struct Sessions {
    inner: Mutex<Inner>,
    on_end: OnEnd,
    limits: Limits,
    directory: Option<Arc<dyn SessionDirectory>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.lock().open.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What a client can answer of an upstream's requests (sampling, elicitation, roots), as
/// the directory keeps it: nothing else of what it declared.
fn answerable(declared: &rmcp::model::ClientCapabilities) -> Option<serde_json::Value> {
    let mut kept = rmcp::model::ClientCapabilities::default();
    kept.sampling.clone_from(&declared.sampling);
    kept.elicitation.clone_from(&declared.elicitation);
    kept.roots.clone_from(&declared.roots);
    serde_json::to_value(kept).ok()
}

impl Sessions {
    /// Sessions within `limits`; `on_end` gets each ended session's runner key; `directory`
    /// is the fleet's (`None` for an instance alone).
    #[must_use]
    pub fn new(
        limits: Limits,
        on_end: OnEnd,
        directory: Option<Arc<dyn SessionDirectory>>,
    ) -> Arc<Self> {
        Arc::new(Sessions {
            inner: Mutex::default(),
            on_end,
            limits,
            directory,
        })
    }

    /// How long the directory keeps a session after it was last told of its use: the idle
    /// time and the longest it goes untold.
    fn directory_ttl(&self) -> Duration {
        self.limits.idle + self.touch_every()
    }

    /// How often a session in use is touched in the directory (at most): what it costs is one
    /// round trip per interval, and a session ended through another instance ends here within
    /// it.
    fn touch_every(&self) -> Duration {
        (self.limits.idle / 4).min(TOUCH_EVERY)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned table is still the table.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `credential` of `agent`, whose chain (credential ids and agents,
    /// root first, as [`Sessions::end_revoked`] checks them) is `chain` and whose client
    /// declared `client` in its `initialize`; its new id. At a bound, the least recently used
    /// idle session (the agent's own first) ends to make room.
    ///
    /// # Errors
    /// No room (every candidate has a call in flight), or no randomness.
    pub fn open(
        &self,
        credential: &str,
        agent: &str,
        chain: (Vec<String>, Vec<String>),
        client: Option<rmcp::model::ClientCapabilities>,
    ) -> Result<String, OpenError> {
        let id = warden_runtime::caller::random_id().ok_or(OpenError::NoRandomness)?;
        if let Some(directory) = &self.directory {
            let entry = SessionEntry {
                credential: credential.to_owned(),
                agent: agent.to_owned(),
                credentials: chain.0.clone(),
                agents: chain.1.clone(),
                client: client.as_ref().and_then(answerable),
            };
            directory
                .publish(&id, &entry, self.directory_ttl())
                .map_err(|e| OpenError::Unavailable(e.to_string()))?;
        }
        let ended = self.admit(&id, credential, agent, chain, client, Instant::now());
        if ended.is_err() {
            if let Some(directory) = &self.directory {
                let _ = directory.end(&id);
            }
        }
        self.end(ended?);
        Ok(id)
    }

    /// Holds session `id` here, making room at a bound; the runner keys of the sessions that
    /// ended for it.
    fn admit(
        &self,
        id: &str,
        credential: &str,
        agent: &str,
        chain: (Vec<String>, Vec<String>),
        client: Option<rmcp::model::ClientCapabilities>,
        now: Instant,
    ) -> Result<Vec<String>, OpenError> {
        let mut ended = Vec::new();
        let mut inner = self.lock();
        // Continued by two requests at once: the first holds it; the second just uses it.
        if inner.open.contains_key(id) {
            inner.touch(id, now);
            return Ok(ended);
        }
        let mine = inner.by_agent.get(agent).map_or(0, BTreeSet::len);
        if mine >= self.limits.per_agent {
            let victim = inner.idlest(inner.by_agent.get(agent));
            let Some(o) = victim.and_then(|v| inner.remove(&v)) else {
                return Err(OpenError::Full(mine));
            };
            ended.push(o.runner_key);
        }
        if inner.open.len() >= self.limits.total {
            let victim = inner.idlest(Some(&inner.lru));
            let Some(o) = victim.and_then(|v| inner.remove(&v)) else {
                return Err(OpenError::Full(inner.open.len()));
            };
            ended.push(o.runner_key);
        }
        inner.lru.insert((now, id.to_owned()));
        inner
            .by_agent
            .entry(agent.to_owned())
            .or_default()
            .insert((now, id.to_owned()));
        inner.open.insert(
            id.to_owned(),
            Open {
                credential: credential.to_owned(),
                agent: agent.to_owned(),
                chain,
                runner_key: warden_core::state::session_key(agent, id),
                seen: now,
                published: now,
                calls: Vec::new(),
                client,
                replies: HashMap::new(),
                stream: None,
                subscriptions: HashMap::new(),
            },
        );
        Ok(ended)
    }

    /// Whether `credential` may use session `id` (and if so, it was just used).
    ///
    /// # Errors
    /// Unknown (or ended), or another credential's.
    pub fn check(&self, id: &str, credential: &str) -> Result<(), Refused> {
        self.check_at(id, credential, Instant::now())
    }

    fn check_at(&self, id: &str, credential: &str, now: Instant) -> Result<(), Refused> {
        self.find(id, credential, now, false)
    }

    /// Finds session `id` of `credential` at `now` and uses it, or (`close`) ends it; one this
    /// instance does not hold is looked up in the fleet's directory.
    fn find(&self, id: &str, credential: &str, now: Instant, close: bool) -> Result<(), Refused> {
        let mut inner = self.lock();
        let Some(o) = inner.open.get_mut(id) else {
            drop(inner);
            return self.continue_from_directory(id, credential, now, close);
        };
        // INVARIANT (no session hijack): another credential's session is refused.
        if o.credential != credential {
            return Err(Refused::NotYours);
        }
        // Expired, though not yet swept: ended here (another instance may have kept it).
        let expired =
            o.calls.is_empty() && now.saturating_duration_since(o.seen) >= self.limits.idle;
        if !expired && !close {
            let tell = self.directory.is_some()
                && now.saturating_duration_since(o.published) >= self.touch_every();
            if tell {
                o.published = now;
            }
            inner.touch(id, now);
            drop(inner);
            if let (true, Some(directory)) = (tell, &self.directory) {
                match directory.touch(id, self.directory_ttl()) {
                    Ok(true) => {}
                    // Ended through another instance (a DELETE): it ends here too.
                    Ok(false) => {
                        let ended = self.lock().remove(id).map(|o| o.runner_key);
                        self.end(ended);
                        return Err(Refused::Unknown);
                    }
                    // Other instances may forget it sooner; it goes on here.
                    Err(e) => {
                        tracing::debug!(error = %e, "could not keep an MCP session in the directory");
                    }
                }
            }
            return Ok(());
        }
        let ended = inner.remove(id).map(|o| o.runner_key);
        drop(inner);
        self.end(ended);
        if expired {
            // Ended here; another instance may have kept it in use.
            return self.continue_from_directory(id, credential, now, close);
        }
        if let Some(directory) = &self.directory {
            // Not ended for the fleet: the client is told (503) and sends its DELETE again,
            // which then ends it through the directory.
            if let Err(e) = directory.end(id) {
                tracing::warn!(error = %e, "an MCP session ended here could not be ended in the fleet's directory");
                return Err(Refused::Unavailable);
            }
        }
        Ok(())
    }

    /// A session this instance does not hold: continued (or, `close`, ended) if the fleet's
    /// directory has it for `credential`.
    fn continue_from_directory(
        &self,
        id: &str,
        credential: &str,
        now: Instant,
        close: bool,
    ) -> Result<(), Refused> {
        let Some(directory) = &self.directory else {
            return Err(Refused::Unknown);
        };
        let entry = match directory.lookup(id) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(Refused::Unknown),
            Err(e) => {
                tracing::warn!(error = %e, "the fleet's MCP session directory cannot be read");
                return Err(Refused::Unavailable);
            }
        };
        // INVARIANT (no session hijack): another credential's session is refused, on every
        // instance.
        if entry.credential != credential {
            return Err(Refused::NotYours);
        }
        if close {
            return directory.end(id).map_err(|_| Refused::Unavailable);
        }
        let chain = (entry.credentials, entry.agents);
        // What the client declared where it opened the session (an entry that does not parse
        // declares nothing: its client is asked nothing).
        let client = entry.client.and_then(|c| serde_json::from_value(c).ok());
        match self.admit(id, credential, &entry.agent, chain, client, now) {
            Ok(ended) => {
                self.end(ended);
                Ok(())
            }
            Err(_) => Err(Refused::Unavailable),
        }
    }

    /// Ends session `id` of `credential` (an HTTP `DELETE`).
    ///
    /// # Errors
    /// As [`Sessions::check`]: nothing ends then, but for an expired session not yet swept,
    /// which ends and is unknown (as it is to a request).
    pub fn close(&self, id: &str, credential: &str) -> Result<(), Refused> {
        self.find(id, credential, Instant::now(), true)
    }

    /// Ends every session idle for at least [`Limits::idle`] at `now`; how many ended. In a
    /// fleet, an idle copy that holds subscriptions is kept while the directory still has its
    /// session: its client uses it through other instances (its stream there marks it in use),
    /// and its updates reach that stream through the fleet's notice bus.
    pub fn sweep(&self, now: Instant) -> usize {
        let stale: Vec<(String, bool)> = {
            let inner = self.lock();
            inner
                .lru
                .iter()
                .take_while(|(seen, _)| now.saturating_duration_since(*seen) >= self.limits.idle)
                .filter_map(|(_, id)| {
                    let o = inner.open.get(id).filter(|o| o.calls.is_empty())?;
                    Some((id.clone(), !o.subscriptions.is_empty()))
                })
                .collect()
        };
        // Asked outside the lock: a networked directory takes a round trip.
        let alive_elsewhere = |id: &str| {
            self.directory
                .as_ref()
                .is_some_and(|d| !matches!(d.lookup(id), Ok(None)))
        };
        let keep: Vec<&str> = stale
            .iter()
            .filter(|(id, subscribed)| *subscribed && alive_elsewhere(id))
            .map(|(id, _)| id.as_str())
            .collect();
        let ended: Vec<String> = {
            let mut inner = self.lock();
            for id in &keep {
                inner.touch(id, now);
            }
            // Used meanwhile (the lock was let go): not stale any more.
            let still_stale = |o: &Open| {
                o.calls.is_empty() && now.saturating_duration_since(o.seen) >= self.limits.idle
            };
            let gone: Vec<&str> = stale
                .iter()
                .map(|(id, _)| id.as_str())
                .filter(|id| !keep.contains(id))
                .filter(|id| inner.open.get(*id).is_some_and(still_stale))
                .collect();
            gone.into_iter()
                .filter_map(|id| inner.remove(id).map(|o| o.runner_key))
                .collect()
        };
        let n = ended.len();
        self.end(ended);
        n
    }

    /// Ends every session whose credential chain `revoked` says is revoked (calls in flight
    /// included: they are cancelled); how many ended. Requests were refused from the moment of
    /// revocation; this frees what the sessions held (their runners).
    pub fn end_revoked(&self, revoked: impl Fn(&[String], &[String]) -> bool) -> usize {
        let ended: Vec<String> = {
            let mut inner = self.lock();
            let gone: Vec<String> = inner
                .open
                .iter()
                .filter(|(_, o)| revoked(&o.chain.0, &o.chain.1))
                .map(|(id, _)| id.clone())
                .collect();
            gone.iter()
                .filter_map(|id| inner.remove(id).map(|o| o.runner_key))
                .collect()
        };
        let n = ended.len();
        self.end(ended);
        n
    }

    fn end(&self, runner_keys: impl IntoIterator<Item = String>) {
        for k in runner_keys {
            (self.on_end)(&k);
        }
    }

    /// How many sessions are open.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no session is open.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the client of session `id` declared it can answer.
    pub(crate) fn client(&self, id: &str) -> Option<rmcp::model::ClientCapabilities> {
        self.lock().open.get(id).and_then(|o| o.client.clone())
    }

    /// Reserves the wait for the reply to a request about to be sent to session `id`'s client
    /// as `request` (the JSON of its id), before it is sent (the reply may come before the send
    /// returns). `None` when the session is gone, waits for too many replies already, or
    /// another call of it waits under the same id (each call's requests are numbered from 0:
    /// two at once could not be told apart, so the second is not asked).
    pub(crate) fn expect_reply(&self, id: &str, request: &str) -> Option<Waiting> {
        let mut inner = self.lock();
        inner.next_call += 1;
        let number = inner.next_call;
        let open = inner.open.get_mut(id)?;
        if open.replies.len() >= MAX_REPLIES || open.replies.contains_key(request) {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        open.replies.insert(request.to_owned(), (number, tx));
        Some(Waiting { reply: rx, number })
    }

    /// Hands the reply the client of session `id` POSTed to the request waiting for it;
    /// whether one was.
    pub(crate) fn reply(&self, id: &str, request: &str, message: serde_json::Value) -> bool {
        let waiting = self
            .lock()
            .open
            .get_mut(id)
            .and_then(|o| o.replies.remove(request));
        waiting.is_some_and(|(_, tx)| tx.send(message).is_ok())
    }

    /// Gives up the wait registered as `number` (its call ended, or the send failed); a
    /// later wait under the same id is left alone.
    pub(crate) fn forget_reply(&self, id: &str, request: &str, number: u64) {
        if let Some(open) = self.lock().open.get_mut(id) {
            if open.replies.get(request).is_some_and(|(n, _)| *n == number) {
                open.replies.remove(request);
            }
        }
    }

    /// Opens session `id`'s standalone stream, ending an earlier one (a client reconnecting
    /// after its connection broke is not refused for the stream the server has not yet seen
    /// end): its number and where its messages come. `None` when the session is not open
    /// here.
    pub(crate) fn open_stream(
        &self,
        id: &str,
    ) -> Option<(u64, tokio::sync::mpsc::Receiver<serde_json::Value>)> {
        let mut inner = self.lock();
        inner.next_call = inner.next_call.wrapping_add(1);
        let number = inner.next_call;
        let open = inner.open.get_mut(id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        open.stream = Some((number, tx));
        Some((number, rx))
    }

    /// Forgets session `id`'s stream `number` (it closed); a later one is left alone.
    pub(crate) fn close_stream(&self, id: &str, number: u64) {
        if let Some(open) = self.lock().open.get_mut(id) {
            if open.stream.as_ref().is_some_and(|(n, _)| *n == number) {
                open.stream = None;
            }
        }
    }

    /// Queues `message` on session `id`'s standalone stream; whether it was. Without a stream
    /// open (the client opened none, or is between two), or with one [`STREAM_QUEUE`] messages
    /// behind, the message is dropped: what it says (an update, a list change) is for a client
    /// listening now.
    pub(crate) fn notify(&self, id: &str, message: serde_json::Value) -> bool {
        let inner = self.lock();
        let Some((_, tx)) = inner.open.get(id).and_then(|o| o.stream.as_ref()) else {
            return false;
        };
        tx.try_send(message).is_ok()
    }

    /// Whether session `id` may hold one more subscription (`Ok(false)` at `max`).
    ///
    /// # Errors
    /// The session is not open here.
    pub(crate) fn has_room(&self, id: &str, uri: &str, max: usize) -> Result<bool, Refused> {
        let inner = self.lock();
        let open = inner.open.get(id).ok_or(Refused::Unknown)?;
        Ok(open.subscriptions.len() < max || open.subscriptions.contains_key(uri))
    }

    /// Keeps `subscription` to `uri` with session `id` (replacing one to the same URI), so
    /// that it lasts until unsubscribed or the session ends; `Ok(false)` (the subscription
    /// dropped) when the session holds `max` others already (several subscribed at once).
    ///
    /// # Errors
    /// The session ended meanwhile (the subscription is dropped: nothing would end it).
    pub(crate) fn hold(
        &self,
        id: &str,
        uri: String,
        subscription: warden_runtime::Subscription,
        max: usize,
    ) -> Result<bool, Refused> {
        let replaced = {
            let mut inner = self.lock();
            let open = inner.open.get_mut(id).ok_or(Refused::Unknown)?;
            if open.subscriptions.len() >= max && !open.subscriptions.contains_key(&uri) {
                return Ok(false);
            }
            open.subscriptions
                .insert(uri, (now_ms(), Box::new(subscription)))
        };
        // Unsubscribed outside the sessions' lock.
        drop(replaced);
        Ok(true)
    }

    /// Ends session `id`'s subscription to `uri`; whether it had one.
    pub(crate) fn release(&self, id: &str, uri: &str) -> bool {
        let gone = self
            .lock()
            .open
            .get_mut(id)
            .and_then(|o| o.subscriptions.remove(uri));
        gone.is_some()
    }

    /// Ends session `id`'s subscription to `uri` if it was made at or before `at_ms` (Unix
    /// milliseconds): an unsubscribe through another instance of a fleet, which a subscribe
    /// again after it must outlast.
    pub(crate) fn release_made_before(&self, id: &str, uri: &str, at_ms: i64) -> bool {
        let gone = {
            let mut inner = self.lock();
            let Some(open) = inner.open.get_mut(id) else {
                return false;
            };
            if open
                .subscriptions
                .get(uri)
                .is_some_and(|(made, _)| *made <= at_ms)
            {
                open.subscriptions.remove(uri)
            } else {
                None
            }
        };
        gone.is_some()
    }

    /// Registers a call in flight in session `session` as `request` (the JSON of its JSON-RPC
    /// id), so that a `notifications/cancelled` naming it cancels `token`; the registration
    /// (and the session's hold against expiry and eviction) lasts as long as the guard.
    ///
    /// # Errors
    /// The session is no longer open (it ended after its request was let in): the call must
    /// not run.
    pub fn track(
        self: &Arc<Self>,
        session: &str,
        request: String,
        token: CancellationToken,
    ) -> Result<Tracked, Refused> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.next_call = inner.next_call.wrapping_add(1);
        let number = inner.next_call;
        let runner_key = match inner.open.get_mut(session) {
            // INVARIANT (an ended session runs nothing): a call that reaches here after its
            // session ended is refused, not run in a session nothing will end again.
            None => return Err(Refused::Unknown),
            Some(o) => {
                o.calls.push((request, number, token));
                o.runner_key.clone()
            }
        };
        inner.touch(session, now);
        Ok(Tracked {
            sessions: Arc::clone(self),
            session: session.to_owned(),
            number,
            runner_key,
        })
    }

    /// Cancels call `request` of `session` if it is in flight; whether it was.
    pub fn cancel(&self, session: &str, request: &str) -> bool {
        let inner = self.lock();
        let Some(o) = inner.open.get(session) else {
            return false;
        };
        let mut found = false;
        for (_, _, token) in o.calls.iter().filter(|(r, _, _)| r == request) {
            token.cancel();
            found = true;
        }
        found
    }

    /// Makes as if the directory was last told of session `id` `by` ago.
    #[cfg(test)]
    fn unpublish_for(&self, id: &str, by: Duration) {
        if let Some(o) = self.lock().open.get_mut(id) {
            o.published -= by;
        }
    }

    #[cfg(test)]
    fn age(&self, id: &str, by: Duration) {
        let mut inner = self.lock();
        let o = inner.open.get_mut(id).unwrap();
        let old = (o.seen, id.to_owned());
        o.seen -= by;
        let new = (o.seen, id.to_owned());
        let agent = o.agent.clone();
        inner.lru.remove(&old);
        inner.lru.insert(new.clone());
        let set = inner.by_agent.get_mut(&agent).unwrap();
        set.remove(&old);
        set.insert(new);
    }
}

/// A call in flight (see [`Sessions::track`]).
#[derive(Debug)]
pub struct Tracked {
    sessions: Arc<Sessions>,
    session: String,
    /// Which registration this is: another call with the same id (which a client must not
    /// send, but may) has its own, which this guard leaves alone.
    number: u64,
    runner_key: String,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let session = std::mem::take(&mut self.session);
        let mut inner = self.sessions.lock();
        let open = match inner.open.get_mut(&session) {
            Some(o) => {
                o.calls.retain(|(_, n, _)| *n != self.number);
                true
            }
            None => false,
        };
        if open {
            inner.touch(&session, Instant::now());
        } else {
            // The session ended while this call ran: whatever runner the call started after
            // that end goes now.
            drop(inner);
            (self.sessions.on_end)(&self.runner_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Sessions {
        /// A session of a credential that is its own chain (no delegation).
        fn open_alone(&self, credential: &str, agent: &str) -> Result<String, OpenError> {
            self.open(
                credential,
                agent,
                (vec![credential.to_owned()], vec![agent.to_owned()]),
                None,
            )
        }
    }

    fn sessions(limits: Limits) -> (Arc<Sessions>, Arc<Mutex<Vec<String>>>) {
        let ended = Arc::new(Mutex::new(Vec::new()));
        let e = Arc::clone(&ended);
        let s = Sessions::new(
            limits,
            Box::new(move |k: &str| e.lock().unwrap().push(k.to_owned())),
            None,
        );
        (s, ended)
    }

    fn idle(secs: u64) -> Limits {
        Limits {
            idle: Duration::from_secs(secs),
            ..Limits::default()
        }
    }

    #[test]
    fn a_sessions_stream_gets_its_messages_until_a_later_one_replaces_it_or_the_session_ends() {
        use tokio::sync::mpsc::error::TryRecvError;
        let (s, _) = sessions(Limits::default());
        let id = s.open_alone("cred-a", "agent-a").unwrap();
        assert!(!s.notify(&id, 1.into()), "no stream open: nothing queued");
        let (first_number, mut first) = s.open_stream(&id).unwrap();
        assert!(s.notify(&id, 1.into()));
        assert_eq!(first.try_recv().unwrap(), 1);
        let (_, mut second) = s.open_stream(&id).unwrap();
        assert_eq!(
            first.try_recv(),
            Err(TryRecvError::Disconnected),
            "replaced"
        );
        s.close_stream(&id, first_number);
        assert!(
            s.notify(&id, 2.into()),
            "the earlier stream's close leaves the later one"
        );
        assert_eq!(second.try_recv().unwrap(), 2);
        for _ in 0..STREAM_QUEUE {
            assert!(s.notify(&id, 3.into()));
        }
        assert!(
            !s.notify(&id, 4.into()),
            "a stream that fell behind misses what comes"
        );
        s.close(&id, "cred-a").unwrap();
        while second.try_recv().is_ok() {}
        assert_eq!(
            second.try_recv(),
            Err(TryRecvError::Disconnected),
            "ended with its session"
        );
        assert!(s.open_stream(&id).is_none());
        assert!(!s.notify(&id, 5.into()));
        assert_eq!(s.has_room(&id, "a://1", 1), Err(Refused::Unknown));
    }

    #[test]
    fn a_session_answers_only_to_its_credential_and_ends_with_delete() {
        let (s, ended) = sessions(Limits::default());
        let id = s.open_alone("cred-a", "agent-a").unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(
            s.open_alone("cred-a", "agent-a").unwrap(),
            id,
            "ids are fresh"
        );
        assert_eq!(s.check(&id, "cred-a"), Ok(()));
        assert_eq!(s.check(&id, "cred-b"), Err(Refused::NotYours));
        assert_eq!(s.close(&id, "cred-b"), Err(Refused::NotYours));
        assert!(ended.lock().unwrap().is_empty());
        assert_eq!(s.check("no-such-session", "cred-a"), Err(Refused::Unknown));
        assert_eq!(s.close(&id, "cred-a"), Ok(()));
        assert_eq!(*ended.lock().unwrap(), vec![format!("agent-a/{id}")]);
        assert_eq!(s.check(&id, "cred-a"), Err(Refused::Unknown));
        assert_eq!(s.close(&id, "cred-a"), Err(Refused::Unknown));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_reply_reaches_only_the_wait_reserved_for_its_id_in_its_session() {
        let (s, _) = sessions(Limits::default());
        let a = s.open_alone("cred-a", "agent-a").unwrap();
        let b = s.open_alone("cred-a", "agent-a").unwrap();
        let mut first = s.expect_reply(&a, "0").unwrap();
        // Another call of the same session may not wait under the same id; another session may.
        assert!(s.expect_reply(&a, "0").is_none());
        let mut other = s.expect_reply(&b, "0").unwrap();
        // A reply for an id nobody waits on, or in another session, reaches nothing.
        assert!(!s.reply(&a, "1", serde_json::json!({"result": {}})));
        assert!(s.reply(&b, "0", serde_json::json!({"result": "b"})));
        assert_eq!(other.reply.try_recv().unwrap()["result"], "b");
        assert!(first.reply.try_recv().is_err(), "still waiting");
        // Forgetting an older wait leaves a newer one under the same id alone.
        s.forget_reply(&a, "0", first.number);
        let newer = s.expect_reply(&a, "0").unwrap();
        s.forget_reply(&a, "0", first.number);
        assert!(s.reply(&a, "0", serde_json::json!({"result": "a"})));
        drop(newer);
        // Bounded per session; nothing for a session that ended.
        let held: Vec<_> = (1..=16)
            .map(|i| s.expect_reply(&b, &i.to_string()))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(s.expect_reply(&b, "17").is_none());
        assert_eq!(s.close(&a, "cred-a"), Ok(()));
        assert!(s.expect_reply(&a, "5").is_none());
    }

    #[test]
    fn idle_sessions_expire_but_not_while_a_call_runs() {
        let (s, ended) = sessions(idle(60));
        let busy = s.open_alone("c", "a").unwrap();
        let quiet = s.open_alone("c", "a").unwrap();
        let call = s
            .track(&busy, "1".into(), CancellationToken::new())
            .unwrap();
        // The call runs two minutes; meanwhile the quiet session expires, the busy one not.
        s.age(&busy, Duration::from_secs(120));
        s.age(&quiet, Duration::from_secs(120));
        assert_eq!(s.sweep(Instant::now()), 1);
        assert_eq!(*ended.lock().unwrap(), vec![format!("a/{quiet}")]);
        assert_eq!(s.check(&quiet, "c"), Err(Refused::Unknown));
        // The call's end counts as use: without it, the busy session would be 2 minutes idle.
        drop(call);
        assert_eq!(s.sweep(Instant::now()), 0);
        assert_eq!(s.check(&busy, "c"), Ok(()));
        assert_eq!(s.sweep(Instant::now() + Duration::from_secs(61)), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn revoking_anything_on_a_credentials_chain_ends_its_sessions_and_calls() {
        let (s, ended) = sessions(Limits::default());
        let chain = |c: &[&str], a: &[&str]| {
            (
                c.iter().map(|x| (*x).to_owned()).collect(),
                a.iter().map(|x| (*x).to_owned()).collect(),
            )
        };
        let child = s
            .open(
                "cred-child",
                "sub",
                chain(&["cred-root", "cred-child"], &["root", "sub"]),
                None,
            )
            .unwrap();
        let other = s
            .open("cred-x", "x", chain(&["cred-x"], &["x"]), None)
            .unwrap();
        let call = CancellationToken::new();
        let _tracked = s.track(&child, "1".into(), call.clone()).unwrap();
        let revoked = |creds: &[String], agents: &[String]| {
            creds.iter().any(|c| c == "cred-root") || agents.iter().any(|a| a == "nobody")
        };
        // The root credential is revoked: the child's session ends, with its call in flight.
        assert_eq!(s.end_revoked(revoked), 1);
        assert!(call.is_cancelled());
        assert_eq!(s.check(&child, "cred-child"), Err(Refused::Unknown));
        assert_eq!(*ended.lock().unwrap(), vec![format!("sub/{child}")]);
        assert_eq!(s.check(&other, "cred-x"), Ok(()));
        // By agent too.
        assert_eq!(
            s.end_revoked(|_, agents| agents.iter().any(|a| a == "x")),
            1
        );
        assert!(s.is_empty());
    }

    #[test]
    fn an_idle_copy_holding_subscriptions_stays_while_its_session_lives_elsewhere() {
        let directory: Arc<dyn SessionDirectory> = Arc::new(warden_state::MemorySessions::new());
        let f = fleet(2, &directory);
        let id = f[0].open_alone("c", "a").unwrap();
        // A subscription held by an instance's copy of `id` (what its subscribe leaves).
        let subscribe = |s: &Sessions| {
            s.lock()
                .open
                .get_mut(&id)
                .unwrap()
                .subscriptions
                .insert("file:///a".into(), (now_ms(), Box::new(())));
        };
        assert_eq!(f[1].check(&id, "c"), Ok(()));
        let plain = f[0].open_alone("c", "a").unwrap();
        assert_eq!(f[1].check(&plain, "c"), Ok(()));
        // The second instance holds a subscription of `id` (its subscribe reached it), and
        // sees no request of either session for longer than the idle time.
        subscribe(&f[1]);
        let idle = Limits::default().idle;
        f[1].age(&id, idle);
        f[1].age(&plain, idle);
        // An unsubscribe through another instance asked before this subscription was made
        // leaves it; one asked after ends it (below, the subscription is made again).
        assert!(!f[1].release_made_before(&id, "file:///a", now_ms() - 60_000));
        assert!(f[1].release_made_before(&id, "file:///a", now_ms() + 1));
        subscribe(&f[1]);
        // The copy without subscriptions goes; the one with them stays while the directory
        // has its session (its stream elsewhere keeps it in use)...
        assert_eq!(f[1].sweep(Instant::now()), 1);
        assert_eq!(f[1].len(), 1);
        assert_eq!(f[1].has_room(&id, "file:///b", 256), Ok(true));
        // ... and goes once the session ended.
        assert_eq!(f[0].close(&id, "c"), Ok(()));
        f[1].age(&id, idle);
        assert_eq!(f[1].sweep(Instant::now()), 1);
        assert!(f[1].is_empty());
    }

    /// Instances of a fleet: sessions on one directory.
    fn fleet(n: usize, directory: &Arc<dyn SessionDirectory>) -> Vec<Arc<Sessions>> {
        (0..n)
            .map(|_| {
                Sessions::new(
                    Limits::default(),
                    Box::new(|_: &str| {}),
                    Some(Arc::clone(directory)),
                )
            })
            .collect()
    }

    #[test]
    fn a_session_continues_on_another_instance_for_its_credential_only() {
        let directory: Arc<dyn SessionDirectory> = Arc::new(warden_state::MemorySessions::new());
        let f = fleet(3, &directory);
        let id = f[0].open_alone("c", "a").unwrap();
        // Another instance has never seen it: it continues it, for its credential only.
        assert_eq!(f[1].check(&id, "other"), Err(Refused::NotYours));
        assert_eq!(f[1].check(&id, "c"), Ok(()));
        assert_eq!(f[1].len(), 1);
        assert_eq!(f[1].check(&id, "c"), Ok(()));
        // Ended through one instance: unknown to those that never held it, and ended on
        // those that do when they next tell the directory of its use.
        assert_eq!(f[1].close(&id, "c"), Ok(()));
        assert_eq!(f[2].check(&id, "c"), Err(Refused::Unknown));
        f[0].unpublish_for(&id, TOUCH_EVERY);
        assert_eq!(f[0].check(&id, "c"), Err(Refused::Unknown));
        assert!(f[0].is_empty());
        // An id no instance issued is unknown everywhere.
        assert_eq!(f[2].check("made-up", "c"), Err(Refused::Unknown));
        // Two requests continuing one session at once: one entry, in every order.
        let twice = f[0].open_alone("c", "a").unwrap();
        for _ in 0..2 {
            let chain = (vec!["c".to_owned()], vec!["a".to_owned()]);
            assert_eq!(
                f[2].admit(&twice, "c", "a", chain, None, Instant::now()),
                Ok(vec![])
            );
        }
        {
            let inner = f[2].lock();
            assert_eq!((inner.open.len(), inner.lru.len()), (1, 1));
            assert_eq!(inner.by_agent.get("a").map(BTreeSet::len), Some(1));
        }
        // Expired on the instance that opened it, but in use elsewhere: continued again.
        let id = f[0].open_alone("c", "a").unwrap();
        assert_eq!(f[1].check(&id, "c"), Ok(()));
        f[0].age(&id, Duration::from_secs(31 * 60));
        assert_eq!(f[0].check(&id, "c"), Ok(()));
        // What the client declared where it opened the session holds where it continues.
        let mut declared = rmcp::model::ClientCapabilities::default();
        declared.sampling = Some(rmcp::model::SamplingCapability::default());
        let id = f[0]
            .open(
                "c",
                "a",
                (vec!["c".into()], vec!["a".into()]),
                Some(declared),
            )
            .unwrap();
        assert_eq!(f[2].check(&id, "c"), Ok(()));
        assert!(f[2].client(&id).is_some_and(|c| c.sampling.is_some()));
        assert!(f[2].client(&id).is_some_and(|c| c.roots.is_none()));
    }

    #[test]
    fn without_its_directory_a_fleet_instance_opens_and_continues_nothing() {
        // A fleet's directory on a Redis that is not there.
        let directory: Arc<dyn SessionDirectory> =
            Arc::new(warden_state::RedisSessions::new("redis://127.0.0.1:1/", "p:").unwrap());
        let s = &fleet(1, &directory)[0];
        assert!(matches!(
            s.open_alone("c", "a"),
            Err(OpenError::Unavailable(_))
        ));
        assert!(s.is_empty());
        assert_eq!(s.check("some-id", "c"), Err(Refused::Unavailable));
    }

    #[test]
    fn an_expired_session_is_refused_even_before_a_sweep() {
        let (s, ended) = sessions(idle(60));
        let id = s.open_alone("c", "a").unwrap();
        assert_eq!(s.check(&id, "c"), Ok(()));
        s.age(&id, Duration::from_secs(60));
        assert_eq!(s.check(&id, "c"), Err(Refused::Unknown));
        assert_eq!(ended.lock().unwrap().len(), 1);
        // A DELETE of an expired session is answered as for any unknown one (404), and ends it
        // (its runners go); another credential's expired session is still not theirs to probe.
        let id = s.open_alone("c", "a").unwrap();
        s.age(&id, Duration::from_secs(60));
        assert_eq!(s.close(&id, "other"), Err(Refused::NotYours));
        assert_eq!(s.close(&id, "c"), Err(Refused::Unknown));
        assert_eq!(ended.lock().unwrap().len(), 2);
        assert!(s.is_empty());
    }

    #[test]
    fn cancellation_reaches_only_the_named_call_of_the_same_session() {
        let (s, _) = sessions(Limits::default());
        let a = s.open_alone("c", "a").unwrap();
        let b = s.open_alone("c", "a").unwrap();
        let (t1, t2) = (CancellationToken::new(), CancellationToken::new());
        let g1 = s.track(&a, "7".into(), t1.clone()).unwrap();
        let _g2 = s.track(&b, "7".into(), t2.clone()).unwrap();
        assert!(!s.cancel(&a, "\"7\""), "a string id is not the number");
        assert!(!s.cancel(&a, "8"));
        assert!(!t1.is_cancelled());
        assert!(s.cancel(&a, "7"));
        assert!(t1.is_cancelled());
        assert!(
            !t2.is_cancelled(),
            "the other session's call with the same id runs on"
        );
        drop(g1);
        assert!(!s.cancel(&a, "7"), "a finished call is forgotten");
        // Ending a session stops its calls in flight.
        s.close(&b, "c").unwrap();
        assert!(t2.is_cancelled());
    }

    #[test]
    fn a_reused_request_id_keeps_the_later_call_cancellable() {
        let (s, _) = sessions(Limits::default());
        let a = s.open_alone("c", "a").unwrap();
        let (t1, t2) = (CancellationToken::new(), CancellationToken::new());
        let first = s.track(&a, "1".into(), t1.clone()).unwrap();
        let _second = s.track(&a, "1".into(), t2.clone()).unwrap();
        drop(first);
        assert!(
            s.cancel(&a, "1"),
            "the first call's end did not forget the second"
        );
        assert!(t2.is_cancelled());
        assert!(!t1.is_cancelled());
    }

    #[test]
    fn a_call_let_in_after_its_session_ended_does_not_run_and_late_runners_end() {
        let (s, ended) = sessions(Limits::default());
        let id = s.open_alone("c", "a").unwrap();
        s.close(&id, "c").unwrap();
        assert_eq!(
            s.track(&id, "1".into(), CancellationToken::new()).err(),
            Some(Refused::Unknown)
        );
        assert!(
            s.track("mcp:c", "1".into(), CancellationToken::new())
                .is_err(),
            "outside a session nothing is registered"
        );
        // A call in flight when its session ends: cancelled, and the runner key is ended
        // again when it finishes (a runner it started meanwhile goes too).
        let id = s.open_alone("c", "a").unwrap();
        let token = CancellationToken::new();
        let call = s.track(&id, "2".into(), token.clone()).unwrap();
        s.close(&id, "c").unwrap();
        assert!(token.is_cancelled());
        ended.lock().unwrap().clear();
        drop(call);
        assert_eq!(*ended.lock().unwrap(), vec![format!("a/{id}")]);
    }

    #[test]
    fn at_a_bound_the_idlest_session_makes_room() {
        let limits = Limits {
            per_agent: 3,
            total: 5,
            ..Limits::default()
        };
        let (s, ended) = sessions(limits);
        let a: Vec<String> = (0..3).map(|_| s.open_alone("ca", "a").unwrap()).collect();
        // a[0] is used, so a[1] is now the agent's least recently used.
        s.age(&a[1], Duration::from_secs(10));
        s.age(&a[2], Duration::from_secs(5));
        s.age(&a[0], Duration::from_secs(20));
        assert_eq!(s.check(&a[0], "ca"), Ok(()));
        let a3 = s.open_alone("ca", "a").unwrap();
        assert_eq!(*ended.lock().unwrap(), vec![format!("a/{}", a[1])]);
        assert_eq!(s.check(&a[1], "ca"), Err(Refused::Unknown));
        // A session with a call in flight is never the one to go.
        let _busy = [&a[0], &a[2], &a3]
            .map(|id| s.track(id, "1".into(), CancellationToken::new()).unwrap());
        assert_eq!(s.open_alone("ca", "a"), Err(OpenError::Full(3)));
        // Another agent is not limited by a's share; at the total, the idlest idle goes.
        let b: Vec<String> = (0..2).map(|_| s.open_alone("cb", "b").unwrap()).collect();
        assert_eq!(s.len(), 5);
        s.age(&b[0], Duration::from_secs(30));
        ended.lock().unwrap().clear();
        let b2 = s.open_alone("cb", "b").unwrap();
        assert_eq!(*ended.lock().unwrap(), vec![format!("b/{}", b[0])]);
        assert_eq!(s.len(), 5);
        let _b_busy =
            [&b[1], &b2].map(|id| s.track(id, "1".into(), CancellationToken::new()).unwrap());
        assert_eq!(s.open_alone("cc", "c"), Err(OpenError::Full(5)));
    }
}
