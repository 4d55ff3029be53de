//! The state contract: counters, session history and holds.
//!
//! Every Warden instance that decides must see the same counters and the same holds, or budgets
//! and kill switches leak. The trait below is small on purpose: each operation is one atomic step
//! that a single embedded store implements under a lock and a shared Redis store implements with
//! one script. Operations are synchronous so that the decision core stays synchronous.
//!
//! INVARIANT (fail-closed): a store that cannot answer returns [`StateError`]; callers treat
//! every error as "deny" and never as "no limit" or "no hold".

use crate::time::UnixSeconds;
use serde::{Deserialize, Serialize};

/// One counter to charge in a [`StateStore::check_and_charge`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Counter identity, including its window (e.g. `agent/coder-1/calls/3600/498706`).
    pub key: String,
    /// How much this call adds.
    pub amount: u64,
    /// The counter may reach but never pass this value.
    pub limit: u64,
    /// When the counter's window ends; the store may forget it afterwards.
    pub expires_at: UnixSeconds,
}

/// Result of [`StateStore::check_and_charge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Every counter had room; all were incremented.
    Charged,
    /// The charge at `index` would pass its limit; no counter was incremented.
    Exceeded {
        /// Index into the slice of charges.
        index: usize,
        /// The counter's value before this call.
        current: u64,
    },
}

/// What one decision reads and writes in the state store, asked in one call so that a networked
/// store serves a decision in one round trip ([`StateStore::settle`]).
#[derive(Debug, Clone, Copy)]
pub struct Settle<'a> {
    /// The holds to read: every scope the call is under.
    pub scopes: &'a [HoldScope],
    /// The call to add to its session's history, if the decision counts it.
    pub observe: Option<Observe<'a>>,
    /// The counters to charge if nothing above stops the call (`None`: charge nothing).
    pub charge: Option<&'a [Charge]>,
    /// Now.
    pub now: UnixSeconds,
}

/// One call to add to a session's history ([`StateStore::observe_call`]).
#[derive(Debug, Clone, Copy)]
pub struct Observe<'a> {
    /// The session's key.
    pub session: &'a str,
    /// The tool and its canonical arguments, hashed.
    pub fingerprint: [u8; 32],
    /// History idle this many seconds is forgotten.
    pub ttl: i64,
    /// From this many repeats in a row on, the call is a loop and nothing is charged.
    pub loop_at: u32,
}

/// What [`StateStore::settle`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Every hold in force over the scopes asked.
    pub holds: Vec<Hold>,
    /// How many times in a row the session has proposed this call, when it was observed.
    pub repeats: Option<u32>,
    /// The charge's outcome, when it was attempted.
    pub charged: Option<ChargeOutcome>,
    /// When the charge was made: each counter's value after it, in the order of the charges
    /// (a counter named twice shows its value after each). Empty otherwise. Read for the
    /// budget-use metric (a fraction of each limit), never for the decision itself.
    pub used: Vec<u64>,
}

/// Who a hold applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "id", rename_all = "lowercase")]
pub enum HoldScope {
    /// Every agent of every tenant.
    Global,
    /// Every agent of one tenant.
    Tenant(String),
    /// One agent.
    Agent(String),
    /// One session.
    Session(String),
}

impl std::fmt::Display for HoldScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldScope::Global => f.write_str("global"),
            HoldScope::Tenant(t) => write!(f, "tenant `{t}`"),
            HoldScope::Agent(a) => write!(f, "agent `{a}`"),
            HoldScope::Session(s) => write!(f, "session `{s}`"),
        }
    }
}

/// What a hold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    /// Kill switch: nothing in scope runs.
    Kill,
    /// Quarantine: the scope is isolated pending investigation; nothing in scope runs.
    Quarantine,
    /// Pause: calls in scope escalate to a human until resumed (loop detection).
    Pause,
    /// Demotion (on an agent, after a violation): the agent loses its autonomy — every tier it
    /// could run on its own now needs its owner's approval — until it is promoted again
    /// (`warden agents promote`, criteria and an approval). `warden resume` does not lift it.
    Demote,
}

impl HoldKind {
    /// `kill`, `quarantine` or `pause`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Kill => "kill",
            HoldKind::Quarantine => "quarantine",
            HoldKind::Pause => "pause",
            HoldKind::Demote => "demote",
        }
    }
}

/// A hold in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Who it applies to.
    pub scope: HoldScope,
    /// What it does.
    pub kind: HoldKind,
    /// Why it was set (shown in every decision it causes).
    pub reason: String,
    /// When it was set.
    pub since: UnixSeconds,
}

/// Why the store could not answer. Callers must treat it as "deny".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The backing store is unreachable or failed.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The persisted state is damaged.
    #[error("state store corrupted: {0}")]
    Corrupted(String),
}

/// The state every deciding instance shares.
pub trait StateStore: Send + Sync {
    /// Atomically: if every charge fits under its limit, increment all of them and return
    /// [`ChargeOutcome::Charged`]; otherwise increment none and say which one did not fit.
    /// Counters whose window has ended count as zero.
    ///
    /// # Errors
    /// [`StateError`] when the store cannot answer (callers deny).
    fn check_and_charge(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
    ) -> Result<ChargeOutcome, StateError>;

    /// Records that `session` proposed the call with `fingerprint` (tool plus canonical
    /// arguments) and returns how many times in a row, including this one, the session has
    /// proposed exactly that call. History idle for `ttl` seconds is forgotten.
    ///
    /// # Errors
    /// [`StateError`] when the store cannot answer (callers deny).
    fn observe_call(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: UnixSeconds,
        ttl: i64,
    ) -> Result<u32, StateError>;

    /// One decision's reads and writes, atomically and in this order: read the holds over
    /// `scopes`; if there is any, stop there (nothing observed, nothing charged: the caller
    /// handles a held call step by step). Otherwise observe the call if asked; if its repeats
    /// reach `loop_at`, stop (nothing charged). Otherwise charge if asked, exactly as
    /// [`StateStore::check_and_charge`]. A networked store answers in one round trip.
    ///
    /// # Errors
    /// [`StateError`] when the store cannot answer (callers deny); then nothing was changed.
    fn settle(&self, s: &Settle<'_>) -> Result<Settled, StateError>;

    /// Every hold in force for any of `scopes`.
    ///
    /// # Errors
    /// [`StateError`] when the store cannot answer (callers deny).
    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError>;

    /// Sets (or replaces) a hold.
    ///
    /// # Errors
    /// [`StateError`] when the hold could not be recorded durably.
    fn set_hold(&self, hold: Hold) -> Result<(), StateError>;

    /// Lifts a hold; returns whether one was in force.
    ///
    /// # Errors
    /// [`StateError`] when the change could not be recorded durably.
    fn clear_hold(&self, scope: &HoldScope, kind: HoldKind) -> Result<bool, StateError>;

    /// Every hold in force.
    ///
    /// # Errors
    /// [`StateError`] when the store cannot answer.
    fn all_holds(&self) -> Result<Vec<Hold>, StateError>;
}

/// The state-store key of an agent's session: `<agent>/<session>` (also the key a session's
/// sandbox runners are kept under).
#[must_use]
pub fn session_key(agent: &str, session: &str) -> String {
    let mut k = String::with_capacity(agent.len() + session.len() + 1);
    k.push_str(agent);
    k.push('/');
    k.push_str(session);
    k
}
