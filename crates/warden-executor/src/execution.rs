//! One granted call, step by step: redeem the grant for exactly this call, register it where
//! the kill switch finds it, pick the caller's runner, check the holds, reach the upstream,
//! call, redact, receipt.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, CompleteRequestParams,
    GetPromptRequestParams, ReadResourceRequestParams, ServerResult,
};
use warden_core::{ActionKind, Operation};
use warden_ledger::{Entry, Receipt, ReceiptStatus};

use crate::in_flight::{InFlight, Registered};
use crate::{Answer, Call, ExecError, Executed, Executor, Interval, ProgressSink, Stages, Timed};

/// A failed exchange with an upstream: a server that went away (killed, crashed, its
/// transport closed) is unavailable, like one that cannot start; anything else is an error of
/// the upstream's protocol.
fn upstream_error(upstream: &str, e: &rmcp::ServiceError, why: String) -> ExecError {
    match e {
        rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_) => {
            ExecError::Unavailable {
                upstream: upstream.to_owned(),
                why: format!("the server went away ({why}); it is started again on the next call"),
            }
        }
        _ => ExecError::Upstream {
            upstream: upstream.to_owned(),
            why,
        },
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Executor {
    /// Runs one granted call.
    ///
    /// Order: the grant is redeemed against exactly this call (its arguments hashed here, from
    /// what will be sent) and the current manifest version; only then is the upstream
    /// reached. Whatever the upstream does after that — a result, an error, a timeout, a
    /// cancellation — a receipt is appended to the ledger; a result is returned only once its
    /// receipt is recorded.
    ///
    /// # Errors
    /// [`ExecError`] naming what stopped the call.
    pub async fn execute(&self, call: Call<'_>) -> Result<Executed, ExecError> {
        self.execute_timed(call).await.result
    }

    /// [`Executor::execute`], and when each of its stages ran.
    pub async fn execute_timed(&self, call: Call<'_>) -> Timed {
        let mut stages = Stages::default();
        let result = self.run(call, &mut stages).await;
        Timed { result, stages }
    }

    /// The steps of [`Executor::execute`], noting in `stages` when each ran.
    async fn run(&self, mut call: Call<'_>, stages: &mut Stages) -> Result<Executed, ExecError> {
        let arguments = serde_json::Value::Object(std::mem::take(&mut call.arguments));
        // The operation is in the hash the grant binds: a grant redeems for its operation only.
        let arguments_hash = call
            .operation
            .arguments_digest(&warden_core::canonical::to_canonical_string(&arguments));
        let started = now_ms();
        // INVARIANT (fail-closed, INV-002): nothing below runs unless this grant verifies for
        // exactly this call under the current manifest, and has not been used.
        let grant = self.redeem(&call, &arguments_hash, started).await?;
        let session_key = warden_core::state::session_key(call.agent, call.session);
        let stop = call.cancel.child_token();
        let _registered = self.register(&call, &session_key, &stop);
        let (up_name, tool_name) = call
            .tool
            .split_once('.')
            .ok_or_else(|| ExecError::UnknownTool(call.tool.to_owned()))?;
        let template = self
            .upstreams
            .get(up_name)
            .ok_or_else(|| ExecError::UnknownTool(call.tool.to_owned()))?;
        let runner = self.runner(template, call.tenant, call.agent, &session_key);
        let up = match &runner {
            Ok(u) => Arc::clone(u),
            Err(_) => Arc::clone(template),
        };
        let draft = Draft {
            call: &call,
            arguments_hash: &arguments_hash,
            grant,
            started,
            executor: format!("mcp:{up_name}"),
            profile: up.profile(),
        };
        if let Err(e) = runner {
            return self.fail(draft.receipt(ReceiptStatus::Refused), e).await;
        }
        let to = Target {
            up: &up,
            name: up_name,
            tool: tool_name,
        };
        let client = match self.connect(&to, &call, &session_key, &stop).await {
            Ok(c) => c,
            Err((status, e)) => return self.fail(draft.receipt(status), e).await,
        };
        let calling = std::time::Instant::now();
        let result = self
            .call_upstream(&to, &client, arguments, &call, &stop)
            .await;
        stages.upstream = Some(Interval::since(calling));
        let result = match result {
            Ok(r) => r,
            Err((status, e)) => return self.fail(draft.receipt(status), e).await,
        };
        self.finish(result, &draft, stages).await
    }

    /// Step 1: redeems the grant for exactly this call; a refused grant is evidence (a replay,
    /// a forgery, a stale decision) and is recorded, best effort — the call is refused whether
    /// or not the record lands. Answers the grant's id.
    async fn redeem(
        &self,
        call: &Call<'_>,
        arguments_hash: &str,
        started: i64,
    ) -> Result<String, ExecError> {
        let redeemed = self.grants.redeem(
            call.grant,
            &warden_identity::Call {
                session: call.session,
                agent: call.agent,
                tool: call.tool,
                arguments_hash,
            },
            self.manifest.get(),
            started,
            self.replay.as_ref(),
        );
        match redeemed {
            Ok(claims) => Ok(claims.id_hex()),
            Err(e) => {
                let event = Entry::Event(warden_ledger::EventRecord {
                    kind: "grant.refused".into(),
                    agent: call.agent.to_owned(),
                    tenant: call.tenant.to_owned(),
                    session: call.session.to_owned(),
                    reason: format!("tool `{}`: {e}", call.tool),
                    trace_id: call.trace_id.to_owned(),
                    request_id: call.request_id.to_owned(),
                    time: started.div_euclid(1000),
                });
                let _ = self.record(&event).await;
                Err(ExecError::Grant(e))
            }
        }
    }

    /// Step 2: registers the call where the kill switch finds it, until the guard goes.
    // INVARIANT (kill switch, INV-025): register first, then check holds. An operator's kill
    // sets the hold, then stops what is registered: a call is either stopped, or sees the hold
    // and does not start.
    fn register(
        &self,
        call: &Call<'_>,
        session_key: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Registered<'_> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(
                id,
                InFlight {
                    tenant: call.tenant.to_owned(),
                    agent: call.agent.to_owned(),
                    session_key: session_key.to_owned(),
                    stop: stop.clone(),
                },
            );
        }
        Registered { executor: self, id }
    }

    /// Step 3: no hold covers the call; the upstream (started if need be, a kill meanwhile
    /// stopping the call) lists the tool and its pin holds.
    async fn connect(
        &self,
        to: &Target<'_>,
        call: &Call<'_>,
        session_key: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Arc<crate::upstream::Client>, (ReceiptStatus, ExecError)> {
        if let Some(e) = self.hold_error(call.tenant, call.agent, session_key) {
            return Err((ReceiptStatus::Refused, e));
        }
        // Starting the upstream may take a while: a kill meanwhile stops the call here.
        let connected = tokio::select! {
            c = to.up.client() => c,
            () = stop.cancelled() => return Err((ReceiptStatus::Killed, ExecError::Cancelled)),
        };
        let (client, tools) = connected.map_err(|e| (ReceiptStatus::Refused, e))?;
        // INVARIANT (INV-023): only a tool the upstream lists and whose pin holds is called.
        if call.kind == ActionKind::Tool && !tools.iter().any(|t| t.name == to.tool) {
            crate::counters::Counters::add(&self.counters.tools_withdrawn);
            return Err((
                ReceiptStatus::Refused,
                ExecError::Withdrawn {
                    upstream: to.name.to_owned(),
                    tool: to.tool.to_owned(),
                },
            ));
        }
        if call.operation == Operation::Complete && !crate::catalog::offers_completions(&client) {
            return Err((
                ReceiptStatus::Refused,
                ExecError::Unavailable {
                    upstream: to.name.to_owned(),
                    why: "it offers no completions".to_owned(),
                },
            ));
        }
        // INVARIANT (kill switch, INV-025): last look before anything leaves for the upstream.
        if stop.is_cancelled() {
            return Err((ReceiptStatus::Killed, ExecError::Cancelled));
        }
        if let Some(e) = self.hold_error(call.tenant, call.agent, session_key) {
            return Err((ReceiptStatus::Refused, e));
        }
        Ok(client)
    }

    /// Step 4: sends `tools/call` (`resources/read`, `prompts/get`), relays the upstream's
    /// progress (redacted, under the caller's own token) and waits for the answer within the
    /// upstream's timeout; a cancellation or timeout is passed on to the upstream.
    async fn call_upstream(
        &self,
        to: &Target<'_>,
        client: &Arc<crate::upstream::Client>,
        arguments: serde_json::Value,
        call: &Call<'_>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Answer, (ReceiptStatus, ExecError)> {
        let request = request_for(call, to.tool, arguments).map_err(|why| {
            (
                ReceiptStatus::Refused,
                ExecError::Upstream {
                    upstream: to.name.to_owned(),
                    why,
                },
            )
        })?;
        let timeout = std::time::Duration::from_millis(to.up.spec.timeout_ms);
        // What the runner's sandbox does until the answer is tied to this call (issue 18).
        let _served = to.up.serving.enter(call.request_id);
        // What the upstream asks of the agent's client while serving this call reaches the
        // caller's client (registered before sending: it may ask before the send returns).
        let asking = to.up.relay.asks.as_ref().map(|a| {
            a.calls.enter(
                crate::client_requests::Who {
                    agent: call.agent.to_owned(),
                    tenant: call.tenant.to_owned(),
                    session: call.session.to_owned(),
                    request_id: call.request_id.to_owned(),
                    trace_id: call.trace_id.to_owned(),
                },
                call.redact,
                call.client.clone(),
            )
        });
        let handle = client
            .peer()
            .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
            .await
            .map_err(|e| {
                let why = self.redacted(&e.to_string(), call.redact);
                (ReceiptStatus::Error, upstream_error(to.name, &e, why))
            })?;
        // Progress: the upstream's notifications carry the token Warden's client gave this
        // request (an agent's token is never passed through, so agents cannot see or steer
        // each other's calls); they are redacted and relayed under the caller's own token.
        let _relay = call.progress.clone().map(|sink| {
            let redactor = Arc::clone(&self.redactor);
            let on = call.redact.clone();
            let relayed: ProgressSink = Arc::new(move |p, t, m: Option<String>| {
                // Numbers are read as their digits, as in results: a progress or total that
                // would be redacted (a numeric secret) is not relayed.
                let held = |n: f64| {
                    serde_json::Number::from_f64(n)
                        .is_some_and(|n| redactor.finds(&n.to_string(), &on))
                };
                if held(p) || t.is_some_and(held) {
                    return;
                }
                let m = m.map(|m| redactor.redact_str(&m, &on).map_or(m, |(r, _)| r));
                sink(p, t, m);
            });
            to.up.relay.register(handle.progress_token.clone(), relayed)
        });
        if let Some(a) = &asking {
            a.sent_as(handle.id.clone());
        }
        let (request_id, peer) = (handle.id.clone(), handle.peer.clone());
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, handle.await_response()) => Some(r),
            () = stop.cancelled() => None,
        };
        if matches!(outcome, Some(Ok(Ok(_)))) {
            to.up.answered();
        }
        if !matches!(outcome, Some(Ok(_))) {
            // Cancelled or timed out: tell the upstream to stop.
            let why = if outcome.is_none() {
                "cancelled by the caller"
            } else {
                "timed out"
            };
            let _ = peer
                .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                    Some(request_id),
                    Some(why.to_owned()),
                ))
                .await;
        }
        match outcome {
            None => Err((ReceiptStatus::Killed, ExecError::Cancelled)),
            Some(Err(_)) => {
                // The connection itself may be what failed: check it (in the background).
                to.up.probe(client);
                Err((
                    ReceiptStatus::Timeout,
                    ExecError::Timeout {
                        upstream: to.name.to_owned(),
                        ms: to.up.spec.timeout_ms,
                    },
                ))
            }
            Some(Ok(Ok(ServerResult::CompleteResult(r))))
                if call.operation == Operation::Complete =>
            {
                Ok(Answer::Completion(r))
            }
            Some(Ok(Ok(_))) if call.operation == Operation::Complete => Err((
                ReceiptStatus::Error,
                ExecError::Upstream {
                    upstream: to.name.to_owned(),
                    why: "answered a completion with something else".to_owned(),
                },
            )),
            Some(Ok(Ok(ServerResult::CallToolResult(r)))) if call.kind == ActionKind::Tool => {
                Ok(Answer::Tool(r))
            }
            Some(Ok(Ok(ServerResult::ReadResourceResult(r))))
                if call.kind == ActionKind::Resource =>
            {
                Ok(Answer::Resource(r))
            }
            Some(Ok(Ok(ServerResult::GetPromptResult(r)))) if call.kind == ActionKind::Prompt => {
                Ok(Answer::Prompt(r))
            }
            Some(Ok(Ok(_))) => Err((
                ReceiptStatus::Error,
                ExecError::Upstream {
                    upstream: to.name.to_owned(),
                    why:
                        "answered with an input request or a task, which Warden does not relay yet"
                            .to_owned(),
                },
            )),
            // The upstream's own message may quote a secret: redact it too.
            Some(Ok(Err(e))) => {
                let why = self.redacted(&e.to_string(), call.redact);
                Err((ReceiptStatus::Error, upstream_error(to.name, &e, why)))
            }
        }
    }

    /// Step 5: redacts the result, then records its receipt; the result is returned only once
    /// the receipt is recorded.
    async fn finish(
        &self,
        mut result: Answer,
        draft: &Draft<'_, '_>,
        stages: &mut Stages,
    ) -> Result<Executed, ExecError> {
        // INVARIANT (INV-010): the result is redacted before the receipt hashes it and before
        // anyone sees it.
        let redacting = std::time::Instant::now();
        let on = draft.call.redact;
        // A result with nothing to redact (every string, names included, and every number
        // checked) is hashed in the same pass; one that has something goes the `Value` way and
        // is hashed after.
        let (redactions, digest) =
            match result.digest_if_every_string_and_number(|s| !self.redactor.finds(s, on)) {
                Some(digest) => (0, digest),
                None => {
                    let n = self.redact(&mut result, draft.call.tool, on);
                    (n, result.digest())
                }
            };
        stages.redaction = Some(Interval::since(redacting));
        let status = if result.is_error() {
            ReceiptStatus::Error
        } else {
            ReceiptStatus::Ok
        };
        let receipt = draft.finished(status, digest, redactions);
        let recording = std::time::Instant::now();
        let index = self.record(&receipt).await;
        stages.receipt = Some(Interval::since(recording));
        let index = index.map_err(|e| ExecError::Receipt(e.to_string()))?;
        Ok(Executed {
            result,
            receipt_index: index,
            redactions,
        })
    }

    /// Redacts `result` in place, whatever its kind; returns how many values were redacted.
    fn redact(&self, result: &mut Answer, name: &str, on: &BTreeSet<String>) -> u64 {
        match result {
            Answer::Tool(r) => self.redact_result(r, on),
            Answer::Resource(r) => self.redact_typed(r, on, || {
                rmcp::model::ReadResourceResult::new(vec![rmcp::model::ResourceContents::text(
                    WITHHELD, name,
                )])
            }),
            Answer::Prompt(r) => self.redact_typed(r, on, || {
                rmcp::model::GetPromptResult::new(vec![rmcp::model::PromptMessage::new_text(
                    rmcp::model::Role::User,
                    WITHHELD,
                )])
            }),
            // Candidates that held a secret are not offered at all.
            Answer::Completion(r) => self.redact_typed(r, on, rmcp::model::CompleteResult::default),
        }
    }

    /// `text` with its secrets (and the call's detector matches) redacted.
    fn redacted(&self, text: &str, on: &BTreeSet<String>) -> String {
        self.redactor
            .redact_str(text, on)
            .map_or_else(|| text.to_owned(), |(r, _)| r)
    }

    fn redact_result(&self, result: &mut CallToolResult, on: &BTreeSet<String>) -> u64 {
        // Redact the whole result as JSON (every content block type, structured content,
        // metadata) and read it back: nothing is skipped because of its type.
        let Ok(mut value) = serde_json::to_value(&*result) else {
            // INVARIANT (INV-010, fail closed): what cannot be inspected is not passed on.
            *result = CallToolResult::error(vec![rmcp::model::ContentBlock::text(
                "[REDACTED: the result could not be inspected for secrets]",
            )]);
            return 1;
        };
        let n = self.redactor.redact_json(&mut value, on);
        if n > 0 {
            match serde_json::from_value::<CallToolResult>(value) {
                Ok(r) => *result = r,
                Err(_) => {
                    // A redaction broke a typed field (e.g. base64 data): withhold everything.
                    *result = CallToolResult::error(vec![rmcp::model::ContentBlock::text(
                        "[REDACTED: the result held secrets in a field that cannot be redacted in place]",
                    )]);
                }
            }
        }
        n
    }

    /// Redacts a resource's contents or a prompt's messages as JSON (every field, whatever its
    /// type) and reads them back; what cannot be read back is replaced by `withheld()`.
    fn redact_typed<T>(
        &self,
        result: &mut T,
        on: &BTreeSet<String>,
        withheld: impl Fn() -> T,
    ) -> u64
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        // INVARIANT (INV-010, fail closed): what cannot be inspected or redacted in place is
        // not passed on.
        let Ok(mut value) = serde_json::to_value(&*result) else {
            *result = withheld();
            return 1;
        };
        let n = self.redactor.redact_json(&mut value, on);
        if n > 0 {
            *result = serde_json::from_value::<T>(value).unwrap_or_else(|_| withheld());
        }
        n
    }

    async fn record(&self, entry: &Entry) -> Result<u64, warden_ledger::LedgerError> {
        let ticket = self.ledger.submit(entry)?;
        ticket
            .recorded()
            .await
            .inspect_err(|e| tracing::error!(error = %e, "receipt not recorded"))
    }

    /// Records the receipt of a call that ended without a result, and returns `error`.
    pub(crate) async fn fail(
        &self,
        receipt: Entry,
        error: ExecError,
    ) -> Result<Executed, ExecError> {
        // Best effort: the call is refused (or was stopped) whether or not the receipt lands.
        self.record(&receipt).await.ok();
        Err(error)
    }
}

/// What a resource or prompt is replaced by when it held secrets in a field that cannot be
/// redacted in place.
const WITHHELD: &str = "[REDACTED: this held secrets in a field that cannot be redacted in place]";

/// The request that carries out `call`: `tools/call` of `name` with the arguments,
/// `resources/read` of the `uri` argument, `prompts/get` of `name` with the arguments, or
/// `completion/complete` of an argument of the prompt `name` or of a resource template, each
/// with the call's trace context.
fn request_for(
    call: &Call<'_>,
    name: &str,
    arguments: serde_json::Value,
) -> Result<ClientRequest, String> {
    use rmcp::model::RequestParamsMeta as _;
    if call.operation == Operation::Complete {
        let mut params = completion_request(name, arguments)?;
        if let Some(tp) = call.traceparent {
            params.set_traceparent(tp);
        }
        return Ok(ClientRequest::CompleteRequest(
            rmcp::model::CompleteRequest::new(params),
        ));
    }
    let serde_json::Value::Object(arguments) = arguments else {
        return Err("the arguments are not an object".into());
    };
    Ok(match call.kind {
        ActionKind::Tool => {
            let mut params = CallToolRequestParams::new(name.to_owned());
            params.arguments = Some(arguments);
            // Trace context (SEP-414): the upstream continues the call's trace under its span.
            if let Some(tp) = call.traceparent {
                params.set_traceparent(tp);
            }
            ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params))
        }
        ActionKind::Resource => {
            let Some(serde_json::Value::String(uri)) = arguments.get("uri") else {
                return Err("a resource read names its `uri`".into());
            };
            let mut params = ReadResourceRequestParams::new(uri.clone());
            if let Some(tp) = call.traceparent {
                params.set_traceparent(tp);
            }
            ClientRequest::ReadResourceRequest(rmcp::model::ReadResourceRequest::new(params))
        }
        ActionKind::Prompt => {
            let mut params = GetPromptRequestParams::new(name.to_owned()).with_arguments(arguments);
            if let Some(tp) = call.traceparent {
                params.set_traceparent(tp);
            }
            ClientRequest::GetPromptRequest(rmcp::model::GetPromptRequest::new(params))
        }
    })
}

/// `completion/complete` for a completion's arguments: of the prompt `name` (its name at the
/// upstream), or of the resource template the arguments name.
fn completion_request(
    name: &str,
    arguments: serde_json::Value,
) -> Result<CompleteRequestParams, String> {
    use rmcp::model::{ArgumentInfo, CompletionContext, Reference};
    let c: warden_core::Completing = serde_json::from_value(arguments)
        .map_err(|e| format!("the completion's arguments are not readable: {e}"))?;
    let reference = match c.uri {
        Some(uri) => Reference::for_resource(uri),
        None => Reference::for_prompt(name),
    };
    let mut params = CompleteRequestParams::new(reference, ArgumentInfo::new(c.argument, c.value));
    if !c.context.is_empty() {
        params = params.with_context(CompletionContext::with_arguments(
            c.context.into_iter().collect(),
        ));
    }
    Ok(params)
}

/// The upstream a call goes to, and the tool's name there.
struct Target<'a> {
    up: &'a Arc<crate::upstream::Upstream>,
    name: &'a str,
    tool: &'a str,
}

/// What every receipt of one call says, whatever became of it.
struct Draft<'c, 'a> {
    call: &'c Call<'a>,
    arguments_hash: &'c str,
    grant: String,
    started: i64,
    executor: String,
    profile: String,
}

impl Draft<'_, '_> {
    /// The receipt of a call that ended without a result.
    fn receipt(&self, status: ReceiptStatus) -> Entry {
        self.finished(status, String::new(), 0)
    }

    /// The receipt of a call that ended as `status`, its result hashing to `result_hash`.
    fn finished(&self, status: ReceiptStatus, result_hash: String, redactions: u64) -> Entry {
        let c = self.call;
        Entry::Receipt(Receipt {
            trace_id: c.trace_id.to_owned(),
            request_id: c.request_id.to_owned(),
            tenant: c.tenant.to_owned(),
            agent: c.agent.to_owned(),
            action: c.tool.to_owned(),
            arguments_hash: self.arguments_hash.to_owned(),
            grant: self.grant.clone(),
            approval: None,
            started_at_ms: self.started,
            ended_at_ms: now_ms(),
            status,
            result_hash,
            executor: self.executor.clone(),
            sandbox_profile: self.profile.clone(),
            redactions,
        })
    }
}
