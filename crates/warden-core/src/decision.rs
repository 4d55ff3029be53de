//! The decision: what the Governor answers to every proposal.

use serde::{Deserialize, Serialize};

/// The three possible answers. There is no fourth: anything that cannot be evaluated is a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The call may run (it will get a grant).
    Allow,
    /// The call must not run.
    Deny,
    /// The call may run only after what [`Escalation`] names has happened.
    Escalate,
}

impl Verdict {
    /// `allow`, `deny` or `escalate`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Escalate => "escalate",
        }
    }
}

/// What must happen before an escalated call may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Escalation {
    /// `approvers` distinct approvers holding `role` must approve.
    Approvers {
        /// How many.
        approvers: u32,
        /// Which role.
        role: String,
    },
    /// `approvers` distinct humans must approve (any role; never an agent, INV-002).
    Humans {
        /// How many.
        approvers: u32,
    },
    /// The human the agent is paired with must approve (progressive trust).
    Owner {
        /// The owner, as named in the manifest.
        owner: String,
    },
    /// The call is queued until the tier's automatic window opens again.
    Queued {
        /// RFC 3339 time at which the window opens.
        until: String,
        /// The same instant in Unix seconds.
        until_unix: i64,
    },
    /// The session is paused (loop detected); a human must resume it.
    SessionPaused {
        /// The paused session.
        session: String,
    },
}

/// The Governor's answer to one proposal (INV-014).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `allow`, `deny` or `escalate`.
    pub decision: Verdict,
    /// The rules that fired (e.g. `tool.unknown`, `policy:permit-reads`, `tier.low.auto`). For a
    /// deny, and for an escalation caused by a paused session or a loop, the deciding rule is
    /// first; otherwise they are in the order they were evaluated: permitting policies, then the
    /// tier rule, then the trust rule.
    pub rules: Vec<String>,
    /// Cedar policy ids that determined the outcome.
    pub policies: Vec<String>,
    /// A rationale a person can read.
    pub reason: String,
    /// The manifest's logical clock.
    pub manifest_version: u64,
    /// Hash of the policy bundle (manifest plus policy files) the decision was made under.
    pub policy_hash: String,
    /// What must happen first, for `escalate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// The proposing agent.
    pub agent: String,
    /// The agent's owner, the human at the root of its lineage (empty if the agent is unknown).
    #[serde(default)]
    pub owner: String,
    /// The agent's tenant (empty if the agent is unknown).
    #[serde(default)]
    pub tenant: String,
    /// The session.
    pub session: String,
    /// The tool.
    pub tool: String,
    /// What the proposal does with it: a use (not written out) or a completion.
    #[serde(default, skip_serializing_if = "crate::Operation::is_use")]
    pub operation: crate::Operation,
    /// SHA-256 of the canonical arguments (the arguments themselves are never copied here).
    pub arguments_hash: String,
    /// When the decision was made, Unix seconds.
    pub decided_at: i64,
    /// Where each judged argument's value came from (information-flow control): names and
    /// sources only, never values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provenance: Vec<ArgProvenance>,
    /// The rate limits, budgets and invariants an allowed call was charged against, each with
    /// its counter after the charge. For the budget-use metric; not part of the decision's
    /// record (never serialized).
    #[serde(skip)]
    pub budget_use: Vec<BudgetUse>,
}

/// How much of one limit a counter has used after a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUse {
    /// The limit's rule (`rate.tier.<tier>`, `budget.agent.calls`, `invariant:<name>`...):
    /// bounded by the manifest, never by agents or sessions.
    pub budget: String,
    /// The counter's value after the charge.
    pub used: u64,
    /// The limit.
    pub limit: u64,
    /// When the counter's window ends, Unix seconds.
    pub window_ends: i64,
}

/// Where one argument's value came from, as a decision records it (`docs/ifc.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgProvenance {
    /// The argument.
    pub argument: String,
    /// `task`, `known`, `trusted`, `lookup`, `untrusted` or `unknown`.
    pub from: String,
    /// The kind of identifier judged (`email`, `url`, `iban`, `number`); absent for words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The tool whose output it came from (for `lookup` and `untrusted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// That output's index in the session (0 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<u32>,
}

impl Decision {
    /// Whether the call was denied because something governance depends on did not answer
    /// (the state store): not a verdict on the call, and worth retrying once it is back.
    #[must_use]
    pub fn governance_unavailable(&self) -> bool {
        self.decision == Verdict::Deny
            && self
                .rules
                .first()
                .is_some_and(|r| r == "state.unavailable" || r == "ledger.unavailable")
    }

    /// True for `allow`.
    #[must_use]
    pub fn is_allow(&self) -> bool {
        self.decision == Verdict::Allow
    }
}
