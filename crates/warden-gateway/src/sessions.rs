//! MCP sessions over Streamable HTTP, kept by Warden itself.
//!
//! rmcp serves every `/mcp` request statelessly (a handler per request, nothing kept between
//! requests), so an idle session costs only its entry here — about two hundred bytes instead of
//! the worker task and channels a session of rmcp's own keeps. What a session is for:
//!
//! - **Identity of the conversation.** The session id (`Mcp-Session-Id`, 128 random bits)
//!   is the `session` of every proposal made in it: session budgets, loop detection and
//!   session pauses count per session, and a `runner: session` sandbox lives as long as it.
//! - **Ownership.** A session answers only to the credential that opened it (403
//!   `session.not_yours`); an unknown or expired id is a 404, on which clients open a new one.
//! - **Cancellation.** `notifications/cancelled` arrives on a request of its own; it cancels
//!   the call it names in the same session, if that call is still running.
//! - **End.** `DELETE` ends a session; so does [`SESSION_IDLE`] without a request. Either way
//!   its session runners are destroyed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A session without a request for this long ends (its calls in flight keep it open).
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Open sessions per credential; an `initialize` beyond it is refused until some end.
pub const MAX_PER_CREDENTIAL: usize = 4096;
/// Open sessions in all (about 25 MiB of entries at the limit).
pub const MAX_SESSIONS: usize = 100_000;

/// Why a session id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such session: never opened, ended, or expired.
    Unknown,
    /// Opened with another credential.
    NotYours,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// This credential holds [`MAX_PER_CREDENTIAL`] sessions.
    #[error(
        "this credential already holds {MAX_PER_CREDENTIAL} open MCP sessions: end some \
         (HTTP DELETE /mcp with their Mcp-Session-Id) or let idle ones expire"
    )]
    TooManyForCredential,
    /// The gateway holds [`MAX_SESSIONS`] sessions.
    #[error("the gateway holds {MAX_SESSIONS} open MCP sessions: try again later")]
    Full,
    /// The operating system gave no randomness for the id.
    #[error("no randomness for a session id")]
    NoRandomness,
}

struct Open {
    credential: String,
    /// Its runners' key (`session_key(agent, id)`), computed once.
    runner_key: String,
    seen: Instant,
    /// Calls in flight: a session with any does not expire.
    active: u32,
}

#[derive(Default)]
struct Inner {
    open: HashMap<String, Open>,
    per_credential: HashMap<String, usize>,
    /// (session, JSON of the request id) → the call's cancellation token.
    in_flight: HashMap<(String, String), CancellationToken>,
}

impl Inner {
    fn remove(&mut self, id: &str) -> Option<Open> {
        let open = self.open.remove(id)?;
        if let Some(n) = self.per_credential.get_mut(&open.credential) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_credential.remove(&open.credential);
            }
        }
        Some(open)
    }
}

/// What ends a session's runners (the Executor's `end_session`, given the runner key).
pub type OnEnd = Box<dyn Fn(&str) + Send + Sync>;

/// The open MCP sessions of this gateway.
pub struct Sessions {
    inner: Mutex<Inner>,
    on_end: OnEnd,
    idle: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.lock().open.len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions ending after `idle` without a request; `on_end` gets each ended session's
    /// runner key.
    #[must_use]
    pub fn new(idle: Duration, on_end: OnEnd) -> Arc<Self> {
        Arc::new(Sessions {
            inner: Mutex::default(),
            on_end,
            idle,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned table is still the table.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `credential` (whose agent is `agent`); its new id.
    ///
    /// # Errors
    /// A limit is reached, or there is no randomness.
    pub fn open(&self, credential: &str, agent: &str) -> Result<String, OpenError> {
        let id = warden_identity::credential::random_id().map_err(|_| OpenError::NoRandomness)?;
        let runner_key = warden_policy::decide::session_key(agent, &id);
        let mut inner = self.lock();
        if inner.open.len() >= MAX_SESSIONS
            || inner.per_credential.get(credential).copied().unwrap_or(0) >= MAX_PER_CREDENTIAL
        {
            let ended = self.expire(&mut inner, Instant::now());
            drop(inner);
            self.end(ended);
            inner = self.lock();
        }
        if inner.open.len() >= MAX_SESSIONS {
            return Err(OpenError::Full);
        }
        let n = inner
            .per_credential
            .entry(credential.to_owned())
            .or_insert(0);
        if *n >= MAX_PER_CREDENTIAL {
            return Err(OpenError::TooManyForCredential);
        }
        *n += 1;
        inner.open.insert(
            id.clone(),
            Open {
                credential: credential.to_owned(),
                runner_key,
                seen: Instant::now(),
                active: 0,
            },
        );
        Ok(id)
    }

    /// Whether `credential` may use session `id` (and if so, it was just seen).
    ///
    /// # Errors
    /// Unknown (or expired), or another credential's.
    pub fn check(&self, id: &str, credential: &str) -> Result<(), Refused> {
        let mut inner = self.lock();
        let idle = self.idle;
        match inner.open.get_mut(id) {
            None => Err(Refused::Unknown),
            // INVARIANT (no session hijack): another credential's session is refused.
            Some(o) if o.credential != credential => Err(Refused::NotYours),
            Some(o) if o.active == 0 && o.seen.elapsed() >= idle => {
                let ended = inner.remove(id).map(|o| o.runner_key);
                drop(inner);
                self.end(ended);
                Err(Refused::Unknown)
            }
            Some(o) => {
                o.seen = Instant::now();
                Ok(())
            }
        }
    }

    /// Ends session `id` of `credential` (an HTTP `DELETE`).
    ///
    /// # Errors
    /// As [`Sessions::check`]; nothing ends then.
    pub fn close(&self, id: &str, credential: &str) -> Result<(), Refused> {
        let mut inner = self.lock();
        match inner.open.get(id) {
            None => Err(Refused::Unknown),
            Some(o) if o.credential != credential => Err(Refused::NotYours),
            Some(_) => {
                let ended = inner.remove(id).map(|o| o.runner_key);
                // Its calls in flight stop with it.
                for ((s, _), token) in &inner.in_flight {
                    if s == id {
                        token.cancel();
                    }
                }
                drop(inner);
                self.end(ended);
                Ok(())
            }
        }
    }

    /// Ends every session idle for longer than the limit, now; how many ended.
    pub fn sweep(&self, now: Instant) -> usize {
        let ended = {
            let mut inner = self.lock();
            self.expire(&mut inner, now)
        };
        let n = ended.len();
        self.end(ended);
        n
    }

    fn expire(&self, inner: &mut Inner, now: Instant) -> Vec<String> {
        let idle = self.idle;
        let stale: Vec<String> = inner
            .open
            .iter()
            .filter(|(_, o)| o.active == 0 && now.saturating_duration_since(o.seen) >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        stale
            .iter()
            .filter_map(|id| inner.remove(id).map(|o| o.runner_key))
            .collect()
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

    /// Registers a call in flight as `request` (the JSON of its JSON-RPC id) of `session`, so
    /// that a `notifications/cancelled` naming it cancels `token`; the registration (and the
    /// session's hold against expiry) lasts as long as the returned guard.
    #[must_use]
    pub fn track(
        self: &Arc<Self>,
        session: &str,
        request: String,
        token: CancellationToken,
    ) -> Tracked {
        let key = (session.to_owned(), request);
        let mut inner = self.lock();
        if let Some(o) = inner.open.get_mut(session) {
            o.active = o.active.saturating_add(1);
            o.seen = Instant::now();
        }
        inner.in_flight.insert(key.clone(), token);
        Tracked {
            sessions: Arc::clone(self),
            key: Some(key),
        }
    }

    /// Cancels call `request` of `session` if it is in flight; whether it was.
    pub fn cancel(&self, session: &str, request: &str) -> bool {
        let inner = self.lock();
        let key = (session.to_owned(), request.to_owned());
        inner.in_flight.get(&key).is_some_and(|t| {
            t.cancel();
            true
        })
    }
}

/// A call in flight (see [`Sessions::track`]).
#[derive(Debug)]
pub struct Tracked {
    sessions: Arc<Sessions>,
    key: Option<(String, String)>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut inner = self.sessions.lock();
        inner.in_flight.remove(&key);
        if let Some(o) = inner.open.get_mut(&key.0) {
            o.active = o.active.saturating_sub(1);
            o.seen = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(idle: Duration) -> (Arc<Sessions>, Arc<Mutex<Vec<String>>>) {
        let ended = Arc::new(Mutex::new(Vec::new()));
        let e = Arc::clone(&ended);
        let s = Sessions::new(
            idle,
            Box::new(move |k: &str| e.lock().unwrap().push(k.to_owned())),
        );
        (s, ended)
    }

    #[test]
    fn a_session_answers_only_to_its_credential_and_ends_with_delete() {
        let (s, ended) = sessions(SESSION_IDLE);
        let id = s.open("cred-a", "agent-a").unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(s.open("cred-a", "agent-a").unwrap(), id, "ids are fresh");
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
    fn idle_sessions_expire_but_not_while_a_call_runs() {
        let (s, ended) = sessions(Duration::from_secs(60));
        let busy = s.open("c", "a").unwrap();
        let idle = s.open("c", "a").unwrap();
        let call = s.track(&busy, "1".into(), CancellationToken::new());
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(s.sweep(later), 1);
        assert_eq!(*ended.lock().unwrap(), vec![format!("a/{idle}")]);
        assert_eq!(s.check(&idle, "c"), Err(Refused::Unknown));
        drop(call);
        assert_eq!(
            s.check(&busy, "c"),
            Ok(()),
            "the call's end counts as activity"
        );
        assert_eq!(s.sweep(Instant::now() + Duration::from_secs(61)), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn an_expired_session_is_refused_even_before_a_sweep() {
        let (s, ended) = sessions(Duration::ZERO);
        let id = s.open("c", "a").unwrap();
        assert_eq!(s.check(&id, "c"), Err(Refused::Unknown));
        assert_eq!(ended.lock().unwrap().len(), 1);
    }

    #[test]
    fn cancellation_reaches_only_the_named_call_of_the_same_session() {
        let (s, _) = sessions(SESSION_IDLE);
        let a = s.open("c", "a").unwrap();
        let b = s.open("c", "a").unwrap();
        let (t1, t2) = (CancellationToken::new(), CancellationToken::new());
        let g1 = s.track(&a, "7".into(), t1.clone());
        let _g2 = s.track(&b, "7".into(), t2.clone());
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
    fn limits_bound_the_table() {
        let (s, _) = sessions(SESSION_IDLE);
        {
            let mut inner = s.lock();
            inner.per_credential.insert("c".into(), MAX_PER_CREDENTIAL);
        }
        assert_eq!(s.open("c", "a"), Err(OpenError::TooManyForCredential));
        assert!(
            s.open("d", "a").is_ok(),
            "another credential is not limited by it"
        );
    }
}
