//! The approval book: the requests of one gateway, in memory, with their votes; synchronous
//! and without I/O (the Runtime records what it reports).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier as _};

use super::signature::{hex, signed_message};
use super::{
    ApprovalError, Approver, Binding, Request, Requirement, SignedVote, Status, Verdict, Vote,
};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A pending request expires after this long, milliseconds.
    pub request_ttl_ms: i64,
    /// An approved request must be redeemed within this long, milliseconds.
    pub redeem_ttl_ms: i64,
    /// Open (pending or approved) requests per agent.
    pub max_open_per_agent: usize,
    /// A vote is accepted within this distance of its `issued_at_ms`, milliseconds.
    pub vote_window_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            request_ttl_ms: 15 * 60 * 1000,
            redeem_ttl_ms: 5 * 60 * 1000,
            max_open_per_agent: 10,
            vote_window_ms: 5 * 60 * 1000,
        }
    }
}

/// What a vote did.
#[derive(Debug, Clone)]
pub struct Voted {
    /// The request after the vote.
    pub request: Request,
    /// The status changed with this vote (to approved or denied).
    pub decided: bool,
}

struct Entry {
    request: Request,
    tx: tokio::sync::watch::Sender<Status>,
    /// A counted vote whose ledger record is not yet confirmed: (approver, the status it
    /// leads to). Nothing changes status until [`Book::commit`].
    uncommitted: Option<(String, String, Status)>,
    /// Held by a call being decided ([`Book::claim`]) until [`Book::spend`] or
    /// [`Book::release`]: no other call may use it meanwhile, and it does not expire.
    held: bool,
}

/// What [`Book::claim`] found for a call about to be decided.
#[derive(Debug)]
pub enum Claim {
    /// No request for the call (or one given under an older manifest version: ask again).
    None,
    /// Its request is pending (the id).
    Pending(String),
    /// Its approved request, held for it: [`Book::spend`] or [`Book::release`] it.
    Approved(Box<Request>),
    /// Its approval cannot be used: named for another call, denied, used, expired, unknown.
    Refused(ApprovalError),
    /// The agent has as many requests open as it may, none for this call: another cannot be
    /// opened.
    Full(ApprovalError),
}

/// Most expired requests kept for [`Book::take_expired`] (the oldest are dropped beyond it).
const MAX_EXPIRED_KEPT: usize = 10_000;

/// Whether `id` has the form of an approval id (`apr_` and 24 lowercase hex digits).
#[must_use]
pub fn valid_id(id: &str) -> bool {
    id.len() == 28
        && id.starts_with("apr_")
        && id
            .bytes()
            .skip(4)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An id as shown in errors: whole if well formed, else cut.
pub(super) fn shown(id: &str) -> String {
    if valid_id(id) {
        id.to_owned()
    } else {
        let mut s: String = id.chars().take(32).collect();
        s.push_str("…(not an approval id)");
        s
    }
}

#[derive(Default)]
struct Inner {
    settings: Settings,
    requests: HashMap<String, Entry>,
    /// Open (pending or approved) request per call.
    by_binding: HashMap<Binding, String>,
    /// Nonces seen, with when they may be forgotten (ms).
    nonces: HashMap<String, i64>,
    /// Requests that expired and have not yet been handed to [`Book::take_expired`].
    expired: Vec<Request>,
}

/// How long a finished request stays visible (for `show`), milliseconds.
pub(super) const KEEP_FINISHED_MS: i64 = 60 * 60 * 1000;

/// What a vote is checked against, besides the request it names: the manifest's approvers,
/// whether an id names an agent, whether its nonce was seen, whether another vote on the request
/// is being recorded, and the clock. Shared by every [`super::ApprovalStore`], so they refuse
/// alike and in the same order.
pub(super) struct VoteChecks<'a> {
    pub(super) approvers: &'a HashMap<String, Approver>,
    pub(super) is_agent: &'a dyn Fn(&str) -> bool,
    pub(super) seen: &'a dyn Fn(&str) -> bool,
    pub(super) busy: bool,
    pub(super) window_ms: i64,
    pub(super) now_ms: i64,
}

impl VoteChecks<'_> {
    /// Whether `vote` may be counted on `request` (as it stands now).
    ///
    /// # Errors
    /// The first refusal, in the order the module documentation lists them.
    pub(super) fn admit(&self, request: &Request, vote: &SignedVote) -> Result<(), ApprovalError> {
        // INVARIANT (INV-002): an agent never approves, not even one listed as an approver.
        if (self.is_agent)(&vote.approver) || vote.approver == request.binding.agent {
            return Err(ApprovalError::AgentApprover(vote.approver.clone()));
        }
        let Some(approver) = self.approvers.get(&vote.approver) else {
            return Err(ApprovalError::UnknownApprover(vote.approver.clone()));
        };
        // The signature covers the request's own call, so a vote signed for other arguments,
        // another request or another manifest version does not verify here.
        let sig = base64::engine::general_purpose::STANDARD
            .decode(vote.signature.as_bytes())
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| ApprovalError::BadSignature(vote.approver.clone()))?;
        approver
            .key
            .verify(&signed_message(vote, &request.binding), &sig)
            .map_err(|_| ApprovalError::BadSignature(vote.approver.clone()))?;
        if vote.arguments_hash != request.binding.arguments_hash {
            return Err(ApprovalError::VoteMismatch {
                id: request.id.clone(),
                field: "arguments",
            });
        }
        if vote.manifest_version != request.binding.manifest_version {
            return Err(ApprovalError::VoteMismatch {
                id: request.id.clone(),
                field: "manifest version",
            });
        }
        let age = self.now_ms.saturating_sub(vote.issued_at_ms);
        if age.saturating_abs() > self.window_ms {
            return Err(ApprovalError::Stale {
                age_s: age / 1000,
                window_s: self.window_ms / 1000,
            });
        }
        if vote.nonce.len() != 32 || !vote.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApprovalError::BadNonce);
        }
        // INVARIANT (replay, issue 4): a signed vote is accepted once.
        if (self.seen)(&vote.nonce) {
            return Err(ApprovalError::Replayed(vote.nonce.clone()));
        }
        if request.status != Status::Pending {
            return Err(ApprovalError::NotPending {
                id: request.id.clone(),
                status: request.status,
            });
        }
        if self.busy {
            return Err(ApprovalError::Busy(request.id.clone()));
        }
        if request.votes.iter().any(|v| v.approver == vote.approver) {
            return Err(ApprovalError::AlreadyVoted {
                id: request.id.clone(),
                approver: vote.approver.clone(),
            });
        }
        match &request.requirement {
            Requirement::Approvers { role, .. } if !approver.roles.contains(role) => {
                Err(ApprovalError::MissingRole {
                    approver: vote.approver.clone(),
                    role: role.clone(),
                })
            }
            // Where the owner must approve, others vote only on a critical call (as the
            // second approver it needs).
            Requirement::Owner { owner } if *owner != vote.approver && !request.critical => {
                Err(ApprovalError::NotOwner {
                    owner: owner.clone(),
                    approver: vote.approver.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// When a vote's nonce may be forgotten (its signature is stale by then), Unix ms.
pub(super) fn nonce_forget_at(vote: &SignedVote, window_ms: i64) -> i64 {
    vote.issued_at_ms
        .saturating_add(window_ms)
        .saturating_add(1000)
}

/// Adds an admitted vote to `request`; the status it leads to once committed.
pub(super) fn count_vote(request: &mut Request, vote: &SignedVote, now_ms: i64) -> Status {
    request.votes.push(Vote {
        approver: vote.approver.clone(),
        verdict: vote.verdict,
        at_ms: now_ms,
    });
    if vote.verdict == Verdict::Deny {
        Status::Denied
    } else if request.satisfied() {
        Status::Approved
    } else {
        Status::Pending
    }
}

/// The approval requests of one gateway.
pub struct Book {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("settings", &self.settings())
            .finish_non_exhaustive()
    }
}

impl Book {
    /// An empty book.
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Book {
            inner: Mutex::new(Inner {
                settings,
                ..Inner::default()
            }),
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> Settings {
        self.lock().settings
    }

    /// Replaces the settings (a new manifest); open requests keep their expiry.
    pub fn set_settings(&self, settings: Settings) {
        self.lock().settings = settings;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a request half-updated in a way that
        // grants more: every update sets status last. Recover the guard.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Confirms the vote with `nonce` counted by [`Book::vote`] once its ledger record is
    /// durable: only now does the request become approved (or denied) and a waiting call learn
    /// of it. `None` if that vote is not pending (no such request, or another vote is).
    pub fn commit(&self, id: &str, nonce: &str, now_ms: i64) -> Option<Request> {
        let mut inner = self.lock();
        let redeem = inner.settings.redeem_ttl_ms;
        let e = inner.requests.get_mut(id)?;
        if e.uncommitted.as_ref().map(|(_, n, _)| n.as_str()) != Some(nonce) {
            return None;
        }
        if let Some((_, _, to)) = e.uncommitted.take() {
            if e.request.status == Status::Pending && to != Status::Pending {
                e.request.status = to;
                if to == Status::Approved {
                    e.request.expires_ms = now_ms.saturating_add(redeem);
                }
                e.tx.send_replace(to);
            }
        }
        Some(e.request.clone())
    }

    /// Takes back the vote with `nonce` counted by [`Book::vote`] whose ledger record failed:
    /// the request stays as it was (INVARIANT (fail-closed): an unrecorded vote authorizes
    /// nothing).
    pub fn withdraw(&self, id: &str, nonce: &str) {
        let mut inner = self.lock();
        let Some(e) = inner.requests.get_mut(id) else {
            return;
        };
        if e.uncommitted.as_ref().map(|(_, n, _)| n.as_str()) == Some(nonce) {
            if let Some((approver, _, _)) = e.uncommitted.take() {
                e.request.votes.retain(|v| v.approver != approver);
            }
        }
    }

    /// Expires what is due; forgets old nonces and finished requests.
    fn sweep(inner: &mut Inner, now_ms: i64) {
        let mut newly = Vec::new();
        for e in inner.requests.values_mut() {
            let open = matches!(e.request.status, Status::Pending | Status::Approved);
            if open && !e.held && now_ms >= e.request.expires_ms {
                e.request.status = Status::Expired;
                e.tx.send_replace(Status::Expired);
                newly.push(e.request.clone());
            }
        }
        // A denial holds for the same call until the request's own expiry (INVARIANT: a denial
        // is final; asking again does not open a fresh request).
        let done: Vec<(Binding, String)> = inner
            .requests
            .values()
            .filter(|e| e.request.status == Status::Denied && now_ms >= e.request.expires_ms)
            .map(|e| (e.request.binding.call(), e.request.id.clone()))
            .chain(newly.iter().map(|r| (r.binding.call(), r.id.clone())))
            .collect();
        for (binding, id) in done {
            if inner.by_binding.get(&binding) == Some(&id) {
                inner.by_binding.remove(&binding);
            }
        }
        inner.expired.extend(newly);
        let over = inner.expired.len().saturating_sub(MAX_EXPIRED_KEPT);
        inner.expired.drain(..over);
        inner.requests.retain(|_, e| {
            matches!(e.request.status, Status::Pending | Status::Approved)
                || now_ms < e.request.expires_ms.saturating_add(KEEP_FINISHED_MS)
        });
        inner.nonces.retain(|_, until| now_ms < *until);
    }

    /// How many requests of `binding`'s agent are open (pending or approved) under its
    /// manifest version.
    fn open_of(inner: &Inner, binding: &Binding) -> usize {
        inner
            .requests
            .values()
            .filter(|e| {
                e.request.binding.agent == binding.agent
                    && e.request.binding.manifest_version == binding.manifest_version
                    && matches!(e.request.status, Status::Pending | Status::Approved)
            })
            .count()
    }

    /// Opens a request for `binding`, or returns the open one for the same call (merged;
    /// the flag says whether it is new).
    ///
    /// # Errors
    /// [`ApprovalError::TooManyOpen`] when the agent is at its cap;
    /// [`ApprovalError::NoRandomness`].
    pub fn open(
        &self,
        binding: &Binding,
        requirement: Requirement,
        critical: bool,
        preview: serde_json::Value,
        now_ms: i64,
    ) -> Result<(Request, bool), ApprovalError> {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        if let Some(id) = inner.by_binding.get(&binding.call()).cloned() {
            if let Some(e) = inner.requests.get_mut(&id) {
                match e.request.status {
                    Status::Denied => {
                        return Err(ApprovalError::NotApproved {
                            id,
                            status: Status::Denied,
                        })
                    }
                    // The same call under the same requirement joins the open request.
                    _ if e.request.requirement == requirement && e.request.critical == critical => {
                        return Ok((e.request.clone(), false));
                    }
                    // The requirement changed (a leak found, a window closed): the old request
                    // cannot satisfy it; it is superseded.
                    _ => Self::supersede(&mut inner, &id),
                }
            }
        }
        let open = Self::open_of(&inner, binding);
        // INVARIANT (bounded): an agent cannot flood approvers or memory with requests.
        if open >= inner.settings.max_open_per_agent {
            return Err(ApprovalError::TooManyOpen {
                agent: binding.agent.clone(),
                open,
            });
        }
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(|_| ApprovalError::NoRandomness)?;
        let request = Request {
            id: format!("apr_{}", hex(&raw)),
            binding: binding.clone(),
            requirement,
            critical,
            preview,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(inner.settings.request_ttl_ms),
            status: Status::Pending,
            votes: Vec::new(),
        };
        let (tx, _) = tokio::sync::watch::channel(Status::Pending);
        inner.by_binding.insert(binding.call(), request.id.clone());
        inner.requests.insert(
            request.id.clone(),
            Entry {
                request: request.clone(),
                tx,
                uncommitted: None,
                held: false,
            },
        );
        Ok((request, true))
    }

    /// Counts a signed vote. `approvers` are the manifest's; `is_agent` says whether an id
    /// names an agent.
    ///
    /// # Errors
    /// Every refusal listed in the module documentation.
    pub fn vote(
        &self,
        vote: &SignedVote,
        approvers: &HashMap<String, Approver>,
        is_agent: impl Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<Voted, ApprovalError> {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        let window = inner.settings.vote_window_ms;
        let Some(entry) = inner.requests.get(&vote.request) else {
            return Err(ApprovalError::Unknown(vote.request.clone()));
        };
        let seen = |nonce: &str| inner.nonces.contains_key(nonce);
        let checks = VoteChecks {
            approvers,
            is_agent: &is_agent,
            seen: &seen,
            busy: entry.uncommitted.is_some(),
            window_ms: window,
            now_ms,
        };
        checks.admit(&entry.request, vote)?;
        inner
            .nonces
            .insert(vote.nonce.clone(), nonce_forget_at(vote, window));
        let Some(entry) = inner.requests.get_mut(&vote.request) else {
            return Err(ApprovalError::Unknown(vote.request.clone()));
        };
        let to = count_vote(&mut entry.request, vote, now_ms);
        // Counted, but nothing changes until the vote's record is durable (commit).
        entry.uncommitted = Some((vote.approver.clone(), vote.nonce.clone(), to));
        let mut request = entry.request.clone();
        request.status = to;
        Ok(Voted {
            decided: to != Status::Pending,
            request,
        })
    }

    /// Marks a request expired because the call now needs something else.
    fn supersede(inner: &mut Inner, id: &str) {
        let Some(e) = inner.requests.get_mut(id) else {
            return;
        };
        if matches!(e.request.status, Status::Pending | Status::Approved) {
            e.request.status = Status::Expired;
            e.tx.send_replace(Status::Expired);
            let r = e.request.clone();
            let call = r.binding.call();
            if inner.by_binding.get(&call).map(String::as_str) == Some(id) {
                inner.by_binding.remove(&call);
            }
            inner.expired.push(r);
        }
    }

    /// What the book holds for the call `binding` is about to be decided for: the evidence the
    /// Governor weighs (the approval named `id`, or else the request for the same call). An
    /// approved request is held for this call until [`Book::spend`] (the decision redeemed it)
    /// or [`Book::release`] (it did not): a concurrent identical call finds it in use.
    #[must_use]
    pub fn claim(&self, binding: &Binding, id: Option<&str>, now_ms: i64) -> Claim {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        let found = match id {
            Some(id) => {
                let Some(e) = inner.requests.get(id) else {
                    return Claim::Refused(ApprovalError::Unknown(shown(id)));
                };
                // INVARIANT (bound approvals): an approval authorizes only the exact call it
                // was given for.
                match e.request.binding.first_difference(binding) {
                    None => Some(id.to_owned()),
                    // Given under an older manifest: it no longer fits; ask again.
                    Some("manifest version") => None,
                    Some(field) => {
                        return Claim::Refused(ApprovalError::OtherCall {
                            id: id.to_owned(),
                            field,
                        })
                    }
                }
            }
            None => inner.by_binding.get(&binding.call()).cloned(),
        };
        if let Some(e) = found.and_then(|id| inner.requests.get_mut(&id)) {
            let id = e.request.id.clone();
            return match e.request.status {
                Status::Pending => Claim::Pending(id),
                // Held by a concurrent call of the same: as good as used for this one.
                Status::Approved if e.held => Claim::Refused(ApprovalError::NotApproved {
                    id,
                    status: Status::Used,
                }),
                Status::Approved => {
                    e.held = true;
                    Claim::Approved(Box::new(e.request.clone()))
                }
                status => Claim::Refused(ApprovalError::NotApproved { id, status }),
            };
        }
        let open = Self::open_of(&inner, binding);
        // INVARIANT (bounded): an agent cannot flood approvers or memory with requests.
        if open >= inner.settings.max_open_per_agent {
            return Claim::Full(ApprovalError::TooManyOpen {
                agent: binding.agent.clone(),
                open,
            });
        }
        Claim::None
    }

    /// Whether the book holds any request (of any status) of `agent`: when not, and no
    /// approval is named, a call has nothing to claim.
    #[must_use]
    pub fn has_requests_of(&self, agent: &str) -> bool {
        self.lock()
            .requests
            .values()
            .any(|e| e.request.binding.agent == agent)
    }

    /// The held approval `id` was redeemed by the decision it was evidence for: it is used
    /// (INVARIANT (single use): an approval authorizes one execution).
    pub fn spend(&self, id: &str) {
        let mut inner = self.lock();
        let Some(e) = inner.requests.get_mut(id) else {
            return;
        };
        e.held = false;
        e.request.status = Status::Used;
        e.tx.send_replace(Status::Used);
        let call = e.request.binding.call();
        if inner.by_binding.get(&call).map(String::as_str) == Some(id) {
            inner.by_binding.remove(&call);
        }
    }

    /// The held approval `id` was not redeemed (the call needs something else now, or was
    /// refused before the approval step): others may use it again.
    pub fn release(&self, id: &str) {
        if let Some(e) = self.lock().requests.get_mut(id) {
            e.held = false;
        }
    }

    /// Redeems the approval for `binding` under `requirement`: the one named `id`, or else
    /// the approved request for the same call. `Ok(None)`: nothing approved for it (still
    /// pending, none, or one given for an older manifest version or a different requirement —
    /// a new request is then needed).
    ///
    /// # Errors
    /// [`ApprovalError::Unknown`]; [`ApprovalError::OtherCall`] when the named approval was
    /// given for another call; [`ApprovalError::NotApproved`] when it (or the request for this
    /// call) was denied, expired or used.
    pub fn redeem(
        &self,
        binding: &Binding,
        id: Option<&str>,
        requirement: &Requirement,
        critical: bool,
        now_ms: i64,
    ) -> Result<Option<Request>, ApprovalError> {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        let id = match id {
            Some(id) => {
                let Some(e) = inner.requests.get(id) else {
                    return Err(ApprovalError::Unknown(shown(id)));
                };
                // INVARIANT (bound approvals): an approval authorizes only the exact call it
                // was given for.
                match e.request.binding.first_difference(binding) {
                    None => {}
                    // Given under an older manifest: it no longer fits; ask again.
                    Some("manifest version") => return Ok(None),
                    Some(field) => {
                        return Err(ApprovalError::OtherCall {
                            id: id.to_owned(),
                            field,
                        })
                    }
                }
                id.to_owned()
            }
            None => match inner.by_binding.get(&binding.call()) {
                Some(id) => id.clone(),
                None => return Ok(None),
            },
        };
        let Some(e) = inner.requests.get_mut(&id) else {
            return Ok(None);
        };
        match e.request.status {
            Status::Pending => return Ok(None),
            Status::Approved => {}
            status => return Err(ApprovalError::NotApproved { id, status }),
        }
        // INVARIANT (bound approvals): approved for what the call needs now, not for a lesser
        // requirement it needed before.
        if e.request.requirement != *requirement || e.request.critical != critical {
            Self::supersede(&mut inner, &id);
            return Ok(None);
        }
        // INVARIANT (single use): an approval authorizes one execution.
        e.request.status = Status::Used;
        e.tx.send_replace(Status::Used);
        let request = e.request.clone();
        inner.by_binding.remove(&binding.call());
        Ok(Some(request))
    }

    /// One request.
    #[must_use]
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Request> {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        inner.requests.get(id).map(|e| e.request.clone())
    }

    /// Every request still kept, newest first.
    #[must_use]
    pub fn list(&self, now_ms: i64) -> Vec<Request> {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        let mut all: Vec<Request> = inner.requests.values().map(|e| e.request.clone()).collect();
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        all
    }

    /// Watches a request's status (for a call that waits for its approval).
    #[must_use]
    pub fn subscribe(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Status>> {
        self.lock().requests.get(id).map(|e| e.tx.subscribe())
    }

    /// Requests that expired since the last call (to be recorded), after expiring what is due.
    #[must_use]
    pub fn take_expired(&self, now_ms: i64) -> Vec<Request> {
        let mut inner = self.lock();
        Self::sweep(&mut inner, now_ms);
        std::mem::take(&mut inner.expired)
    }
}
