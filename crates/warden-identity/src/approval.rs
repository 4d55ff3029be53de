//! Approvals: an escalated call becomes a request bound to that exact call (agent, tenant,
//! owner, tool, arguments hash, manifest version; the session it was asked in is recorded but
//! any session of the agent may redeem it, once); approvers — people listed in the
//! manifest with their own Ed25519 keys and roles — sign their votes; once the requirement is met
//! the request is approved and authorizes that one call, once (INV-002, INV-018, INV-020).
//!
//! The [`Book`] holds the requests of one gateway in memory. It is synchronous and does no I/O:
//! the gateway records what it reports (requests, votes, refusals, expiries) in the ledger.
//!
//! What it refuses, each with its own [`ApprovalError`]: a vote whose signature does not verify
//! over this request's exact call; a vote from someone the manifest does not list, or from an
//! agent; a vote for other arguments or another manifest version; a vote issued too far from now;
//! a replayed vote (its nonce was seen); the same approver twice (counted once); an approver
//! without the required role; anyone but the owner where the owner must approve; a vote on a
//! request that is no longer pending. The owner of the agent is never the only approver of a
//! critical call.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use warden_core::Escalation;

/// The exact call an approval is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The proposing agent.
    pub agent: String,
    /// Its tenant.
    pub tenant: String,
    /// Its owner (the human at the root of its lineage).
    pub owner: String,
    /// The session it was proposed in: shown to approvers and recorded, but not part of what
    /// the approval authorizes (a client that reconnects redeems it from its new session; see
    /// [`Binding::call`]).
    pub session: String,
    /// The tool.
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub arguments_hash: String,
    /// The manifest version the call was decided under.
    pub manifest_version: u64,
}

impl Binding {
    /// What an approval authorizes: this binding without its session. The agent (whose name
    /// places it in its parent's namespace), its owner and tenant, the tool, the arguments and
    /// the manifest version identify the call; the session is only where it was asked. An
    /// approval stays single-use whichever session redeems it.
    #[must_use]
    pub fn call(&self) -> Binding {
        Binding {
            session: String::new(),
            ..self.clone()
        }
    }

    /// Names the first field of the call in which `other` differs from `self` (for refusals);
    /// the session is not one (see [`Binding::call`]).
    #[must_use]
    pub fn first_difference(&self, other: &Binding) -> Option<&'static str> {
        if self.agent != other.agent {
            Some("agent")
        } else if self.tenant != other.tenant {
            Some("tenant")
        } else if self.tool != other.tool {
            Some("tool")
        } else if self.arguments_hash != other.arguments_hash {
            Some("arguments")
        } else if self.manifest_version != other.manifest_version {
            Some("manifest version")
        } else if self.owner != other.owner {
            Some("owner")
        } else {
            None
        }
    }
}

/// What must happen before the call may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Requirement {
    /// `approvers` distinct approvers holding `role`.
    Approvers {
        /// How many.
        approvers: u32,
        /// Which role.
        role: String,
    },
    /// `approvers` distinct approvers (any role).
    Humans {
        /// How many.
        approvers: u32,
    },
    /// The agent's owner.
    Owner {
        /// The owner's approver id.
        owner: String,
    },
    /// Queued until a window opens; any one approver may let it through earlier.
    Queued {
        /// When the window opens, Unix seconds.
        until_unix: i64,
    },
}

impl Requirement {
    /// The requirement an escalation asks for; `None` for one that no approval settles (a
    /// paused session is resumed by an operator instead).
    #[must_use]
    pub fn from_escalation(e: &Escalation) -> Option<Self> {
        match e {
            Escalation::Approvers { approvers, role } => Some(Requirement::Approvers {
                approvers: *approvers,
                role: role.clone(),
            }),
            Escalation::Humans { approvers } => Some(Requirement::Humans {
                approvers: *approvers,
            }),
            Escalation::Owner { owner } => Some(Requirement::Owner {
                owner: owner.clone(),
            }),
            Escalation::Queued { until_unix, .. } => Some(Requirement::Queued {
                until_unix: *until_unix,
            }),
            Escalation::SessionPaused { .. } => None,
        }
    }

    /// The escalation this requirement answers (a queued call's time as Unix seconds only).
    #[must_use]
    pub fn escalation(&self) -> Escalation {
        match self {
            Requirement::Approvers { approvers, role } => Escalation::Approvers {
                approvers: *approvers,
                role: role.clone(),
            },
            Requirement::Humans { approvers } => Escalation::Humans {
                approvers: *approvers,
            },
            Requirement::Owner { owner } => Escalation::Owner {
                owner: owner.clone(),
            },
            Requirement::Queued { until_unix } => Escalation::Queued {
                until: String::new(),
                until_unix: *until_unix,
            },
        }
    }

    /// How many distinct approving votes it takes.
    #[must_use]
    pub fn needed(&self) -> u32 {
        match self {
            Requirement::Approvers { approvers, .. } | Requirement::Humans { approvers } => {
                *approvers
            }
            Requirement::Owner { .. } | Requirement::Queued { .. } => 1,
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for votes.
    Pending,
    /// Approved: the call may run once.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Expired before it was approved, or before the approved call ran.
    Expired,
    /// Approved and redeemed by the call it was for.
    Used,
}

impl Status {
    /// `pending`, `approved`, ...
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Used => "used",
        }
    }
}

/// An approver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the call run.
    Approve,
    /// Refuse it (final).
    Deny,
}

impl Verdict {
    /// `approve` or `deny`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

/// A vote that was counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Who.
    pub approver: String,
    /// What.
    pub verdict: Verdict,
    /// When it was counted, Unix milliseconds.
    pub at_ms: i64,
}

/// An approval request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// `apr_` and 24 hex digits.
    pub id: String,
    /// The exact call.
    pub binding: Binding,
    /// What it takes.
    pub requirement: Requirement,
    /// A critical call: the owner alone never approves it.
    pub critical: bool,
    /// What the approvers are shown (INV-018): summary, irreversible, estimated cost.
    pub preview: serde_json::Value,
    /// Created, Unix milliseconds.
    pub created_ms: i64,
    /// Expires, Unix milliseconds (when approved: the time by which the call must run).
    pub expires_ms: i64,
    /// Where it stands.
    pub status: Status,
    /// The votes counted, in order.
    pub votes: Vec<Vote>,
}

impl Request {
    /// The approvers who approved, in order.
    #[must_use]
    pub fn approved_by(&self) -> Vec<&str> {
        self.votes
            .iter()
            .filter(|v| v.verdict == Verdict::Approve)
            .map(|v| v.approver.as_str())
            .collect()
    }

    fn satisfied(&self) -> bool {
        let approving: BTreeSet<&str> = self.approved_by().into_iter().collect();
        let enough = match &self.requirement {
            Requirement::Owner { owner } => approving.contains(owner.as_str()),
            other => u32::try_from(approving.len()).unwrap_or(u32::MAX) >= other.needed(),
        };
        // INVARIANT (seed 000 §3): the agent's owner is never the only approver of a critical
        // call.
        enough && (!self.critical || approving.iter().any(|a| *a != self.binding.owner))
    }
}

/// An approver, as the manifest lists them.
#[derive(Debug, Clone)]
pub struct Approver {
    /// Roles held.
    pub roles: BTreeSet<String>,
    /// Public key their votes verify under.
    pub key: VerifyingKey,
}

/// A signed vote, as an approver's tool sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedVote {
    /// The request voted on.
    pub request: String,
    /// The vote.
    pub verdict: Verdict,
    /// Who votes (an approver id from the manifest).
    pub approver: String,
    /// The arguments hash the approver was shown; must be the request's.
    pub arguments_hash: String,
    /// The manifest version the approver was shown; must be the request's.
    pub manifest_version: u64,
    /// When it was signed, Unix milliseconds.
    pub issued_at_ms: i64,
    /// 32 hex digits, used once.
    pub nonce: String,
    /// Ed25519 over [`signed_message`], base64 (standard, padded).
    pub signature: String,
}

/// The bytes an approver signs: a JSON array naming the vote and every field of the call.
#[must_use]
pub fn signed_message(vote: &SignedVote, binding: &Binding) -> Vec<u8> {
    let fields = serde_json::json!([
        "warden-approval-v1",
        vote.request,
        vote.verdict.as_str(),
        vote.approver,
        binding.agent,
        binding.tenant,
        binding.owner,
        binding.session,
        binding.tool,
        vote.arguments_hash,
        vote.manifest_version,
        vote.issued_at_ms,
        vote.nonce,
    ]);
    fields.to_string().into_bytes()
}

/// Signs `verdict` on `request` as `approver` (the approver's tool does this).
///
/// # Errors
/// [`ApprovalError::NoRandomness`] if no nonce could be drawn.
pub fn sign(
    key: &SigningKey,
    request: &Request,
    verdict: Verdict,
    approver: &str,
    now_ms: i64,
) -> Result<SignedVote, ApprovalError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|_| ApprovalError::NoRandomness)?;
    let mut vote = SignedVote {
        request: request.id.clone(),
        verdict,
        approver: approver.to_owned(),
        arguments_hash: request.binding.arguments_hash.clone(),
        manifest_version: request.binding.manifest_version,
        issued_at_ms: now_ms,
        nonce: hex(&nonce),
        signature: String::new(),
    };
    let sig = key.sign(&signed_message(&vote, &request.binding));
    vote.signature = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    Ok(vote)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    warden_core::canonical::push_hex(&mut s, bytes);
    s
}

/// Why an approval step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No such request.
    #[error("no approval request `{0}`")]
    Unknown(String),
    /// The request is not pending.
    #[error("approval request `{id}` is {}, not pending", status.as_str())]
    NotPending {
        /// The request.
        id: String,
        /// Where it stands.
        status: Status,
    },
    /// The approval cannot authorize the call: it is not (or no longer) approved.
    #[error("approval `{id}` is {}: it does not authorize the call", status.as_str())]
    NotApproved {
        /// The request.
        id: String,
        /// Where it stands.
        status: Status,
    },
    /// The approval is for another call.
    #[error("approval `{id}` is for another call (its {field} differ)")]
    OtherCall {
        /// The request.
        id: String,
        /// The first field that differs.
        field: &'static str,
    },
    /// The voter is not an approver in the manifest.
    #[error("`{0}` is not an approver in the manifest")]
    UnknownApprover(String),
    /// The voter is the agent itself, or another agent.
    #[error("`{0}` is an agent; agents never approve (INV-002)")]
    AgentApprover(String),
    /// The signature does not verify over this request's call.
    #[error("the signature of `{0}` does not verify over this request's call")]
    BadSignature(String),
    /// The vote names other arguments or another manifest version than the request.
    #[error("the vote is for another call than request `{id}` (its {field} differ)")]
    VoteMismatch {
        /// The request.
        id: String,
        /// What differs.
        field: &'static str,
    },
    /// Signed too long ago (or in the future).
    #[error("the vote was signed {age_s} s from now; votes are accepted within {window_s} s")]
    Stale {
        /// Distance from now, seconds.
        age_s: i64,
        /// The window.
        window_s: i64,
    },
    /// The nonce was seen before.
    #[error("nonce `{0}` was already used: a replayed vote")]
    Replayed(String),
    /// The nonce is not 32 hex digits.
    #[error("the nonce must be 32 hex digits")]
    BadNonce,
    /// The approver already voted on this request.
    #[error("`{approver}` has already voted on `{id}`; one approver counts once")]
    AlreadyVoted {
        /// The request.
        id: String,
        /// Who.
        approver: String,
    },
    /// The approver lacks the role the tier requires.
    #[error("`{approver}` does not hold role `{role}`, which this call requires")]
    MissingRole {
        /// Who.
        approver: String,
        /// The role.
        role: String,
    },
    /// Only the owner may approve this call.
    #[error("only the agent's owner `{owner}` may approve this call, not `{approver}`")]
    NotOwner {
        /// The owner.
        owner: String,
        /// Who tried.
        approver: String,
    },
    /// The agent has too many open requests.
    #[error("agent `{agent}` already has {open} open approval requests (the cap)")]
    TooManyOpen {
        /// The agent.
        agent: String,
        /// How many.
        open: usize,
    },
    /// Another vote on the request is being recorded.
    #[error("a vote on `{0}` is being recorded; send yours again")]
    Busy(String),
    /// No randomness for an id or nonce.
    #[error("no randomness available")]
    NoRandomness,
}

impl ApprovalError {
    /// The rule name decisions and ledger events cite.
    #[must_use]
    pub fn rule(&self) -> &'static str {
        match self {
            ApprovalError::Unknown(_) => "approval.unknown",
            ApprovalError::NotPending { .. } => "approval.not_pending",
            ApprovalError::NotApproved { status, .. } => match status {
                Status::Denied => "approval.denied",
                Status::Expired => "approval.expired",
                Status::Used => "approval.used",
                Status::Pending | Status::Approved => "approval.not_approved",
            },
            ApprovalError::OtherCall { .. } => "approval.other_call",
            ApprovalError::UnknownApprover(_) => "approval.unknown_approver",
            ApprovalError::AgentApprover(_) => "approval.self_approval",
            ApprovalError::BadSignature(_) => "approval.bad_signature",
            ApprovalError::VoteMismatch { .. } => "approval.vote_mismatch",
            ApprovalError::Stale { .. } => "approval.stale",
            ApprovalError::Replayed(_) => "approval.replayed",
            ApprovalError::BadNonce => "approval.bad_nonce",
            ApprovalError::AlreadyVoted { .. } => "approval.already_voted",
            ApprovalError::MissingRole { .. } => "approval.missing_role",
            ApprovalError::NotOwner { .. } => "approval.not_owner",
            ApprovalError::TooManyOpen { .. } => "approval.too_many_open",
            ApprovalError::Busy(_) => "approval.busy",
            ApprovalError::NoRandomness => "approval.unavailable",
        }
    }
}

/// How long things last.
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
    uncommitted: Option<(String, Status)>,
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
fn shown(id: &str) -> String {
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
const KEEP_FINISHED_MS: i64 = 60 * 60 * 1000;

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

    /// Confirms the vote counted by [`Book::vote`] once its ledger record is durable: only now
    /// does the request become approved (or denied) and a waiting call learn of it.
    pub fn commit(&self, id: &str, now_ms: i64) -> Option<Request> {
        let mut inner = self.lock();
        let redeem = inner.settings.redeem_ttl_ms;
        let e = inner.requests.get_mut(id)?;
        if let Some((_, to)) = e.uncommitted.take() {
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

    /// Takes back the vote counted by [`Book::vote`] whose ledger record failed: the request
    /// stays as it was (INVARIANT (fail-closed): an unrecorded vote authorizes nothing).
    pub fn withdraw(&self, id: &str) {
        let mut inner = self.lock();
        let Some(e) = inner.requests.get_mut(id) else {
            return;
        };
        if let Some((approver, _)) = e.uncommitted.take() {
            e.request.votes.retain(|v| v.approver != approver);
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
        let request = &entry.request;
        // INVARIANT (INV-002): an agent never approves, not even one listed as an approver.
        if is_agent(&vote.approver) || vote.approver == request.binding.agent {
            return Err(ApprovalError::AgentApprover(vote.approver.clone()));
        }
        let Some(approver) = approvers.get(&vote.approver) else {
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
        let age = now_ms.saturating_sub(vote.issued_at_ms);
        if age.saturating_abs() > window {
            return Err(ApprovalError::Stale {
                age_s: age / 1000,
                window_s: window / 1000,
            });
        }
        if vote.nonce.len() != 32 || !vote.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApprovalError::BadNonce);
        }
        // INVARIANT (replay, issue 4): a signed vote is accepted once.
        if inner.nonces.contains_key(&vote.nonce) {
            return Err(ApprovalError::Replayed(vote.nonce.clone()));
        }
        if request.status != Status::Pending {
            return Err(ApprovalError::NotPending {
                id: request.id.clone(),
                status: request.status,
            });
        }
        if entry.uncommitted.is_some() {
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
                return Err(ApprovalError::MissingRole {
                    approver: vote.approver.clone(),
                    role: role.clone(),
                })
            }
            // Where the owner must approve, others vote only on a critical call (as the
            // second approver it needs).
            Requirement::Owner { owner } if *owner != vote.approver && !request.critical => {
                return Err(ApprovalError::NotOwner {
                    owner: owner.clone(),
                    approver: vote.approver.clone(),
                })
            }
            _ => {}
        }
        let forget_at = vote
            .issued_at_ms
            .saturating_add(window)
            .saturating_add(1000);
        inner.nonces.insert(vote.nonce.clone(), forget_at);
        let Some(entry) = inner.requests.get_mut(&vote.request) else {
            return Err(ApprovalError::Unknown(vote.request.clone()));
        };
        entry.request.votes.push(Vote {
            approver: vote.approver.clone(),
            verdict: vote.verdict,
            at_ms: now_ms,
        });
        let to = if vote.verdict == Verdict::Deny {
            Status::Denied
        } else if entry.request.satisfied() {
            Status::Approved
        } else {
            Status::Pending
        };
        // Counted, but nothing changes until the vote's record is durable (commit).
        entry.uncommitted = Some((vote.approver.clone(), to));
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
