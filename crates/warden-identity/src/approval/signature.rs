//! A vote as an approver signs it: the message covers the request's exact call, so a vote
//! cannot be moved to other arguments, another manifest version or another request.

use super::{ApprovalError, Binding, Request, Verdict};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    warden_core::canonical::push_hex(&mut s, bytes);
    s
}
