//! Approvals on the governed path (issue 7): an escalated call opens (or joins) an approval
//! request bound to that exact call; once approvers have signed enough votes, the same call —
//! decided again under the current manifest — redeems the approval once and runs.
//!
//! Votes arrive on the admin listener (`POST /admin/v1/approvals/{id}/votes`, see
//! [`crate::admin`]); the agent sees only the request's id and status. Every request, vote,
//! refusal and expiry is recorded in the ledger; the redeeming decision names the approvers.
//!
//! Requests live in this gateway's memory: a restart forgets them (fail closed — the call must
//! be proposed and approved again).

use std::collections::HashMap;

use warden_core::{Decision, Escalation, Proposal, Verdict};
use warden_identity::approval::{
    ApprovalStore, Approver, Binding, Claim, Request, Requirement, Settings,
};
use warden_ledger::Ledger;
use warden_policy::manifest::Manifest;
use warden_policy::ApprovalEvidence;

/// The call an escalated decision is about.
#[must_use]
pub fn binding(d: &Decision) -> Binding {
    Binding {
        agent: d.agent.clone(),
        tenant: d.tenant.clone(),
        owner: d.owner.clone(),
        session: d.session.clone(),
        tool: d.tool.clone(),
        arguments_hash: d.arguments_hash.clone(),
        manifest_version: d.manifest_version,
    }
}

/// The manifest's approvers, with keys ready to verify.
#[must_use]
pub fn approvers(m: &Manifest) -> HashMap<String, Approver> {
    m.approvers
        .iter()
        .filter_map(|(id, a)| {
            // Keys were checked when the manifest was loaded; a bad one is left out.
            let key = ed25519_dalek::VerifyingKey::from_bytes(&a.key).ok()?;
            Some((
                id.clone(),
                Approver {
                    roles: a.roles.clone(),
                    key,
                },
            ))
        })
        .collect()
}

/// The book's settings from the manifest.
#[must_use]
pub fn settings(m: &Manifest) -> Settings {
    let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    Settings {
        request_ttl_ms: ms(m.approvals.request_ttl_secs),
        redeem_ttl_ms: ms(m.approvals.redeem_ttl_secs),
        max_open_per_agent: usize::try_from(m.approvals.max_open_per_agent).unwrap_or(10),
        ..Settings::default()
    }
}

/// What approvers are shown of the call (INV-018): the tool's preview template filled in with
/// the arguments (after `redact`, which removes secrets), the estimated cost, and whether the
/// change is irreversible.
fn preview(m: &Manifest, p: &Proposal, redact: &dyn Fn(&str) -> String) -> serde_json::Value {
    let Some(tool) = m.tools.get(&p.tool) else {
        return serde_json::Value::Null;
    };
    let tier = m.tiers.get(tool.tier);
    let mut v = serde_json::json!({
        "tool": p.tool,
        "tier": tier.map(|t| t.name.as_str()).unwrap_or(""),
        "estimated_cost": tool.cost,
    });
    if let (Some(t), Some(obj)) = (&tool.preview_template, v.as_object_mut()) {
        let fill = |s: &str| redact(&warden_policy::approvers::render(s, &p.arguments));
        obj.insert("summary".into(), fill(&t.summary).into());
        if let Some(objects) = &t.objects {
            obj.insert("objects".into(), fill(objects).into());
        }
        obj.insert("irreversible".into(), t.irreversible.into());
    }
    v
}

/// What the book holds for a call about to be decided, claimed before the decision (an
/// approved request is held for the call until [`Claimed::finish`]); the Governor weighs it as
/// evidence ([`warden_policy::ApprovalEvidence`]) and decides alone.
#[derive(Debug)]
pub(crate) struct Claimed {
    claim: Claim,
    /// The call, when the agent is in the manifest.
    binding: Option<Binding>,
    /// For an approved request: who approved, and the escalation it was given for.
    approved: Option<(String, Escalation)>,
    /// For a refusal: its rule and why.
    refused: Option<(&'static str, String)>,
}

/// Whether `d` redeemed an approval (the Governor's rule for it).
pub(crate) fn redeemed(d: &Decision) -> bool {
    d.rules.iter().any(|r| r == "approval.redeemed")
}

/// Claims what the book holds for `proposal` (the approval named `approval_id`, or else the
/// request for the same call). Cheap when the agent has no request at all and names none.
pub(crate) fn claim(
    book: &dyn ApprovalStore,
    governor: &warden_policy::Governor,
    proposal: &Proposal,
    approval_id: Option<&str>,
    now_ms: i64,
) -> Claimed {
    let manifest = governor.manifest();
    let none = Claimed {
        claim: Claim::None,
        binding: None,
        approved: None,
        refused: None,
    };
    let Some(agent) = manifest.agents.get(&proposal.agent) else {
        return none;
    };
    if approval_id.is_none() && !book.has_requests_of(&agent.id) {
        return none;
    }
    book.set_settings(settings(manifest));
    let binding = Binding {
        agent: agent.id.clone(),
        tenant: agent.tenant.clone(),
        owner: agent.owner.clone(),
        session: proposal.session.clone(),
        tool: proposal.tool.clone(),
        arguments_hash: warden_core::canonical::json_digest(&proposal.arguments),
        manifest_version: manifest.version,
    };
    let claim = book.claim(&binding, approval_id, now_ms);
    let approved = match &claim {
        Claim::Approved(r) => Some((r.approved_by().join(", "), r.requirement.escalation())),
        _ => None,
    };
    let refused = match &claim {
        Claim::Refused(e) | Claim::Full(e) => Some((e.rule(), e.to_string())),
        _ => None,
    };
    Claimed {
        claim,
        binding: Some(binding),
        approved,
        refused,
    }
}

impl Claimed {
    /// Whether the call is asked again while its approval is open (not a loop).
    pub(crate) fn awaits(&self) -> bool {
        matches!(self.claim, Claim::Pending(_) | Claim::Approved(_))
    }

    /// The evidence the Governor weighs.
    pub(crate) fn evidence(&self) -> Option<ApprovalEvidence<'_>> {
        match (&self.claim, &self.approved, &self.refused) {
            (Claim::Approved(r), Some((by, needed)), _) => Some(ApprovalEvidence::Approved {
                id: &r.id,
                approved_by: by,
                needed,
                critical: r.critical,
            }),
            (Claim::Refused(_), _, Some((rule, why))) => {
                Some(ApprovalEvidence::Refused { rule, reason: why })
            }
            (Claim::Full(_), _, Some((_, why))) => Some(ApprovalEvidence::Full { reason: why }),
            _ => None,
        }
    }

    /// After the decision, whether or not it was recorded: a held approval the decision
    /// redeemed is spent (also when it could not be recorded: fail closed, the call must be
    /// approved again), one it did not redeem is released. Then, given the recorded
    /// decision of an escalated call, its request is opened, or the open one joined (a
    /// different requirement supersedes it): the request, and whether it is new. Nothing here
    /// changes the decision.
    #[expect(
        clippy::too_many_arguments,
        reason = "the claim, the book, the decision and what a request's preview needs"
    )]
    pub(crate) fn finish(
        self,
        book: &dyn ApprovalStore,
        governor: &warden_policy::Governor,
        proposal: &Proposal,
        redeemed: bool,
        recorded: Option<&Decision>,
        redact: &dyn Fn(&str) -> String,
        now_ms: i64,
    ) -> Option<(Request, bool)> {
        if let Claim::Approved(r) = &self.claim {
            if redeemed {
                book.spend(&r.id, now_ms);
            } else {
                book.release(&r.id, now_ms);
            }
        }
        let decision = recorded.filter(|d| d.decision == Verdict::Escalate)?;
        let requirement = decision
            .escalation
            .as_ref()
            .and_then(Requirement::from_escalation)?;
        let manifest = governor.manifest();
        book.set_settings(settings(manifest));
        let critical = manifest
            .tools
            .get(&decision.tool)
            .and_then(|t| manifest.tiers.get(t.tier))
            .is_some_and(|t| t.critical);
        let binding = self.binding.unwrap_or_else(|| binding(decision));
        let preview = preview(manifest, proposal, redact);
        match book.open(&binding, requirement, critical, preview, now_ms) {
            Ok(opened) => Some(opened),
            Err(e) => {
                // The call was escalated and did not run; it answers without an approval id.
                tracing::warn!(error = %e, "could not open the approval request of an escalated call");
                None
            }
        }
    }
}

/// Readable requirement, for records and agents.
#[must_use]
pub fn requirement_text(r: &Requirement, critical: bool) -> String {
    let base = match r {
        Requirement::Approvers { approvers, role } => {
            format!("{approvers} approver(s) of role `{role}`")
        }
        Requirement::Humans { approvers } => format!("{approvers} distinct human approver(s)"),
        Requirement::Owner { owner } => format!("the agent's owner `{owner}`"),
        Requirement::Queued { until_unix } => {
            format!("the window opening at {until_unix} (Unix), or one approver")
        }
    };
    if critical {
        format!("{base}, not the owner alone (critical)")
    } else {
        base
    }
}

/// Records the approvals that expired since the last sweep; run every second by `serve`.
pub async fn record_expired(book: &dyn ApprovalStore, ledger: &Ledger) {
    let now_ms = crate::now_unix_ms();
    for r in book.take_expired(now_ms) {
        crate::witness::record(
            ledger,
            "approval.expired",
            crate::witness::About::approval(&r.binding, &r.id),
            format!(
                "approval {} for `{}` expired ({} vote(s))",
                r.id,
                r.binding.tool,
                r.votes.len()
            ),
        )
        .await;
    }
}

/// Where approver `id`'s private key lives: `DATA/keys/approvers/<id>.key` (0600).
#[must_use]
pub fn approver_key_path(data: &std::path::Path, id: &str) -> std::path::PathBuf {
    data.join("keys")
        .join("approvers")
        .join(format!("{id}.key"))
}

/// Creates approver `id`'s key (refusing to replace one unless `rotate`, which keeps the old
/// one beside it as `<id>.key.old`); returns the public key as the manifest writes it.
///
/// # Errors
/// The id is not a valid approver id, the key exists, or it cannot be written.
pub fn create_approver_key(
    data: &std::path::Path,
    id: &str,
    rotate: bool,
) -> Result<String, crate::keyfile::KeyFileError> {
    let path = approver_key_path(data, id);
    if !warden_policy::manifest::valid_id(id) {
        return Err(crate::keyfile::err(
            &path,
            format!("approver id `{id}` {}", warden_policy::manifest::ID_RULE),
        ));
    }
    if path.exists() {
        if !rotate {
            return Err(crate::keyfile::err(
                &path,
                "exists already; pass --rotate to replace it (the old key is kept as .old)",
            ));
        }
        std::fs::rename(&path, path.with_extension("key.old"))
            .map_err(|e| crate::keyfile::err(&path, e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::keyfile::err(dir, e))?;
    }
    let seed = crate::keyfile::random32(&path)?;
    crate::keyfile::write_secret(&path, crate::keyfile::hex32(&seed).as_bytes())?;
    Ok(public_key_text(&ed25519_dalek::SigningKey::from_bytes(
        &seed,
    )))
}

/// Reads approver `id`'s private key from `path`.
///
/// # Errors
/// It cannot be read, is readable by others, or is not 32 hex bytes.
pub fn load_approver_key(
    path: &std::path::Path,
) -> Result<ed25519_dalek::SigningKey, crate::keyfile::KeyFileError> {
    let text = crate::keyfile::read_secret(path)?;
    let seed = crate::keyfile::parse_hex32(text.trim(), path)?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// `ed25519:<base64>` of a key's public half.
#[must_use]
pub fn public_key_text(key: &ed25519_dalek::SigningKey) -> String {
    use base64::Engine as _;
    format!(
        "ed25519:{}",
        base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
    )
}

/// The manifest's approvers as recorded in the ledger: `id=<key id>[roles]`, key id being the
/// first 16 hex digits of the SHA-256 of the public key (never the key itself).
#[must_use]
pub fn approver_summary(m: &Manifest) -> String {
    use sha2::Digest as _;
    m.approvers
        .iter()
        .map(|(id, a)| {
            let digest = sha2::Sha256::digest(a.key);
            let mut key_id = String::new();
            warden_core::canonical::push_hex(&mut key_id, digest.get(..8).unwrap_or_default());
            let roles: Vec<&str> = a.roles.iter().map(String::as_str).collect();
            format!("{id}={key_id}[{}]", roles.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Records the approvers and their key ids (`approver.keys`): at start, and whenever a new
/// manifest changes them (a rotation, an approver added or removed).
pub async fn record_approvers(ledger: &Ledger, m: &Manifest, why: &str) -> bool {
    let reason = format!(
        "{why} (manifest version {}): {}",
        m.version,
        approver_summary(m)
    );
    crate::witness::record(ledger, "approver.keys", Default::default(), reason).await
}
