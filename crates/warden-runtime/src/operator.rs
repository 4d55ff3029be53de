//! The operator's powers over a running gateway, for the admin listener (INV-025): the brakes
//! (kill switch, quarantine, lockdown, resume), approval votes, governance proposals and
//! trust (promotion, restoration). Each is applied first and then recorded in the ledger;
//! a vote counts only once recorded.
//!
//! The admin token (`DATA/keys/admin.token`, 0600) opens the door; an approval vote counts only
//! by its approver's own signature.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warden_core::state::{Hold, HoldKind, HoldScope};
use warden_identity::approval::Status;
pub use warden_identity::approval::{ApprovalError, Request, SignedVote};

use crate::keyfile;
use crate::runtime::Runtime;

/// The operator's handle on a gateway ([`Runtime::operator`]).
#[derive(Debug, Clone)]
pub struct Operator {
    pub(crate) runtime: Runtime,
}

impl Operator {
    /// The Prometheus exposition for `GET /metrics` ([`Runtime::metrics`]).
    pub async fn metrics(&self) -> Option<String> {
        self.runtime.metrics().await
    }
}

/// Where the admin token lives.
#[must_use]
pub fn token_path(data: &Path) -> PathBuf {
    data.join("keys").join("admin.token")
}

/// Loads the admin token's hash, creating the token (0600) on first use.
///
/// # Errors
/// [`crate::agents::AgentsError`] if it cannot be created or read, or is readable by others.
pub fn load_token_hash(data: &Path) -> Result<[u8; 32], crate::agents::AgentsError> {
    let path = token_path(data);
    if !path.exists() {
        let raw = keyfile::random32(&path)?;
        keyfile::write_secret(&path, keyfile::hex32(&raw).as_bytes())?;
    }
    let token = read_token(data)?;
    Ok(Sha256::digest(token.trim().as_bytes()).into())
}

/// Reads the admin token (for the CLI).
///
/// # Errors
/// [`crate::agents::AgentsError`] if it cannot be read or is readable by others.
pub fn read_token(data: &Path) -> Result<zeroize::Zeroizing<String>, crate::agents::AgentsError> {
    Ok(keyfile::read_secret(&token_path(data))?)
}

/// A brake, as the operator asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brake {
    /// Stop everything in scope.
    Kill,
    /// Stop an agent or a session.
    Quarantine,
    /// Stop a tenant.
    Lockdown,
    /// Lift kill, quarantine and pause holds in scope (not a demotion).
    Resume,
}

impl Brake {
    /// Its name in the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Brake::Kill => "kill",
            Brake::Quarantine => "quarantine",
            Brake::Lockdown => "lockdown",
            Brake::Resume => "resume",
        }
    }

    /// The brake named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Brake> {
        Some(match s {
            "kill" => Brake::Kill,
            "quarantine" => Brake::Quarantine,
            "lockdown" => Brake::Lockdown,
            "resume" => Brake::Resume,
            _ => return None,
        })
    }
}

/// What a brake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Braked {
    /// Holds set or lifted.
    pub changed: u32,
    /// Calls in flight stopped.
    pub stopped: usize,
    /// Whether the ledger recorded it.
    pub recorded: bool,
}

/// Why an operator's action was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The action does not apply to that scope.
    #[error("`{action}` does not apply to {scope} (kill: any scope; quarantine: agent or session; lockdown: tenant; resume: any)")]
    Scope {
        /// The action.
        action: &'static str,
        /// The scope.
        scope: HoldScope,
    },
    /// The state store could not apply it (nothing changed; a resume that failed part way
    /// has lifted at most a pause or a quarantine under a kill still in force).
    #[error("{0}")]
    State(#[from] warden_core::state::StateError),
    /// The ledger did not record it, so it does not count.
    #[error("{0}")]
    NotRecorded(&'static str),
    /// The vote is not one for this request, or not well formed.
    #[error("{0}")]
    BadVote(String),
    /// The vote is refused (its rule in [`ApprovalError::rule`]).
    #[error(transparent)]
    Vote(#[from] ApprovalError),
    /// A staged manifest named by anything but a file name beside the served one.
    #[error("`file` must be a file name in the served manifest's directory")]
    BadFile,
    /// A governance proposal was refused.
    #[error(transparent)]
    Change(#[from] crate::governance::ChangeError),
    /// A promotion was refused.
    #[error(transparent)]
    Promotion(#[from] crate::promotion::PromotionError),
}

impl Operator {
    /// Whether `token` is the admin token.
    #[must_use]
    pub fn admits(&self, token: &str) -> bool {
        let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        got == self.runtime.shared.admin_token
    }

    /// The holds in force.
    ///
    /// # Errors
    /// If the state store cannot be read.
    pub fn holds(&self) -> Result<Vec<Hold>, warden_core::state::StateError> {
        self.runtime.shared.state.all_holds()
    }

    /// Applies `brake` to `scope`, stops what is running there, records and notifies.
    ///
    /// # Errors
    /// [`OperatorError::Scope`] if it does not apply; [`OperatorError::State`] if the hold
    /// could not be written (nothing changed; for a resume, a kill in force stays).
    pub async fn brake(
        &self,
        brake: Brake,
        scope: &HoldScope,
        reason: &str,
    ) -> Result<Braked, OperatorError> {
        let s = &self.runtime.shared;
        let reason = if reason.is_empty() {
            format!("{} by an operator", brake.as_str())
        } else {
            reason.chars().take(512).collect()
        };
        let set = |kind| Hold {
            scope: scope.clone(),
            kind,
            reason: reason.clone(),
            since: crate::now_unix(),
        };
        // The brake is applied first (safety before bookkeeping), then recorded.
        let changed = match (brake, scope) {
            (Brake::Kill, _) => s.state.set_hold(set(HoldKind::Kill)).map(|()| 1)?,
            (Brake::Quarantine, HoldScope::Agent(_) | HoldScope::Session(_))
            | (Brake::Lockdown, HoldScope::Tenant(_)) => {
                s.state.set_hold(set(HoldKind::Quarantine)).map(|()| 1)?
            }
            (Brake::Resume, _) => {
                // INVARIANT (fail-closed): each hold is lifted on its own, the strongest last,
                // so a store that fails part way leaves the kill in place (the resume is
                // refused and can be sent again), never a lifted kill with an error and no
                // record.
                let mut n = 0;
                for kind in [HoldKind::Pause, HoldKind::Quarantine, HoldKind::Kill] {
                    if s.state.clear_hold(scope, kind)? {
                        n += 1;
                    }
                }
                n
            }
            (b, scope) => {
                return Err(OperatorError::Scope {
                    action: b.as_str(),
                    scope: scope.clone(),
                })
            }
        };
        // INVARIANT (INV-025): the hold is set first; then what is already running in scope is
        // stopped. Calls that register after this see the hold (the Executor checks it after
        // registering), so nothing in scope runs once this answers.
        let stopped = match brake {
            Brake::Resume => 0,
            _ => s.executor.stop(scope),
        };
        // The other instances of a fleet stop theirs (their decisions already read the hold).
        if brake != Brake::Resume {
            if let Err(e) = s.brakes.announce(scope) {
                tracing::warn!(error = %e, "brake not announced to the other instances; calls in flight there run to their end");
            }
        }
        let none = String::new();
        let (agent, tenant, session) = match scope {
            HoldScope::Agent(a) => (a, &none, &none),
            HoldScope::Tenant(t) => (&none, t, &none),
            HoldScope::Session(x) => (&none, &none, x),
            HoldScope::Global => (&none, &none, &none),
        };
        let about = crate::witness::About {
            agent,
            tenant,
            session,
            ..Default::default()
        };
        let action = brake.as_str();
        let text = format!("{action} ({scope}): {reason}");
        let recorded =
            crate::witness::record(&s.ledger, &format!("hold.{action}"), about, text.clone()).await;
        s.publish(
            "hold.changed",
            text,
            serde_json::json!({ "action": action, "scope": scope, "stopped": stopped }),
        );
        Ok(Braked {
            changed,
            stopped,
            recorded,
        })
    }

    /// Every approval request kept, newest first.
    #[must_use]
    pub fn approvals(&self) -> Vec<Request> {
        self.runtime.shared.approvals.list(crate::now_unix_ms())
    }

    /// One approval request, with the exact call it is bound to and its preview.
    #[must_use]
    pub fn approval(&self, id: &str) -> Option<Request> {
        self.runtime.shared.approvals.get(id, crate::now_unix_ms())
    }

    /// Counts an approver's signed vote on request `id`; it takes effect only once
    /// the ledger recorded it. A refused vote is recorded too.
    ///
    /// # Errors
    /// [`OperatorError::Vote`] with the refusal's rule; [`OperatorError::NotRecorded`] when the
    /// ledger did not take it (it was taken back).
    pub async fn vote(&self, id: &str, vote: &SignedVote) -> Result<Request, OperatorError> {
        if !warden_identity::approval::valid_id(id) || vote.approver.len() > 128 {
            return Err(OperatorError::BadVote(
                "not an approval id (apr_ and 24 hex digits), or an approver id over 128 bytes"
                    .into(),
            ));
        }
        if vote.request != id {
            return Err(OperatorError::BadVote(format!(
                "the vote is for `{}`, not `{id}`",
                vote.request
            )));
        }
        // INVARIANT (fail-closed, issue 22): an instance behind its fleet's manifest checks no
        // vote against the approvers of a manifest the fleet no longer serves.
        if let Some(why) = self
            .runtime
            .shared
            .fleet
            .as_ref()
            .and_then(|f| f.behind.why())
        {
            return Err(OperatorError::State(
                warden_core::state::StateError::Unavailable(format!(
                    "{why}; vote through another instance"
                )),
            ));
        }
        let s = &self.runtime.shared;
        let governor = s.governor.get();
        let manifest = governor.manifest();
        let approvers = crate::approvals::approvers(manifest);
        let now = crate::now_unix_ms();
        let voted = s.approvals.vote(
            vote,
            &approvers,
            &|who| manifest.agents.contains_key(who),
            now,
        );
        let v = match voted {
            Ok(v) => v,
            Err(e) => {
                if let Some(r) = s.approvals.get(&vote.request, now) {
                    let reason = format!(
                        "vote by `{}` on approval {} refused: {e}",
                        vote.approver.chars().take(128).collect::<String>(),
                        r.id
                    );
                    let about = crate::witness::About::approval(&r.binding, &r.id);
                    crate::witness::record(&s.ledger, "approval.refused", about, reason).await;
                }
                return Err(e.into());
            }
        };
        let r = &v.request;
        let kind = match (v.decided, r.status) {
            (true, Status::Approved) => "approval.approved",
            (true, _) => "approval.denied",
            (false, _) => "approval.vote",
        };
        let reason = format!(
            "`{}` voted {} on approval {} for `{}` ({} of {} needed)",
            vote.approver,
            vote.verdict.as_str(),
            r.id,
            r.binding.tool,
            r.approved_by().len(),
            r.requirement.needed()
        );
        // INVARIANT (fail-closed): a vote takes effect only once the ledger recorded it; one it
        // did not record is taken back and authorizes nothing.
        let about = crate::witness::About::approval(&r.binding, &r.id);
        if !crate::witness::record(&s.ledger, kind, about, reason).await {
            s.approvals.withdraw(&r.id, &vote.nonce);
            return Err(OperatorError::NotRecorded(
                "the vote could not be recorded in the ledger, so it was not counted; send it again",
            ));
        }
        match s.approvals.commit(&r.id, &vote.nonce, crate::now_unix_ms()) {
            Some(now) => Ok(now),
            // Recorded, but no longer pending in the store (its lease lapsed while the ledger
            // took it, or the store did not answer): it counts for nothing, and the ledger says
            // so after the vote.
            None => {
                let why = format!(
                    "the vote by `{}` on approval {} was recorded but not counted (it was no longer pending in the approval store)",
                    vote.approver, r.id
                );
                crate::witness::record(&s.ledger, "approval.vote_withdrawn", about, why).await;
                Err(OperatorError::NotRecorded(
                    "the vote was recorded but could not be counted (it waited too long, or the approval store did not answer): it counts for nothing; send it again",
                ))
            }
        }
    }

    /// Proposes the served manifest — or the staged file `staged` beside it — as the next
    /// version; answers the approval request (its preview is the diff).
    ///
    /// # Errors
    /// [`OperatorError::Change`] with why (it does not load, is not newer, no governance);
    /// [`OperatorError::NotRecorded`] if the ledger did not take the proposal.
    pub async fn propose_manifest(&self, staged: Option<&str>) -> Result<Request, OperatorError> {
        let s = &self.runtime.shared;
        let served = s.config.manifest.clone();
        let path = match staged {
            None => served,
            // A bare file name beside the served manifest (its policies resolve the same way):
            // the admin API reads no other file.
            Some(f)
                if !f.is_empty()
                    && f.len() <= 255
                    && !f.contains(['/', '\\'])
                    && f != ".."
                    && f != "." =>
            {
                served.with_file_name(f)
            }
            Some(_) => return Err(OperatorError::BadFile),
        };
        let (book, current) = (std::sync::Arc::clone(&s.approvals), s.governor.get());
        let (r, new) = tokio::task::spawn_blocking(move || {
            crate::governance::propose(book.as_ref(), &current, &path)
        })
        .await
        .map_err(|e| crate::governance::ChangeError::Interrupted(e.to_string()))??;
        if new {
            let reason = format!(
                "approval {} proposes bundle {} to replace manifest version {}",
                r.id, r.binding.arguments_hash, r.binding.manifest_version
            );
            let about = crate::witness::About::governance();
            if !crate::witness::record(&s.ledger, "governance.proposed", about, reason.clone())
                .await
            {
                return Err(OperatorError::NotRecorded(
                    "the proposal could not be recorded in the ledger",
                ));
            }
            s.publish(
                "governance.proposed",
                reason,
                serde_json::json!({ "id": r.id }),
            );
        }
        Ok(r)
    }

    /// Restores a demoted agent, or proposes its promotion one trust level up, as
    /// [`crate::promotion::promote`] says; call again once approved.
    ///
    /// # Errors
    /// [`OperatorError::Promotion`] with why not.
    pub async fn promote(&self, agent: &str) -> Result<crate::promotion::Promoted, OperatorError> {
        let s = &self.runtime.shared;
        Ok(crate::promotion::promote(s, &s.config.manifest, agent).await?)
    }
}
