//! The governed path, once, for every front-end (MCP and the native HTTP API), read top to
//! bottom: [`Runtime::propose`] builds the proposal from the authenticated [`Caller`], then
//!
//! 1. **evidence**: the argument scan of an egress tool (the Executor's detectors), the
//!    caller's credential tool list, what the approval book holds for this exact call;
//! 2. **decision**: the Governor's `decide_with` over that evidence — final, nothing edits it;
//! 3. **record**: the decision in the Witness ledger (a decision it did not record is a deny);
//! 4. **grant**: minted only from that recorded allow ([`warden_ledger::Recorded`]);
//! 5. **execute**: the Executor redeems the grant and runs the call in its sandbox;
//! 6. **receipt**: written by the Executor; the result comes back redacted;
//! 7. **write back**: the agent's breaker counts the outcome; a forbidden call demotes it.
//!
//! An escalated call opens (or redeems) an approval; waiting for it is here too, so every
//! front-end gets it. If the manifest moves on between decision and execution, the Executor
//! refuses the grant (`ManifestChanged`); the call is then decided again under the new version
//! and runs only if that decision allows it, with a new grant (issue 4, seed 000 §4).

use crate::breakers::Observed;
use crate::caller::Caller;
use crate::runtime::{Runtime, Shared};
use crate::traces::CallTrace;
use opentelemetry::KeyValue;
use warden_core::trace::TraceParent;
use warden_core::{Decision, Proposal, Verdict};
use warden_executor::ExecError;
use warden_executor::Interval;
pub use warden_identity::approval::Status as ApprovalStatus;
use warden_identity::approval::Status;
use warden_identity::GrantError;

/// A sink for an upstream's progress notifications: `(progress, total, message)`.
pub type ProgressSink = warden_executor::ProgressSink;

/// What an agent is told of the approval its call waits on (never the votes' signatures).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Approval {
    /// Its id (`apr_...`).
    pub id: String,
    /// Where it stands.
    pub status: Status,
    /// What it needs, in words.
    pub requires: String,
    /// How many approvals it has.
    pub approvals: usize,
    /// When it expires (Unix milliseconds).
    pub expires_ms: i64,
}

impl Approval {
    fn of(r: &warden_identity::approval::Request) -> Approval {
        Approval {
            id: r.id.clone(),
            status: r.status,
            requires: crate::approvals::requirement_text(&r.requirement, r.critical),
            approvals: r.approved_by().len(),
            expires_ms: r.expires_ms,
        }
    }

    /// Whether it still waits for votes (or may be redeemed once approved).
    #[must_use]
    pub fn open(&self) -> bool {
        matches!(self.status, Status::Pending | Status::Approved)
    }
}

/// What a call ran to: the redacted MCP result and where its receipt is.
#[derive(Debug)]
pub struct Ran {
    /// The redacted result, as the agent may see it.
    pub result: warden_executor::Answer,
    /// The receipt's ledger index.
    pub receipt_index: u64,
}

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
        approval: Option<Approval>,
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
        executed: Box<Ran>,
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
        error: String,
    },
    /// The call itself is malformed (an empty tool name, an oversized id): nothing was decided.
    Invalid {
        /// Why.
        why: String,
    },
}

/// A call an authenticated caller proposes, and how it wants the answer.
#[derive(Clone)]
pub struct Call<'a> {
    /// The session it belongs to.
    pub session: String,
    /// The tool (resource entry, prompt).
    pub tool: String,
    /// What is proposed: a tool call, a resource read, a prompt get.
    pub kind: warden_core::ActionKind,
    /// A use of the entry, or a completion of one of its arguments.
    pub operation: warden_core::Operation,
    /// Its arguments.
    pub arguments: serde_json::Value,
    /// The caller's W3C trace context (a `traceparent` header or `_meta` value), if it sent one.
    pub trace: Option<TraceParent>,
    /// Fires when the caller cancels.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The approval the caller says authorizes this call (it must be for this exact call).
    pub approval: Option<&'a str>,
    /// How long to wait for a pending approval: `None` for the manifest's `wait_seconds`,
    /// otherwise that many seconds (never more than the manifest's).
    pub wait_secs: Option<u64>,
    /// Where the upstream's progress (and the approval wait's) goes.
    pub progress: Option<ProgressSink>,
    /// The agent's client, for what the upstream asks of it while serving the call
    /// (sampling, elicitation, roots, log messages); `None` where the connection cannot
    /// carry them.
    pub client: Option<std::sync::Arc<dyn warden_executor::ClientSide>>,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("session", &self.session)
            .field("tool", &self.tool)
            .finish_non_exhaustive()
    }
}

/// One proposal on its way: what the steps below share.
struct Run<'a> {
    identity: &'a warden_identity::Identity,
    proposal: &'a Proposal,
    trace: &'a CallTrace,
    cancel: tokio_util::sync::CancellationToken,
    approval: Option<&'a str>,
    client: Option<std::sync::Arc<dyn warden_executor::ClientSide>>,
}

impl Runtime {
    /// Governs `call` as `caller`: the whole path, from the proposal to the answer. When the
    /// call escalates to an approval that is still pending, waits as `call.wait_secs` says
    /// (telling `call.progress` every 5 s) and, once approved, proposes the call again on it.
    pub async fn propose(&self, caller: &Caller, call: Call<'_>) -> Outcome {
        let identity = caller.identity();
        // INVARIANT (an agent proposes only as itself): the proposal's agent and tenant are the
        // authenticated caller's, whatever the front-end parsed.
        let proposal = Proposal {
            agent: identity.agent.clone(),
            session: call.session,
            tool: call.tool,
            arguments: call.arguments,
            tenant: Some(identity.tenant.clone()),
            kind: call.kind,
            operation: call.operation,
        };
        if let Err(e) = proposal.check() {
            return Outcome::Invalid { why: e.to_string() };
        }
        let max = self.max_wait_secs();
        let wait = call.wait_secs.map_or(max, |w| w.min(max));
        let started = std::time::Instant::now();
        let trace = self.shared.config.traces.begin(call.trace);
        let run = Run {
            identity,
            proposal: &proposal,
            trace: &trace,
            cancel: call.cancel,
            approval: call.approval,
            client: call.client,
        };
        let outcome = propose_wait_and_run(&self.shared, run, wait, call.progress).await;
        self.shared.metrics.governed(started.elapsed());
        // INVARIANT (secrets never leave in telemetry): the tool's name is the agent's text; it
        // names a span only if the manifest defines it (an agent could otherwise send anything
        // to the collector as a tool name).
        let tool = if self
            .shared
            .governor
            .get()
            .manifest()
            .tools
            .contains_key(&proposal.tool)
        {
            proposal.tool.as_str()
        } else {
            UNKNOWN_TOOL
        };
        trace.finish(tool, started, || span_attributes(&proposal, tool, &outcome));
        outcome
    }

    /// `/v1/decide`: what the Governor would decide for `proposal` now, with the same argument
    /// scan, over read-only state (see [`crate::dry_run`]).
    #[must_use]
    pub fn dry_run(&self, proposal: &Proposal) -> Decision {
        let s = &self.shared;
        let governor = s.governor.get();
        let found = crate::flows::egress_findings(&governor, s.executor.redactor(), proposal);
        // INVARIANT (a dry run spends nothing): anyone on the host can name any agent here, so
        // the decision is made over read-only state and is neither recorded nor acted on.
        governor.decide_scanned(
            proposal,
            &crate::dry_run::ReadOnly(
                s.state.as_ref(),
                s.fleet.as_ref().and_then(|f| f.behind.why()),
            ),
            crate::now_unix(),
            &found,
        )
    }

    /// The approval `id` as it stands now, if it is kept.
    #[must_use]
    pub fn approval(&self, id: &str) -> Option<Approval> {
        self.shared
            .approvals
            .get(id, crate::now_unix_ms())
            .map(|r| Approval::of(&r))
    }
}

/// Governs `run` ([`propose_and_run`]); when the call escalates to an approval that is still
/// pending and `wait_secs` is not 0, waits up to that long for it to be decided (telling
/// `progress` every 5 s) and, once approved, proposes the call again on it.
async fn propose_wait_and_run(
    app: &Shared,
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
        client,
    } = run;
    let again = |approval| Run {
        identity,
        proposal,
        trace,
        cancel: cancel.clone(),
        approval,
        client: client.clone(),
    };
    let outcome = propose_and_run(app, again(approval), progress.clone()).await;
    let pending = match &outcome {
        Outcome::Decided {
            approval: Some(r), ..
        } if wait_secs > 0 && r.status == Status::Pending => r.id.clone(),
        _ => return outcome,
    };
    let waiting = std::time::Instant::now();
    let waited = wait_for_approval(app, &pending, wait_secs, progress.as_ref(), &cancel).await;
    trace.stage("warden.approval.wait", Interval::since(waiting), || {
        vec![
            KeyValue::new("warden.approval.id", pending.clone()),
            KeyValue::new(
                "warden.approval.status",
                waited.map_or("pending", |s| s.as_str()),
            ),
        ]
    });
    match waited {
        Some(Status::Approved) => propose_and_run(app, again(Some(&pending)), progress).await,
        _ => outcome,
    }
}

/// Waits up to `secs` for approval `id` to leave `pending`, telling the agent every five
/// seconds; `None` if it did not (timeout or the agent cancelled).
async fn wait_for_approval(
    app: &Shared,
    id: &str,
    secs: u64,
    progress: Option<&ProgressSink>,
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
async fn propose_and_run(app: &Shared, run: Run<'_>, progress: Option<ProgressSink>) -> Outcome {
    let Run {
        identity,
        proposal,
        trace,
        cancel,
        approval,
        client,
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
        let found = crate::flows::egress_findings(&governor, app.executor.redactor(), proposal);
        let redact = tool.map(|t| t.redact.clone()).unwrap_or_default();
        let flow_key = warden_core::state::session_key(&proposal.agent, &proposal.session);
        let flow = crate::flows::load(app.flows.as_ref(), &flow_key);
        let governed = govern(
            app,
            &governor,
            proposal,
            trace,
            identity.chain.clone(),
            identity.tools.as_ref(),
            &found,
            &flow,
            approval.filter(|_| attempt == 1),
        )
        .await;
        // The decision is made: the flow it was judged on is let go before the result is
        // labelled, so the store updates its flow in place instead of copying the whole of it.
        drop(flow);
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
        // The upstream continues the call's trace under the execution's span.
        let execution = trace.execution();
        let call = warden_executor::Call {
            grant: &grant,
            session: &proposal.session,
            agent: &proposal.agent,
            tenant: &identity.tenant,
            tool: &proposal.tool,
            kind: proposal.kind,
            operation: proposal.operation,
            arguments: arguments.clone(),
            trace_id: trace.id(),
            traceparent: execution.as_ref().map(|e| e.traceparent.as_str()),
            request_id: &request_id,
            redact: &redact,
            cancel: cancel.clone(),
            progress: progress.clone(),
            client: client.clone(),
        };
        let executing = std::time::Instant::now();
        let timed = app.executor.execute_timed(call).await;
        let span = Interval::since(executing);
        app.metrics
            .stage(crate::metrics::Stage::Execute, span.elapsed());
        if let Some(i) = timed.stages.upstream {
            app.metrics
                .stage(crate::metrics::Stage::Upstream, i.elapsed());
        }
        if let Some(i) = timed.stages.redaction {
            app.metrics
                .stage(crate::metrics::Stage::Redaction, i.elapsed());
        }
        if let Some(i) = timed.stages.receipt {
            app.metrics
                .stage(crate::metrics::Stage::Receipt, i.elapsed());
        }
        if let Some(e) = &execution {
            trace.executed(e, &proposal.tool, span, &timed);
        }
        let result = timed.result;
        if result.is_err() {
            app.metrics.call_failed();
        }
        let seen = match &result {
            // INVARIANT (only the agent's conduct costs it trust): what a completion comes to
            // is the upstream's (many offer none), not the agent's.
            _ if proposal.operation == warden_core::Operation::Complete => Observed::Neutral,
            Ok(x) if x.result.is_error() => {
                Observed::Failure(format!("`{}` returned an error result", proposal.tool))
            }
            Ok(_) => Observed::Success,
            // The call reached the tool, which did not answer in time.
            Err(e @ ExecError::Timeout { .. }) => Observed::Failure(e.to_string()),
            // Tools report failures as error results; a protocol-level error is unexpected.
            Err(e @ ExecError::Upstream { .. }) => Observed::Unknown(e.to_string()),
            // INVARIANT (only the agent's conduct costs it trust): an upstream that cannot
            // start, a sandbox that cannot be set up, a tool withdrawn for its pin are the
            // gateway's and the upstream's state, decided before the call reached the tool;
            // they neither pause nor demote the agent (issue 18).
            Err(ExecError::Unavailable { .. } | ExecError::Withdrawn { .. }) => Observed::Neutral,
            Err(_) => Observed::Neutral,
        };
        breaker(app, &decision, seen).await;
        match result {
            Ok(executed) => {
                // INVARIANT (fail-closed, issue 23): the agent sees a result only once it is
                // labelled in its session's flow; the next call is decided with it.
                if let Err(why) = crate::flows::record_result(
                    app.flows.as_ref(),
                    &governor,
                    app.executor.redactor(),
                    &flow_key,
                    proposal,
                    &executed.result,
                ) {
                    return Outcome::Failed {
                        decision,
                        request_id,
                        index,
                        error: why,
                    };
                }
                return Outcome::Ran {
                    decision,
                    request_id,
                    index,
                    executed: Box::new(Ran {
                        result: executed.result,
                        receipt_index: executed.receipt_index,
                    }),
                };
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
                    error: error.to_string(),
                }
            }
        }
    }
}

/// Tells the agent's breaker what became of a call; trips it when that was one failure too many.
async fn breaker(app: &Shared, decision: &Decision, seen: Observed) {
    let limit = app.governor.get().manifest().breakers.consecutive_failures;
    if let Some(why) = app.breakers.observe(&decision.agent, seen, limit) {
        crate::breakers::trip(app, &decision.agent, &decision.tenant, &why).await;
    }
}

// The longest a call waits for its decision to be recorded; past it, the call is denied as
// unrecorded (a store that only is slow refuses sooner, by its own timeouts). The same bound
// holds for receipts and events (`Ticket::recorded`).
use warden_ledger::RECORD_WAIT;

/// What the governed path made of one proposal.
#[derive(Debug)]
enum Governed {
    /// The ledger could not record the decision: deny (INV-003).
    LedgerDown {
        /// Request id.
        request_id: String,
        /// Why.
        why: String,
    },
    /// Decided and recorded.
    Decided {
        /// The decision.
        decision: Box<warden_core::Decision>,
        /// Request id.
        request_id: String,
        /// Ledger index of the decision record.
        index: u64,
        /// The grant, when asked for and the decision allows.
        grant: Option<String>,
        /// The approval request an escalated call waits on.
        approval: Option<Approval>,
    },
    /// Allowed and recorded, but no grant could be minted: nothing may run.
    GrantDown {
        /// Why.
        why: String,
    },
}

/// Decides, records the decision in the ledger (with the delegation chain) and, if allowed,
/// mints the grant. Only the authenticated paths (`/mcp`, signed `/v1/proposals`) come here.
/// The caller's credential's tool list, the argument scan's findings and whether the call
/// awaits its approval are evidence the Governor decides on. An escalated call redeems its
/// approval (`approval_id`, or the approved request for the same call) or opens one
/// ([`crate::approvals`]).
#[expect(
    clippy::too_many_arguments,
    reason = "the governed path's inputs, each from a different source"
)]
async fn govern(
    app: &Shared,
    governor: &warden_policy::Governor,
    proposal: &Proposal,
    trace: &CallTrace,
    chain: Vec<String>,
    credential_tools: Option<&std::collections::BTreeSet<String>>,
    found: &[&str],
    flow: &warden_core::flow::SessionFlow,
    approval_id: Option<&str>,
) -> Governed {
    // The whole decision runs under the one Governor snapshot the caller took (the same one its
    // argument scan used). Evidence: what the approval book holds for this call (claimed: an
    // approved request is held for it until finished below).
    let claimed = crate::approvals::claim(
        app.approvals.as_ref(),
        governor,
        proposal,
        approval_id,
        crate::now_unix_ms(),
    );
    let evidence = warden_policy::Evidence {
        found,
        awaiting_approval: claimed.awaits(),
        credential_tools,
        approval: claimed.evidence(),
        flow: Some(flow),
    };
    let deciding = std::time::Instant::now();
    let decision = governor.decide_with(proposal, app.state.as_ref(), crate::now_unix(), &evidence);
    let decided = Interval::since(deciding);
    app.metrics
        .stage(crate::metrics::Stage::Decide, decided.elapsed());
    trace.stage("warden.decide", decided, || {
        vec![KeyValue::new("warden.decision", decision.decision.as_str())]
    });
    count_decision(app, governor, &decision);
    let redact = |s: &str| {
        app.executor
            .redactor()
            .redact_str(s, &std::collections::BTreeSet::new())
            .map_or_else(|| s.to_owned(), |(r, _)| r)
    };
    // INVARIANT (secrets never logged): the decision's names and rules, never its arguments.
    // INVARIANT (no forged log fields): the tool is the agent's text; the log names it only if
    // the manifest defines it (an invented name could fake fields or hide behind look-alike
    // characters; the ledger keeps it, hashed into the record).
    let logged_tool = if governor.manifest().tools.contains_key(&decision.tool) {
        decision.tool.as_str()
    } else {
        UNKNOWN_TOOL
    };
    tracing::info!(
        trace_id = %trace.id(),
        agent = %decision.agent,
        tool = %logged_tool,
        decision = decision.decision.as_str(),
        rules = ?decision.rules,
        "decision"
    );
    let request_id = request_id();
    let redeemed = crate::approvals::redeemed(&decision);
    // INVARIANT (fail-closed, INV-003): a decision the ledger did not durably record is
    // answered as a deny, whatever the Governor said. The lineage: the owner, then the
    // delegation chain down to the caller.
    let appending = std::time::Instant::now();
    // INVARIANT (fail-closed, issue 22): a ledger store that does not answer (a database that
    // froze) holds no call longer than RECORD_WAIT: the decision is answered as unrecorded.
    let recorded = tokio::time::timeout(
        RECORD_WAIT,
        app.ledger
            .record_decision(decision, trace.id(), &request_id, chain),
    )
    .await
    .unwrap_or(Err(warden_ledger::LedgerError::TimedOut(RECORD_WAIT)));
    let appended = Interval::since(appending);
    app.metrics
        .stage(crate::metrics::Stage::LedgerAppend, appended.elapsed());
    trace.stage_ended(
        "warden.ledger.append",
        appended,
        recorded.as_ref().err().map(|_| "ledger.unavailable"),
        || {
            recorded.as_ref().map_or_else(
                |_| Vec::new(),
                |r| {
                    vec![KeyValue::new(
                        "warden.ledger.index",
                        i64::try_from(r.index()).unwrap_or(i64::MAX),
                    )]
                },
            )
        },
    );
    let recorded = match recorded {
        Ok(r) => r,
        Err(e) => {
            app.metrics.ledger_failed();
            tracing::error!(error = %e, "ledger append failed; answering deny");
            // The approval a redeeming call used stays used: the call did not run and must be
            // approved again (fail closed). The decision moved into the failed record; what
            // it redeemed is known from the claim.
            claimed.finish(
                app.approvals.as_ref(),
                governor,
                proposal,
                redeemed,
                None,
                &redact,
                crate::now_unix_ms(),
            );
            return Governed::LedgerDown {
                request_id,
                why: e.to_string(),
            };
        }
    };
    let (index, decision) = (recorded.index(), recorded.decision());
    let pending = claimed.finish(
        app.approvals.as_ref(),
        governor,
        proposal,
        redeemed,
        Some(decision),
        &redact,
        crate::now_unix_ms(),
    );
    // A call a Cedar policy forbids is a violation: the agent is demoted (seed 002).
    if decision.decision == Verdict::Deny
        && decision
            .rules
            .first()
            .is_some_and(|r| r.starts_with("policy:"))
    {
        crate::promotion::demote(
            app,
            &decision.agent,
            &decision.tenant,
            &format!(
                "a call to `{}` forbidden by {}",
                decision.tool,
                decision.rules.first().map_or("", String::as_str)
            ),
        )
        .await;
    }
    if let Some((r, true)) = &pending {
        let text = crate::approvals::requirement_text(&r.requirement, r.critical);
        crate::witness::record(
            &app.ledger,
            "approval.requested",
            crate::witness::About::approval(&r.binding, &r.id),
            format!(
                "approval {} for `{}` (decision {index}) needs {text}",
                r.id, r.binding.tool
            ),
        )
        .await;
        app.publish(
            "approval.requested",
            format!(
                "agent `{}` asks to call `{}`: needs {text} (approval {})",
                r.binding.agent, r.binding.tool, r.id
            ),
            serde_json::json!({
                "id": r.id,
                "agent": r.binding.agent,
                "tenant": r.binding.tenant,
                "tool": r.binding.tool,
                "requires": text,
                "preview": r.preview,
                "expires_ms": r.expires_ms,
            }),
        );
    }
    let mut grant = None;
    // An allowed, recorded call gets its single-use grant (docs/grants.md).
    if decision.is_allow() {
        let now_ms = crate::now_unix_ms();
        match app
            .identity
            .grants
            .mint(&recorded, now_ms, warden_identity::grant::DEFAULT_TTL_MS)
        {
            Ok(g) => grant = Some(g),
            // INVARIANT (fail-closed): without a grant nothing can run; say so.
            Err(e) => return Governed::GrantDown { why: e.to_string() },
        }
    }
    Governed::Decided {
        decision: Box::new(recorded.into_decision()),
        request_id,
        index,
        grant,
        approval: pending.map(|(r, _)| Approval::of(&r)),
    }
}

/// What a span calls a tool the manifest does not define.
const UNKNOWN_TOOL: &str = "(unknown)";

/// The attributes of a governed call's span (`tool`: its name if the manifest defines it,
/// else [`UNKNOWN_TOOL`]), from what became of it, and its `error.type` when
/// it failed. Names the manifest and Warden define, and ids; never an argument, a result or an
/// error's text (INVARIANT in [`crate::traces`]).
fn span_attributes(
    proposal: &Proposal,
    tool: &str,
    outcome: &Outcome,
) -> (Vec<KeyValue>, Option<&'static str>) {
    let mut a = vec![
        KeyValue::new("mcp.method.name", "tools/call"),
        KeyValue::new("gen_ai.tool.name", tool.to_owned()),
        KeyValue::new("gen_ai.operation.name", "execute_tool"),
        KeyValue::new("warden.agent", proposal.agent.clone()),
    ];
    if let Some(t) = &proposal.tenant {
        a.push(KeyValue::new("warden.tenant", t.clone()));
    }
    let decided = |a: &mut Vec<KeyValue>, d: &Decision, request_id: &str, index: u64| {
        a.push(KeyValue::new("warden.decision", d.decision.as_str()));
        a.push(KeyValue::new(
            "warden.rules",
            opentelemetry::Value::Array(opentelemetry::Array::String(
                d.rules.iter().map(|r| r.clone().into()).collect(),
            )),
        ));
        a.push(KeyValue::new("warden.request_id", request_id.to_owned()));
        a.push(KeyValue::new(
            "warden.ledger.index",
            i64::try_from(index).unwrap_or(i64::MAX),
        ));
    };
    let (outcome, error) = match outcome {
        Outcome::NotDecided { rule, .. } => ("not_decided", Some(*rule)),
        Outcome::Decided {
            decision,
            request_id,
            index,
            approval,
        } => {
            decided(&mut a, decision, request_id, *index);
            if let Some(r) = approval {
                a.push(KeyValue::new("warden.approval.id", r.id.clone()));
            }
            ("decided", None)
        }
        Outcome::Ran {
            decision,
            request_id,
            index,
            executed,
        } => {
            decided(&mut a, decision, request_id, *index);
            a.push(KeyValue::new(
                "warden.receipt.index",
                i64::try_from(executed.receipt_index).unwrap_or(i64::MAX),
            ));
            let tool_error = executed.result.is_error();
            ("ran", tool_error.then_some("tool_error"))
        }
        Outcome::Failed {
            decision,
            request_id,
            index,
            ..
        } => {
            decided(&mut a, decision, request_id, *index);
            ("failed", Some("execution_failed"))
        }
        // Not traced: a malformed call is answered before its trace begins.
        Outcome::Invalid { .. } => ("invalid", Some("invalid_call")),
    };
    a.push(KeyValue::new("warden.outcome", outcome));
    (a, error)
}

/// Counts a decision for `/metrics`, under labels the manifest bounds.
fn count_decision(app: &Shared, governor: &warden_policy::Governor, decision: &Decision) {
    if !app.metrics.on() {
        return;
    }
    let m = governor.manifest();
    let tool = m.tools.get(&decision.tool);
    let tier = tool
        .and_then(|t| m.tiers.get(t.tier))
        .map_or("(unknown)", |t| t.name.as_str());
    app.metrics.decided(
        decision.decision.as_str(),
        tier,
        (&decision.tool, tool.is_some()),
        (&decision.tenant, m.tenants.contains(&decision.tenant)),
    );
    app.metrics.budgets_used(&decision.budget_use);
}

/// A fresh request id: 16 random bytes in hex.
fn request_id() -> String {
    let mut b = [0u8; 16];
    // Without randomness the id still must be unique per process: fall back to time and a
    // counter (uniqueness, not secrecy, is what the id needs).
    if getrandom::fill(&mut b).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = crate::now_unix().unsigned_abs();
        b = ((u128::from(t) << 64) | u128::from(n)).to_le_bytes();
    }
    let mut s = String::with_capacity(32);
    warden_core::canonical::push_hex(&mut s, &b);
    s
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "tests fail loudly on purpose"
    )]

    use super::*;

    /// What the ledger holds, one word per entry (`decision:allow`, `receipt`, event kinds).
    fn kinds(ledger: &warden_ledger::Ledger) -> Vec<String> {
        let mut out = Vec::new();
        let n = ledger.size().unwrap();
        ledger
            .with_store(|s| {
                s.scan(0, n, &mut |_, b| {
                    out.push(match warden_ledger::Entry::from_bytes(b).unwrap() {
                        warden_ledger::Entry::Decision(d) => {
                            format!("decision:{}", d.decision.as_str())
                        }
                        warden_ledger::Entry::Receipt(_) => "receipt".to_owned(),
                        warden_ledger::Entry::Event(e) => e.kind,
                    });
                    Ok(())
                })
                .map_err(Into::into)
            })
            .unwrap();
        out
    }

    /// The governed path with a real upstream (`mcp-server-time`, installed by `.ci/run`): a
    /// grant minted under a manifest version that is no longer current is not honored; the call
    /// is decided again under the current one, and runs only if that decision allows it. The
    /// Executor's clock is moved alone here to open the window between decision and execution
    /// that a reload opens in production.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_from_an_older_manifest_is_decided_again() {
        let Ok(venv) = std::env::var("WARDEN_E2E_VENV") else {
            eprintln!("notice: WARDEN_E2E_VENV not set: skipping the re-decision test");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = crate::starter::write(dir.path()).unwrap();
        let v1 = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "tools:\n",
                "tools:\n  - name: time.get_current_time\n    tier: low\n    zones: [\"*\"]\n    arguments: { type: object }\n",
            )
            .replace(
                "  - name: demo\n    command: [warden, demo-server]\n    sandbox: { require: [] }\n",
                &format!("  - name: time\n    command: [\"{venv}/bin/mcp-server-time\"]\n    unsandboxed: \"the test cache is outside any sandbox view\"\n"),
            );
        std::fs::write(&path, &v1).unwrap();
        let config = crate::runtime::Config::embedded(dir.path(), dir.path().join("no-warden"));
        let runtime = tokio::task::spawn_blocking(move || Runtime::open(config))
            .await
            .unwrap()
            .unwrap();
        let down = runtime.start(std::time::Duration::from_secs(30)).await;
        assert!(down.is_empty(), "{down:?}");
        let cred = crate::agents::enroll(
            dir.path(),
            &runtime.manifest(),
            "coder-1",
            crate::now_unix(),
            3600,
        )
        .unwrap();
        let token = std::fs::read_to_string(&cred).unwrap();
        let caller = runtime.authenticate(Some(token.trim())).unwrap();
        let s = &runtime.shared;
        let proposal = |session: &str| Proposal {
            agent: "coder-1".into(),
            session: session.into(),
            tool: "time.get_current_time".into(),
            arguments: serde_json::json!({"timezone": "UTC"}),
            tenant: None,
            kind: warden_core::ActionKind::Tool,
            operation: warden_core::Operation::Use,
        };
        let run = |p: Proposal| {
            let (s, identity) = (&runtime.shared, caller.identity());
            async move {
                let trace = crate::traces::Traces::off().begin(None);
                let run = Run {
                    identity,
                    proposal: &p,
                    trace: &trace,
                    cancel: tokio_util::sync::CancellationToken::new(),
                    approval: None,
                    client: None,
                };
                propose_and_run(s, run, None).await
            }
        };

        // Under the version it was decided in, the call runs: decision, then receipt.
        let out = run(proposal("s1")).await;
        assert!(matches!(out, Outcome::Ran { .. }), "{out:?}");
        let before = kinds(&s.ledger).len();

        // The Executor's manifest moved on: the grant is refused, the call decided again, and
        // (the Governor here still deciding under the old version) refused again. Nothing runs.
        s.clock.set(2);
        let out = run(proposal("s2")).await;
        match &out {
            Outcome::Failed { error, .. } => {
                assert!(
                    error.contains("made under manifest version 1, current is 2"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kinds(&s.ledger)[before..],
            [
                "decision:allow",
                "grant.refused",
                "decision:allow",
                "grant.refused"
            ]
        );

        // The new version (the tool raised to critical) is swapped in: decided under it, the
        // call escalates and does not run.
        let v2 = v1.replace("version: 1", "version: 2").replace(
            "  - name: time.get_current_time\n    tier: low",
            "  - name: time.get_current_time\n    tier: critical",
        );
        std::fs::write(&path, v2).unwrap();
        s.governor.reload(&path).unwrap();
        let out = run(proposal("s3")).await;
        let Outcome::Decided {
            decision, approval, ..
        } = out
        else {
            panic!("{out:?}");
        };
        assert_eq!(decision.decision, Verdict::Escalate);
        assert_eq!(decision.manifest_version, 2);
        // It waits on an approval request bound to this call under version 2, which two
        // distinct humans (never the owner alone: the tier is critical) must approve.
        let a = approval.expect("an approval request");
        let a = s.approvals.get(&a.id, crate::now_unix_ms()).unwrap();
        assert_eq!(
            a.requirement,
            warden_identity::approval::Requirement::Humans { approvers: 2 }
        );
        assert!(a.critical);
        assert_eq!(
            (a.binding.session.as_str(), a.binding.manifest_version),
            ("s3", 2)
        );
        assert_eq!(a.binding.arguments_hash, decision.arguments_hash);
        // The decision is the Governor's escalation as it made it: opening the request changed
        // nothing in it (the `approval.requested` event names it by index).
        assert!(
            !decision.rules.iter().any(|r| r.starts_with("approval.")),
            "{decision:?}"
        );
        runtime.shutdown().await;
    }
}
