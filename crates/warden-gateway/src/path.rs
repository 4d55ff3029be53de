//! The governed path, once, for every front-end (MCP and the native HTTP API):
//! Proposal → Decision (recorded) → Grant → Execution (the Executor redeems the grant) →
//! Receipt.
//!
//! If the manifest moves on between the decision and the execution, the Executor refuses the
//! grant (`ManifestChanged`); the call is then decided again under the new version and runs
//! only if that decision allows it, with a new grant (issue 4, seed 000 §4).

use crate::breakers::Observed;
use crate::server::{govern, AppState, Governed};
use std::sync::Arc;
use warden_core::{Decision, Proposal, Verdict};
use warden_executor::{ExecError, Executed, Executor, ProgressSink};
use warden_identity::approval::Status;
use warden_identity::{GrantError, Identity};

/// What became of one proposal.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing was decided: the ledger or the grant keys failed (fail closed).
    NotDecided {
        /// The rule (`ledger.unavailable`, `grant.unavailable`).
        rule: &'static str,
        /// Why.
        why: String,
        /// Request id, when a decision was attempted.
        request_id: Option<String>,
    },
    /// Decided deny or escalate (recorded); nothing ran.
    Decided {
        /// The decision.
        decision: Box<Decision>,
        /// Its request id.
        request_id: String,
        /// Its ledger index.
        index: u64,
        /// The approval request an escalated call waits on.
        approval: Option<Box<warden_identity::approval::Request>>,
    },
    /// Allowed and run (decision and receipt recorded).
    Ran {
        /// The decision.
        decision: Box<Decision>,
        /// Its request id.
        request_id: String,
        /// Its ledger index.
        index: u64,
        /// The redacted result and receipt.
        executed: Box<Executed>,
    },
    /// Allowed, but the execution did not complete.
    Failed {
        /// The decision.
        decision: Box<Decision>,
        /// Its request id.
        request_id: String,
        /// Its ledger index.
        index: u64,
        /// Why.
        error: ExecError,
    },
}

/// How a call is to be run.
#[derive(Debug)]
pub struct Run<'a> {
    /// The caller.
    pub identity: &'a Identity,
    /// The proposal (its agent is the caller's).
    pub proposal: &'a Proposal,
    /// Trace id.
    pub trace: &'a str,
    /// Fires when the caller cancels.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The approval the caller says authorizes this call (it must be for this exact call).
    pub approval: Option<&'a str>,
}

/// What the Executor's detectors find in the arguments of an egress tool (exact secrets, and
/// the tool's `redact` set): the Governor decides on it (INV-011). Nothing for other tools, or
/// without an Executor (no secrets are loaded then).
#[must_use]
pub fn egress_findings(
    governor: &warden_policy::Governor,
    executor: Option<&Executor>,
    proposal: &Proposal,
) -> Vec<&'static str> {
    let tool = governor.manifest().tools.get(&proposal.tool);
    match (tool, executor) {
        (Some(t), Some(x)) if !t.egress.is_empty() => x
            .redactor()
            .scan(&proposal.arguments, &t.redact)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// Governs `run` ([`propose_and_run`]); when the call escalates to an approval that is still
/// pending and `wait_secs` is not 0, waits up to that long for it to be decided (telling
/// `progress` every 5 s) and, once approved, proposes the call again on it. What every
/// front-end calls: the MCP front-end waits as the manifest (or the call's `warden/wait`)
/// says, the native API as its `Warden-Wait` header says.
pub async fn propose_wait_and_run(
    app: &AppState,
    executor: &Arc<Executor>,
    run: Run<'_>,
    wait_secs: u64,
    progress: Option<ProgressSink>,
) -> Outcome {
    let Run {
        identity,
        proposal,
        trace,
        cancel,
        approval,
    } = run;
    let again = |approval| Run {
        identity,
        proposal,
        trace,
        cancel: cancel.clone(),
        approval,
    };
    let outcome = propose_and_run(app, executor, again(approval), progress.clone()).await;
    let pending = match &outcome {
        Outcome::Decided {
            approval: Some(r), ..
        } if wait_secs > 0 && r.status == Status::Pending => r.id.clone(),
        _ => return outcome,
    };
    match wait_for_approval(app, &pending, wait_secs, progress.as_ref(), &cancel).await {
        Some(Status::Approved) => {
            propose_and_run(app, executor, again(Some(&pending)), progress).await
        }
        _ => outcome,
    }
}

/// Waits up to `secs` for approval `id` to leave `pending`, telling the agent every five
/// seconds; `None` if it did not (timeout or the agent cancelled).
async fn wait_for_approval(
    app: &AppState,
    id: &str,
    secs: u64,
    progress: Option<&warden_executor::ProgressSink>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Status> {
    let mut rx = app.approvals.subscribe(id)?;
    let started = tokio::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(secs);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let now = *rx.borrow_and_update();
        if now != Status::Pending {
            return Some(now);
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            _ = tick.tick() => {
                if let Some(p) = progress {
                    let votes = app
                        .approvals
                        .get(id, crate::now_unix_ms())
                        .map_or(0, |r| r.approved_by().len());
                    #[expect(
                        clippy::cast_precision_loss,
                        reason = "seconds waited, far below 2^52"
                    )]
                    let elapsed = started.elapsed().as_secs() as f64;
                    #[expect(clippy::cast_precision_loss, reason = "at most 3600")]
                    let total = secs as f64;
                    p(
                        elapsed,
                        Some(total),
                        Some(format!(
                            "waiting for approval {id} ({votes} approval(s) so far)"
                        )),
                    );
                }
            }
            () = tokio::time::sleep_until(deadline) => return None,
            () = cancel.cancelled() => return None,
        }
    }
}

/// Decides `run.proposal` and, if allowed, executes it; re-decides once if the manifest moved
/// on in between.
pub async fn propose_and_run(
    app: &AppState,
    executor: &Arc<Executor>,
    run: Run<'_>,
    progress: Option<ProgressSink>,
) -> Outcome {
    let Run {
        identity,
        proposal,
        trace,
        cancel,
        approval,
    } = run;
    let arguments = match &proposal.arguments {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        // INVARIANT (INV-011): the arguments of an egress tool are scanned with the Executor's
        // detectors (exact secrets, and the tool's `redact` set); the Governor decides on what
        // was found.
        let governor = app.governor.get();
        let tool = governor.manifest().tools.get(&proposal.tool);
        let found = egress_findings(&governor, Some(executor), proposal);
        let redact = tool.map(|t| t.redact.clone()).unwrap_or_default();
        let governed = govern(
            app,
            &governor,
            proposal,
            trace,
            identity.chain.clone(),
            identity.tools.as_ref(),
            &found,
            approval.filter(|_| attempt == 1),
        )
        .await;
        let governed = match governed {
            Governed::LedgerDown { request_id, why } => {
                return Outcome::NotDecided {
                    rule: "ledger.unavailable",
                    why,
                    request_id: Some(request_id),
                }
            }
            Governed::GrantDown { why } => {
                return Outcome::NotDecided {
                    rule: "grant.unavailable",
                    why,
                    request_id: None,
                }
            }
            Governed::Decided {
                decision,
                request_id,
                index,
                grant,
                approval,
            } => (decision, request_id, index, grant, approval),
        };
        let (decision, request_id, index, grant, approval) = governed;
        let (Verdict::Allow, Some(grant)) = (decision.decision, grant) else {
            // Spend over its own cost budget trips the agent's breaker (not a tenant's or the
            // global one: other agents' spending must not pause this one).
            if let Some(rule) = decision.rules.first().filter(|r| *r == "budget.agent.cost") {
                let seen = Observed::OverBudget(format!("{rule}: {}", decision.reason));
                breaker(app, &decision, seen).await;
            }
            return Outcome::Decided {
                decision,
                request_id,
                index,
                approval,
            };
        };
        let call = warden_executor::Call {
            grant: &grant,
            session: &proposal.session,
            agent: &proposal.agent,
            tenant: &identity.tenant,
            tool: &proposal.tool,
            arguments: arguments.clone(),
            trace_id: trace,
            request_id: &request_id,
            redact: &redact,
            cancel: cancel.clone(),
            progress: progress.clone(),
        };
        let result = executor.execute(call).await;
        let seen = match &result {
            Ok(x) if x.result.is_error == Some(true) => {
                Observed::Failure(format!("`{}` returned an error result", proposal.tool))
            }
            Ok(_) => Observed::Success,
            Err(
                e @ (ExecError::Timeout { .. }
                | ExecError::Unavailable { .. }
                | ExecError::Withdrawn { .. }),
            ) => Observed::Failure(e.to_string()),
            // Tools report failures as error results; a protocol-level error is unexpected.
            Err(e @ ExecError::Upstream { .. }) => Observed::Unknown(e.to_string()),
            Err(_) => Observed::Neutral,
        };
        breaker(app, &decision, seen).await;
        match result {
            Ok(executed) => {
                return Outcome::Ran {
                    decision,
                    request_id,
                    index,
                    executed: Box::new(executed),
                }
            }
            // The manifest moved on between decision and execution: decide again, once.
            Err(ExecError::Grant(GrantError::ManifestChanged { granted, current }))
                if attempt == 1 =>
            {
                tracing::info!(
                    granted,
                    current,
                    tool = %proposal.tool,
                    "manifest changed in flight; deciding again"
                );
            }
            Err(error) => {
                return Outcome::Failed {
                    decision,
                    request_id,
                    index,
                    error,
                }
            }
        }
    }
}

/// Tells the agent's breaker what became of a call; trips it when that was one failure too many.
async fn breaker(app: &AppState, decision: &Decision, seen: Observed) {
    let limit = app.governor.get().manifest().breakers.consecutive_failures;
    if let Some(why) = app.breakers.observe(&decision.agent, seen, limit) {
        crate::breakers::trip(app, &decision.agent, &decision.tenant, &why).await;
    }
}
