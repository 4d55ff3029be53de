//! The MCP front-end (Interceptor): Streamable HTTP at `/mcp`, and stdio for one agent.
//!
//! An agent connected here can only *propose*: `tools/call` becomes a [`Proposal`], the Governor
//! decides, the decision is recorded, and only an allowed call gets a grant, which the Executor
//! redeems itself before anything reaches an upstream. `tools/list` shows each agent only the
//! tools it may call. Denials and escalations are tool results with `isError: true` that say
//! why — never a "tool not found" for a tool that exists.

use crate::path::Outcome;
use crate::server::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use std::sync::Arc;
use warden_core::{Proposal, Verdict};
use warden_executor::Executor;
use warden_identity::approval::Status;
use warden_identity::Identity;

/// Largest MCP request body accepted on `/mcp` by default.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

/// Who a connection speaks for: set by [`bearer`] per HTTP request, fixed for stdio.
#[derive(Debug, Clone)]
pub struct McpCaller {
    /// The verified identity.
    pub identity: Identity,
    /// The session used when the transport gives none.
    pub session: String,
}

/// The one agent a stdio connection speaks for (no `Debug`: it holds the bearer token).
struct Fixed {
    /// Its credential, verified again on every request (a revocation applies mid-session).
    token: String,
    session: String,
}

/// The MCP server handler: one per MCP session.
#[derive(Clone)]
pub struct McpFront {
    app: AppState,
    executor: Arc<Executor>,
    fixed: Option<Arc<Fixed>>,
    /// The session's keys, whose per-session sandbox runners end with it.
    ended: Arc<SessionEnd>,
}

/// When the last handle of an MCP session goes (the session closed or expired), its
/// per-session sandbox runners are destroyed.
struct SessionEnd {
    executor: Arc<Executor>,
    keys: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl SessionEnd {
    fn new(executor: &Arc<Executor>) -> Arc<Self> {
        Arc::new(SessionEnd {
            executor: Arc::clone(executor),
            keys: std::sync::Mutex::default(),
        })
    }

    fn note(&self, key: String) {
        if let Ok(mut k) = self.keys.lock() {
            k.insert(key);
        }
    }
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        let keys = std::mem::take(self.keys.get_mut().unwrap_or_else(|e| e.into_inner()));
        for k in keys {
            self.executor.end_session(&k);
        }
    }
}

impl std::fmt::Debug for McpFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpFront")
            .field("stdio", &self.fixed.is_some())
            .finish_non_exhaustive()
    }
}

impl McpFront {
    /// A handler for HTTP, where each request carries its caller (see [`bearer`]).
    #[must_use]
    pub fn http(app: AppState, executor: Arc<Executor>) -> Self {
        McpFront {
            app,
            ended: SessionEnd::new(&executor),
            executor,
            fixed: None,
        }
    }

    /// A handler for a new session: the same front, its own session end.
    fn fresh(&self) -> Self {
        McpFront {
            ended: SessionEnd::new(&self.executor),
            ..self.clone()
        }
    }

    /// A handler for stdio, speaking for the agent of `credential` (verified now, and again on
    /// every request). The session is fresh for each connection.
    ///
    /// # Errors
    /// Why the credential is refused.
    pub fn stdio(app: AppState, executor: Arc<Executor>, credential: &str) -> Result<Self, String> {
        let identity = crate::server::verify_credential(&app, Some(credential))
            .map_err(|(_, rule, why)| format!("{rule}: {why}"))?;
        let session = format!(
            "stdio:{}:{}",
            identity.credential,
            crate::agents::random_request_id()
        );
        Ok(McpFront {
            app,
            ended: SessionEnd::new(&executor),
            executor,
            fixed: Some(Arc::new(Fixed {
                token: credential.to_owned(),
                session,
            })),
        })
    }

    /// The caller, session and trace id of a request.
    fn caller(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Identity, String, String), McpError> {
        if let Some(f) = &self.fixed {
            // INVARIANT (revocation is immediate): the stdio credential is checked per request.
            let identity = crate::server::verify_credential(&self.app, Some(&f.token)).map_err(
                |(_, rule, why)| McpError::invalid_request(format!("{rule}: {why}"), None),
            )?;
            return Ok((identity, f.session.clone(), String::new()));
        }
        let parts = ctx.extensions.get::<axum::http::request::Parts>();
        // INVARIANT (no anonymous agents): the bearer middleware put the verified caller here;
        // a request without one is refused, never served as somebody.
        let Some(caller) = parts.and_then(|p| p.extensions.get::<Arc<McpCaller>>()) else {
            return Err(McpError::invalid_request("not authenticated", None));
        };
        let headers = parts.map(|p| &p.headers);
        let session = headers
            .and_then(|h| h.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= warden_core::proposal::MAX_ID_BYTES)
            .map_or_else(|| caller.session.clone(), str::to_owned);
        let trace = headers.map(crate::server::trace_id).unwrap_or_default();
        Ok((caller.identity.clone(), session, trace))
    }
}

fn refusal(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

impl ServerHandler for McpFront {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = rmcp::model::Implementation::new("warden", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "Warden governs these tools: every call is decided by policy and recorded. A denied \
             call is final; an escalated call needs the approval it names."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (identity, _, _) = self.caller(&ctx)?;
        let governor = self.app.governor.get();
        // Seed 003: an agent sees only what it may call (its tenant, zone and trust level, and
        // its credential's tool list).
        let tools = self
            .executor
            .tools()
            .into_iter()
            .filter(|t| {
                governor.may_see(&identity.agent, &t.name)
                    && identity
                        .tools
                        .as_ref()
                        .is_none_or(|allowed| allowed.contains(t.name.as_ref()))
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let (identity, session, trace) = self.caller(&ctx)?;
        let progress_token = request
            .meta
            .as_ref()
            .and_then(rmcp::model::RequestMetaObject::get_progress_token)
            .or_else(|| ctx.meta.get_progress_token());
        let arguments = request.arguments.unwrap_or_default();
        self.ended.note(warden_policy::decide::session_key(
            &identity.agent,
            &session,
        ));
        let proposal = Proposal {
            agent: identity.agent.clone(),
            session,
            tool: request.name.to_string(),
            arguments: serde_json::Value::Object(arguments),
            tenant: Some(identity.tenant.clone()),
        };
        if let Err(e) = proposal.check() {
            return Ok(refusal(format!("Warden refused the call: {e}")));
        }
        // `_meta`: `warden/approval` names the approval this call redeems; `warden/wait`
        // (`false` or seconds) shortens the manifest's wait for an approval.
        // rmcp moves a request's `_meta` into the context; read both.
        let meta = |key: &str| {
            request
                .meta
                .as_ref()
                .and_then(|m| m.get(key))
                .or_else(|| ctx.meta.get(key))
                .cloned()
        };
        let approval = meta("warden/approval").and_then(|v| v.as_str().map(str::to_owned));
        let max_wait = self.app.governor.get().manifest().approvals.wait_secs;
        let wait = match meta("warden/wait") {
            Some(serde_json::Value::Bool(false)) => 0,
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0).min(max_wait),
            _ => max_wait,
        };
        let progress = progress_token.map(|t| progress_sink(&ctx, t));
        let run = |approval| crate::path::Run {
            identity: &identity,
            proposal: &proposal,
            trace: &trace,
            cancel: ctx.ct.clone(),
            approval,
        };
        let mut outcome = crate::path::propose_and_run(
            &self.app,
            &self.executor,
            run(approval.as_deref()),
            progress.clone(),
        )
        .await;
        // Wait for the approval (with progress), then run the call on it.
        let pending = match &outcome {
            Outcome::Decided {
                approval: Some(r), ..
            } if wait > 0 && r.status == Status::Pending => Some(r.id.clone()),
            _ => None,
        };
        if let Some(id) = pending {
            let waited = self
                .wait_for_approval(&id, wait, progress.as_ref(), &ctx.ct)
                .await;
            if waited == Some(Status::Approved) {
                outcome = crate::path::propose_and_run(
                    &self.app,
                    &self.executor,
                    run(Some(&id)),
                    progress.clone(),
                )
                .await;
            }
        }
        Ok(self.answer(outcome))
    }
}

impl McpFront {
    /// Waits up to `secs` for approval `id` to leave `pending`, telling the agent every five
    /// seconds; `None` if it did not (timeout or the agent cancelled).
    async fn wait_for_approval(
        &self,
        id: &str,
        secs: u64,
        progress: Option<&warden_executor::ProgressSink>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<Status> {
        let mut rx = self.app.approvals.subscribe(id)?;
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
                        let votes = self
                            .app
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

    /// The MCP result for an outcome.
    fn answer(&self, outcome: Outcome) -> CallToolResponse {
        match outcome {
            Outcome::NotDecided {
                rule,
                why,
                request_id,
            } => refusal(format!(
                "Warden could not record or grant the decision, so the call did not run (rule \
                 {rule}{}): {why}",
                request_id.map_or(String::new(), |r| format!("; request {r}"))
            )),
            Outcome::Decided {
                decision,
                request_id,
                approval: Some(r),
                ..
            } if decision.decision == Verdict::Escalate => {
                let now_ms = crate::now_unix_ms();
                let status = self
                    .app
                    .approvals
                    .get(&r.id, now_ms)
                    .map_or(r.status, |r| r.status);
                let what = escalation_text(decision.escalation.as_ref(), &decision.reason);
                let retry = match status {
                    Status::Pending | Status::Approved => format!(
                        "Call again with the same arguments once it is approved (optionally \
                         with `_meta` {{\"warden/approval\": \"{}\"}}).",
                        r.id
                    ),
                    other => format!("The approval is {}: propose again.", other.as_str()),
                };
                refusal(format!(
                    "This call needs approval before it can run: {what} (rules: {}; request \
                     {request_id}). Approval id: {} ({}, needs {}). It was not run. {retry}",
                    decision.rules.join(", "),
                    r.id,
                    status.as_str(),
                    crate::approvals::requirement_text(&r.requirement, r.critical),
                ))
            }
            Outcome::Decided {
                decision,
                request_id,
                ..
            } if decision.decision == Verdict::Escalate => refusal(format!(
                "This call needs a human before it can run: {} (rules: {}; request \
                 {request_id}). It was not run.",
                escalation_text(decision.escalation.as_ref(), &decision.reason),
                decision.rules.join(", ")
            )),
            Outcome::Decided {
                decision,
                request_id,
                ..
            } => {
                let retry = if decision.rules.iter().any(|r| r == "approval.too_many_open") {
                    "Retry once some of this agent's approval requests are decided or expire."
                } else {
                    "Retrying the same call will not help."
                };
                refusal(format!(
                    "Denied by Warden policy (rules: {}; request {request_id}): {}. {retry}",
                    decision.rules.join(", "),
                    decision.reason
                ))
            }
            Outcome::Ran { executed, .. } => executed.result.into(),
            Outcome::Failed {
                request_id, error, ..
            } => refusal(format!(
                "Warden allowed the call (request {request_id}) but it did not complete: {error}"
            )),
        }
    }
}

/// A sink that forwards progress to the agent, in order, under the agent's own token.
fn progress_sink(
    ctx: &RequestContext<RoleServer>,
    token: rmcp::model::ProgressToken,
) -> warden_executor::ProgressSink {
    let peer = ctx.peer.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, Option<f64>, Option<String>)>();
    tokio::spawn(async move {
        // Ends when the sink (and so the sender) is dropped at the end of the call.
        while let Some((progress, total, message)) = rx.recv().await {
            let mut n = rmcp::model::ProgressNotificationParam::new(token.clone(), progress);
            n.total = total;
            n.message = message;
            if peer.notify_progress(n).await.is_err() {
                break;
            }
        }
    });
    Arc::new(move |p, t, m| {
        let _ = tx.send((p, t, m));
    })
}

fn escalation_text(e: Option<&warden_core::Escalation>, reason: &str) -> String {
    use warden_core::Escalation as E;
    match e {
        Some(E::Approvers { approvers, role }) => {
            format!("{approvers} approver(s) with role `{role}` must approve")
        }
        Some(E::Humans { approvers }) => format!("{approvers} distinct human(s) must approve"),
        Some(E::Owner { owner }) => format!("the agent's owner `{owner}` must approve"),
        Some(E::Queued { until, .. }) => format!("queued until the tier's window opens at {until}"),
        // The Governor's reason says what is paused (the session or the agent) and why.
        Some(E::SessionPaused { .. }) | None => reason.to_owned(),
    }
}

/// Which credential opened each MCP session: a session is usable only with the credential that
/// opened it.
#[derive(Debug, Default)]
pub struct SessionOwners {
    owners: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

/// Sessions idle this long are forgotten here (rmcp closes them after 5 minutes).
const SESSION_OWNER_IDLE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl SessionOwners {
    /// `Err(())` if `session` belongs to another credential; refreshes it otherwise.
    fn check(&self, session: &str, credential: &str) -> Result<(), ()> {
        let Ok(mut m) = self.owners.lock() else {
            return Err(()); // fail closed
        };
        match m.get_mut(session) {
            Some((owner, _)) if owner != credential => Err(()),
            Some((_, seen)) => {
                *seen = std::time::Instant::now();
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn bind(&self, session: &str, credential: &str) {
        if let Ok(mut m) = self.owners.lock() {
            m.retain(|_, (_, seen)| seen.elapsed() < SESSION_OWNER_IDLE);
            m.insert(
                session.to_owned(),
                (credential.to_owned(), std::time::Instant::now()),
            );
        }
    }
}

/// Authenticates a `/mcp` request by its bearer credential (from `warden agents enroll`) and
/// attaches the caller; anything else is a 401 that says what was wrong. A session opened with
/// one credential answers only to that credential (403 `session.not_yours`).
pub async fn bearer(
    State((app, owners)): State<(AppState, Arc<SessionOwners>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match crate::server::verify_credential(&app, token) {
        Ok(identity) => {
            let credential = identity.credential.clone();
            let asked = req
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // INVARIANT (no session hijack): another credential's session is refused.
            if let Some(sid) = &asked {
                if owners.check(sid, &credential).is_err() {
                    return (
                        StatusCode::FORBIDDEN,
                        axum::Json(serde_json::json!({
                            "error": "this MCP session was opened with another credential",
                            "rule": "session.not_yours",
                        })),
                    )
                        .into_response();
                }
            }
            let session = format!("mcp:{credential}");
            req.extensions_mut()
                .insert(Arc::new(McpCaller { identity, session }));
            let response = next.run(req).await;
            if asked.is_none() {
                if let Some(sid) = response
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                {
                    owners.bind(sid, &credential);
                }
            }
            response
        }
        Err((status, rule, why)) => {
            let mut r = (
                status,
                axum::Json(serde_json::json!({ "error": why, "rule": rule })),
            )
                .into_response();
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"warden\""),
                );
            }
            r
        }
    }
}

/// The `/mcp` routes: Streamable HTTP behind the bearer check.
pub fn router(
    app: AppState,
    executor: Arc<Executor>,
    max_body: usize,
    allowed_hosts: Option<Vec<String>>,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut config = StreamableHttpServerConfig::default();
    config.max_request_body_bytes = max_body;
    if let Some(hosts) = allowed_hosts {
        config = config.with_allowed_hosts(hosts);
    }
    let front = McpFront::http(app.clone(), executor);
    let service = StreamableHttpService::new(
        move || Ok(front.fresh()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(
            (app, Arc::new(SessionOwners::default())),
            bearer,
        ))
}
