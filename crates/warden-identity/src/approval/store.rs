//! The approval store: the port through which the Runtime keeps approval requests, so that
//! several instances can share them. [`Book`] is the in-process implementation; each
//! implementation runs the one conformance suite in `crates/warden-identity/tests/approvals.rs`.
//!
//! The contract, as the suite checks it: a request is bound to one exact call and merged with
//! an open one for the same call; a vote counts only if its signature verifies over that call,
//! its approver may vote and has not, and it is committed (a vote not committed is withdrawn);
//! an approved request is held for one call at a time and spent once; requests expire and are
//! reported once; [`ApprovalStore::subscribe`] sees every change of status.

use std::collections::HashMap;

use super::{ApprovalError, Approver, Binding, Book, Claim, Request, Requirement, Settings};
use super::{SignedVote, Status, Voted};

/// Where approval requests are kept. Every method is synchronous and quick (an in-memory map,
/// or one round trip to a shared store); what it reports is recorded by the caller.
pub trait ApprovalStore: Send + Sync {
    /// How long things last.
    fn settings(&self) -> Settings;

    /// Changes how long things last (a new manifest); requests already open keep theirs.
    fn set_settings(&self, settings: Settings);

    /// Opens a request for `binding`, or returns the open one for the same call (the flag says
    /// whether it is new).
    ///
    /// # Errors
    /// [`ApprovalError::TooManyOpen`], [`ApprovalError::NotApproved`] (the call's request was
    /// denied), [`ApprovalError::NoRandomness`].
    fn open(
        &self,
        binding: &Binding,
        requirement: Requirement,
        critical: bool,
        preview: serde_json::Value,
        now_ms: i64,
    ) -> Result<(Request, bool), ApprovalError>;

    /// Counts a signed vote, pending its [`ApprovalStore::commit`]. `approvers` are the
    /// manifest's; `is_agent` says whether an id names an agent.
    ///
    /// # Errors
    /// Every refusal of [`ApprovalError`].
    fn vote(
        &self,
        vote: &SignedVote,
        approvers: &HashMap<String, Approver>,
        is_agent: &dyn Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<Voted, ApprovalError>;

    /// Makes the vote on `id` whose nonce is `nonce` take effect (once it is recorded); the
    /// request after it. `None` if that vote is not pending (never counted, taken back, or —
    /// in a shared store — held past its lease): it counts for nothing.
    fn commit(&self, id: &str, nonce: &str, now_ms: i64) -> Option<Request>;

    /// Takes back the uncommitted vote on `id` whose nonce is `nonce` (it could not be
    /// recorded).
    fn withdraw(&self, id: &str, nonce: &str);

    /// What is kept for the call `binding` is about to be decided for (see [`Book::claim`]).
    fn claim(&self, binding: &Binding, id: Option<&str>, now_ms: i64) -> Claim;

    /// Whether `agent` has any request kept.
    fn has_requests_of(&self, agent: &str) -> bool;

    /// Marks the held approval `id` used (its call was allowed on it), at `now_ms`.
    fn spend(&self, id: &str, now_ms: i64);

    /// Lets go of the held approval `id` (its call was not allowed on it), at `now_ms`.
    fn release(&self, id: &str, now_ms: i64);

    /// Redeems the approval for `binding` (see [`Book::redeem`]).
    ///
    /// # Errors
    /// [`ApprovalError::Unknown`], [`ApprovalError::OtherCall`], [`ApprovalError::NotApproved`].
    fn redeem(
        &self,
        binding: &Binding,
        id: Option<&str>,
        requirement: &Requirement,
        critical: bool,
        now_ms: i64,
    ) -> Result<Option<Request>, ApprovalError>;

    /// One request.
    fn get(&self, id: &str, now_ms: i64) -> Option<Request>;

    /// Every request kept, newest first.
    fn list(&self, now_ms: i64) -> Vec<Request>;

    /// Watches a request's status (for a call that waits for its approval).
    fn subscribe(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Status>>;

    /// Requests that expired since the last call, each reported once.
    fn take_expired(&self, now_ms: i64) -> Vec<Request>;
}

impl ApprovalStore for Book {
    fn settings(&self) -> Settings {
        Book::settings(self)
    }

    fn set_settings(&self, settings: Settings) {
        Book::set_settings(self, settings);
    }

    fn open(
        &self,
        binding: &Binding,
        requirement: Requirement,
        critical: bool,
        preview: serde_json::Value,
        now_ms: i64,
    ) -> Result<(Request, bool), ApprovalError> {
        Book::open(self, binding, requirement, critical, preview, now_ms)
    }

    fn vote(
        &self,
        vote: &SignedVote,
        approvers: &HashMap<String, Approver>,
        is_agent: &dyn Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<Voted, ApprovalError> {
        Book::vote(self, vote, approvers, is_agent, now_ms)
    }

    fn commit(&self, id: &str, nonce: &str, now_ms: i64) -> Option<Request> {
        Book::commit(self, id, nonce, now_ms)
    }

    fn withdraw(&self, id: &str, nonce: &str) {
        Book::withdraw(self, id, nonce);
    }

    fn claim(&self, binding: &Binding, id: Option<&str>, now_ms: i64) -> Claim {
        Book::claim(self, binding, id, now_ms)
    }

    fn has_requests_of(&self, agent: &str) -> bool {
        Book::has_requests_of(self, agent)
    }

    fn spend(&self, id: &str, _now_ms: i64) {
        Book::spend(self, id);
    }

    fn release(&self, id: &str, _now_ms: i64) {
        Book::release(self, id);
    }

    fn redeem(
        &self,
        binding: &Binding,
        id: Option<&str>,
        requirement: &Requirement,
        critical: bool,
        now_ms: i64,
    ) -> Result<Option<Request>, ApprovalError> {
        Book::redeem(self, binding, id, requirement, critical, now_ms)
    }

    fn get(&self, id: &str, now_ms: i64) -> Option<Request> {
        Book::get(self, id, now_ms)
    }

    fn list(&self, now_ms: i64) -> Vec<Request> {
        Book::list(self, now_ms)
    }

    fn subscribe(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Status>> {
        Book::subscribe(self, id)
    }

    fn take_expired(&self, now_ms: i64) -> Vec<Request> {
        Book::take_expired(self, now_ms)
    }
}
