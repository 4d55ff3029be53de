//! What the ledger records: decision records and execution receipts, in canonical JSON.
//!
//! An entry's bytes are the RFC 8785 canonical JSON of the [`Entry`]; the leaf hash is taken over
//! exactly those bytes, so an independent verifier that re-canonicalizes an exported entry gets
//! the same hash. Records carry hashes of arguments and results, never the values (INV-009).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use warden_core::{Decision, Escalation, Verdict};

/// Longest entry accepted, encoded.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// One leaf of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// A Governor decision.
    Decision(DecisionRecord),
    /// An Executor receipt.
    Receipt(Receipt),
    /// A security event: a refused request, a revocation.
    Event(EventRecord),
}

/// A security event (INV-017: refusals and revocations are recorded, not only decisions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// What happened: `request.refused`, `lineage.mismatch`, `agent.revoked`.
    pub kind: String,
    /// The agent concerned.
    pub agent: String,
    /// Its tenant, if known.
    pub tenant: String,
    /// The session, if any.
    pub session: String,
    /// Why, readable (never a secret or an argument value).
    pub reason: String,
    /// Trace id, empty if none.
    pub trace_id: String,
    /// Request id.
    pub request_id: String,
    /// When, Unix seconds.
    pub time: i64,
}

impl EventRecord {
    /// An event about the gateway itself (a start, a key change, an upstream's pin), concerning
    /// no agent, tenant, session or request.
    #[must_use]
    pub fn about_gateway(kind: impl Into<String>, reason: String, time: i64) -> Self {
        EventRecord {
            kind: kind.into(),
            agent: String::new(),
            tenant: String::new(),
            session: String::new(),
            reason,
            trace_id: String::new(),
            request_id: String::new(),
            time,
        }
    }
}

/// What the Governor decided about one proposal (INV-014).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// `allow`, `deny` or `escalate`.
    pub decision: Verdict,
    /// Rules that fired.
    pub rules: Vec<String>,
    /// Cedar policy ids that determined the outcome.
    pub policies: Vec<String>,
    /// The rationale.
    pub rationale: String,
    /// What an escalation waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// The manifest's logical clock.
    pub manifest_version: u64,
    /// Hash of the policy bundle.
    pub policy_hash: String,
    /// The proposing agent.
    pub agent: String,
    /// The agent's lineage: its owner, the human at the root.
    pub lineage: Vec<String>,
    /// The tenant.
    pub tenant: String,
    /// The session.
    pub session: String,
    /// Trace id (W3C trace context or the caller's), empty if none.
    pub trace_id: String,
    /// Request id, unique per proposal.
    pub request_id: String,
    /// The tool.
    pub tool: String,
    /// What the proposal did with it: a use (not written out) or a completion (`complete`).
    #[serde(default, skip_serializing_if = "warden_core::Operation::is_use")]
    pub operation: warden_core::Operation,
    /// SHA-256 of the canonical arguments.
    pub arguments_hash: String,
    /// When the decision was made, Unix seconds.
    pub time: i64,
    /// Where each judged argument came from (information-flow control): names, sources and
    /// output indexes, never values. Absent when nothing was judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provenance: Vec<warden_core::decision::ArgProvenance>,
}

impl DecisionRecord {
    /// The record of `decision`, made for the request `request_id` in trace `trace_id`.
    #[must_use]
    pub fn from_decision(decision: &Decision, trace_id: &str, request_id: &str) -> Self {
        let lineage = if decision.owner.is_empty() {
            Vec::new()
        } else {
            vec![decision.owner.clone()]
        };
        DecisionRecord {
            decision: decision.decision,
            rules: decision.rules.clone(),
            policies: decision.policies.clone(),
            rationale: decision.reason.clone(),
            escalation: decision.escalation.clone(),
            manifest_version: decision.manifest_version,
            policy_hash: decision.policy_hash.clone(),
            agent: decision.agent.clone(),
            lineage,
            tenant: decision.tenant.clone(),
            session: decision.session.clone(),
            trace_id: trace_id.to_owned(),
            request_id: request_id.to_owned(),
            tool: decision.tool.clone(),
            operation: decision.operation,
            arguments_hash: decision.arguments_hash.clone(),
            time: decision.decided_at,
            provenance: decision.provenance.clone(),
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// The tool ran and returned a result.
    Ok,
    /// The tool ran and reported an error.
    Error,
    /// The tool did not finish in time.
    Timeout,
    /// The Executor refused the call (grant invalid, guarantee absent).
    Refused,
    /// The call was cancelled or killed.
    Killed,
    /// The gateway stopped while the call was in flight (a crash, `kill -9`, power loss): the
    /// outcome is unknown. Written at the next start for an allowed call left without a
    /// receipt.
    Interrupted,
}

/// What the Executor did with one granted call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Trace id.
    pub trace_id: String,
    /// Request id of the decision this execution follows.
    pub request_id: String,
    /// The tenant.
    pub tenant: String,
    /// The agent.
    pub agent: String,
    /// The action (tool) that ran.
    pub action: String,
    /// SHA-256 of the canonical arguments that ran.
    pub arguments_hash: String,
    /// The grant it ran under.
    pub grant: String,
    /// The approval it ran under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Start, Unix milliseconds.
    pub started_at_ms: i64,
    /// End, Unix milliseconds.
    pub ended_at_ms: i64,
    /// How it ended.
    pub status: ReceiptStatus,
    /// SHA-256 of the canonical result (after redaction), empty if none.
    pub result_hash: String,
    /// Which executor ran it.
    pub executor: String,
    /// The sandbox profile it ran under.
    pub sandbox_profile: String,
    /// How many values were redacted from the result before anyone saw it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redactions: u64,
}

// serde's `skip_serializing_if` passes a reference.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why bytes are not a valid entry.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Too long.
    #[error("entry is {0} bytes, over the {MAX_ENTRY_BYTES}-byte limit")]
    TooLong(usize),
    /// Not JSON, or not an entry.
    #[error("entry is not a valid record: {0}")]
    Invalid(#[from] serde_json::Error),
    /// Valid, but not in canonical form, so its hash would not be reproducible.
    #[error("entry is not in canonical JSON form")]
    NotCanonical,
}

impl Entry {
    /// The canonical bytes that are hashed and stored.
    ///
    /// # Errors
    /// [`RecordError::TooLong`] over [`MAX_ENTRY_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let bytes = warden_core::canonical::to_canonical_bytes(self)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(RecordError::TooLong(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes stored or exported bytes, requiring canonical form.
    ///
    /// # Errors
    /// [`RecordError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(RecordError::TooLong(bytes.len()));
        }
        let value: Value = serde_json::from_slice(bytes)?;
        if warden_core::canonical::to_canonical_string(&value).as_bytes() != bytes {
            return Err(RecordError::NotCanonical);
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The request id the entry belongs to.
    #[must_use]
    pub fn request_id(&self) -> &str {
        match self {
            Entry::Decision(d) => &d.request_id,
            Entry::Receipt(r) => &r.request_id,
            Entry::Event(e) => &e.request_id,
        }
    }
}
