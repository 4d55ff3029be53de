//! Approvals: an escalated call becomes a request bound to that exact call (agent, tenant,
//! owner, tool, arguments hash, manifest version; the session it was asked in is recorded but
//! any session of the agent may redeem it, once); approvers — people listed in the
//! manifest with their own Ed25519 keys and roles — sign their votes; once the requirement is met
//! the request is approved and authorizes that one call, once (INV-002, INV-018, INV-020).
//!
//! This module is the model (the call a request is bound to, what it requires, its status) and
//! the refusals; [`signature`] is how a vote is signed and what it signs; [`book`] keeps the
//! requests. The [`Book`] holds the requests of one gateway in memory; the [`RedisBook`] holds
//! a fleet's in its shared Redis (both are an [`ApprovalStore`]). It is synchronous and does no I/O:
//! the gateway records what it reports (requests, votes, refusals, expiries) in the ledger.
//!
//! What it refuses, each with its own [`ApprovalError`]: a vote whose signature does not verify
//! over this request's exact call; a vote from someone the manifest does not list, or from an
//! agent; a vote for other arguments or another manifest version; a vote issued too far from now;
//! a replayed vote (its nonce was seen); the same approver twice (counted once); an approver
//! without the required role; anyone but the owner where the owner must approve; a vote on a
//! request that is no longer pending. The owner of the agent is never the only approver of a
//! critical call.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
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
    /// The shared approval store did not answer, or answered with something Warden did not
    /// write: nothing was changed, and nothing is authorized by it (fail closed).
    #[error("the shared approval store is unavailable ({0}); nothing was changed")]
    Unavailable(String),
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
            ApprovalError::NoRandomness | ApprovalError::Unavailable(_) => "approval.unavailable",
        }
    }
}

/// How long things last.
mod book;
mod redis_book;
mod signature;
mod store;

pub use book::{valid_id, Book, Claim, Settings, Voted};
pub use redis_book::{RedisBook, LEASE_MS};
pub use signature::{sign, signed_message, SignedVote};
pub use store::ApprovalStore;
