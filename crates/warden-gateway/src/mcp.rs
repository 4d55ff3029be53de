//! The MCP front-end (Interceptor): Streamable HTTP at `/mcp`, and stdio for one agent.
//!
//! An agent connected here can only *propose*: `tools/call` becomes a [`Proposal`], the Governor
//! decides, the decision is recorded, and only an allowed call gets a grant, which the Executor
//! redeems itself before anything reaches an upstream. `tools/list` shows each agent only the
//! tools it may call. Denials and escalations are tool results with `isError: true` that say
//! why — never a "tool not found" for a tool that exists.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, GetPromptRequestParams, GetPromptResponse, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use std::sync::Arc;
use warden_core::sessions::SessionNotice;
use warden_core::trace::TraceParent;
use warden_core::{ActionKind, Verdict};
use warden_runtime::governed::ProgressSink;
use warden_runtime::Answer;
use warden_runtime::{Call, Caller, Outcome, Runtime};

pub use crate::mcp_changes::wanted as lists_wanted;
pub use crate::mcp_client::severity;
use crate::mcp_rounds::{Round, Rounds};
use crate::mcp_sessions::{Limits, OpenError, Refused, Sessions};

/// Largest MCP request body accepted on `/mcp` by default.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

/// Who a connection speaks for: set by [`gate`] per HTTP request, fixed for stdio.
#[derive(Debug, Clone)]
pub struct McpCaller {
    /// The authenticated caller.
    pub caller: Caller,
    /// Its session: the `Mcp-Session-Id` Warden issued, or `mcp:<credential>` for a request
    /// outside any session.
    pub session: String,
    /// Whether `session` is one Warden issued (and keeps in [`Sessions`]).
    pub issued: bool,
}

/// The one agent a stdio connection speaks for (no `Debug`: it holds the bearer token).
struct Fixed {
    /// Its credential, verified again on every request (a revocation applies mid-session).
    token: String,
    session: String,
    /// Whether list changes are told to this connection's client already.
    telling: std::sync::atomic::AtomicBool,
}

/// The MCP server handler. Over HTTP, rmcp makes one per request (it serves statelessly) and
/// the sessions are [`Sessions`]; over stdio there is one for the connection.
#[derive(Clone)]
pub struct McpFront {
    app: Runtime,
    fixed: Option<Arc<Fixed>>,
    /// Over HTTP: the open sessions, where calls in flight are registered for cancellation.
    sessions: Option<Arc<Sessions>>,
    /// Over stdio: the connection's session keys, whose per-session sandbox runners end with
    /// it.
    ended: Option<Arc<SessionEnd>>,
    /// Over stdio: the least severe log level the client asked for (`logging/setLevel`).
    log_level: crate::mcp_client::LogLevel,
    /// Calls waiting for a 2026-07-28 client's next round.
    rounds: Arc<Rounds>,
    /// Over stdio: the resources the client subscribed to (`resources/subscribe`).
    subscribed:
        Arc<std::sync::Mutex<std::collections::HashMap<String, warden_runtime::Subscription>>>,
    /// Over HTTP in a fleet: this instance.
    here: Option<Arc<crate::mcp_forward::Here>>,
}

/// When the stdio connection's handler goes, its per-session sandbox runners are destroyed.
struct SessionEnd {
    runtime: Runtime,
    keys: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl SessionEnd {
    fn new(runtime: &Runtime) -> Arc<Self> {
        Arc::new(SessionEnd {
            runtime: runtime.clone(),
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
            self.runtime.end_session(&k);
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
    /// A handler for HTTP, where each request carries its caller and session (see [`gate`]).
    #[must_use]
    pub fn http(app: Runtime, sessions: Arc<Sessions>) -> Self {
        McpFront {
            app,
            fixed: None,
            sessions: Some(sessions),
            ended: None,
            log_level: Arc::default(),
            rounds: Arc::default(),
            subscribed: Arc::default(),
            here: None,
        }
    }

    /// A handler for stdio, speaking for the agent of `credential` (verified now, and again on
    /// every request). The session is fresh for each connection.
    ///
    /// # Errors
    /// The [`Refusal`](warden_runtime::caller::Refusal) of the credential, or of a session id
    /// that could not be drawn.
    pub fn stdio(app: Runtime, credential: &str) -> Result<Self, warden_runtime::caller::Refusal> {
        let caller = app.authenticate(Some(credential))?;
        let id =
            warden_runtime::caller::random_id().ok_or_else(|| warden_runtime::caller::Refusal {
                kind: warden_runtime::caller::RefusalKind::Internal,
                rule: "session.no_randomness",
                why: "no randomness for a session id".into(),
            })?;
        let session = format!("stdio:{}:{id}", caller.credential());
        Ok(McpFront {
            ended: Some(SessionEnd::new(&app)),
            app,
            fixed: Some(Arc::new(Fixed {
                token: credential.to_owned(),
                session,
                telling: std::sync::atomic::AtomicBool::new(false),
            })),
            sessions: None,
            log_level: Arc::default(),
            rounds: Arc::default(),
            subscribed: Arc::default(),
            here: None,
        })
    }

    /// The agent's client, for what an upstream asks of it while serving the call (a client on
    /// an earlier revision than 2026-07-28): over stdio, on its connection; over HTTP, on the
    /// call's stream with the reply POSTed back, in a session Warden issued (outside one there
    /// is nowhere to send a reply, and the upstream's request is refused and recorded).
    fn client_side(
        &self,
        ctx: &RequestContext<RoleServer>,
        session: &str,
        issued: bool,
    ) -> Option<Arc<dyn warden_runtime::ClientSide>> {
        if self.fixed.is_some() {
            let level = self.log_level.lock().ok().and_then(|l| *l);
            return Some(Arc::new(crate::mcp_client::PeerClient {
                peer: ctx.peer.clone(),
                capabilities: ctx.client_capabilities(),
                level,
            }));
        }
        let sessions = self.sessions.as_ref().filter(|_| issued)?;
        Some(Arc::new(crate::mcp_client::HttpClient {
            peer: ctx.peer.clone(),
            sessions: Arc::clone(sessions),
            session: session.to_owned(),
            capabilities: sessions.client(session),
            next_id: Arc::default(),
            here: self.here.clone(),
        }))
    }

    /// Whether the caller of `ctx` may still be told things later (updates, list changes): its
    /// credential — the stdio one, or the bearer token of the HTTP request — checked again each
    /// time.
    fn still_allowed(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Arc<dyn Fn() -> bool + Send + Sync + 'static> {
        let token = match &self.fixed {
            Some(f) => Some(f.token.clone()),
            None => ctx
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|p| bearer(&p.headers))
                .map(str::to_owned),
        };
        let app = self.app.clone();
        // INVARIANT (revocation is immediate): a credential revoked, expired or gone is told
        // nothing more.
        Arc::new(move || {
            token
                .as_deref()
                .is_some_and(|t| app.authenticate(Some(t)).is_ok())
        })
    }

    /// Registers a request of a session Warden issued as one of its calls, cancelled by `token`
    /// when the session ends (`DELETE`, expiry, a revocation); `Ok(None)` outside such a
    /// session.
    ///
    /// # Errors
    /// The session has ended.
    fn track_in_session(
        &self,
        session: &str,
        issued: bool,
        ctx: &RequestContext<RoleServer>,
        token: tokio_util::sync::CancellationToken,
    ) -> Result<Option<crate::mcp_sessions::Tracked>, Refused> {
        match (&self.sessions, issued) {
            (Some(s), true) => {
                let id = serde_json::to_string(&ctx.id).unwrap_or_default();
                s.track(session, id, token).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The caller and session of a request that may start the caller's sandbox runner (a call,
    /// a list, a completion, a subscription): over stdio the runner is noted, to end with the
    /// connection.
    fn caller_in_session(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Caller, String, bool, Option<TraceParent>), McpError> {
        let found = self.caller(ctx)?;
        if let Some(ended) = &self.ended {
            ended.note(warden_core::state::session_key(found.0.agent(), &found.1));
        }
        Ok(found)
    }

    /// The caller, session (and whether Warden issued it) and trace context (the `traceparent` header) of a request.
    fn caller(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Caller, String, bool, Option<TraceParent>), McpError> {
        if let Some(f) = &self.fixed {
            // INVARIANT (revocation is immediate): the stdio credential is checked per request.
            let caller = self
                .app
                .authenticate(Some(&f.token))
                .map_err(|r| McpError::invalid_request(r.to_string(), None))?;
            return Ok((caller, f.session.clone(), false, None));
        }
        let parts = ctx.extensions.get::<axum::http::request::Parts>();
        // INVARIANT (no anonymous agents): the gate middleware put the verified caller here;
        // a request without one is refused, never served as somebody.
        let Some(caller) = parts.and_then(|p| p.extensions.get::<Arc<McpCaller>>()) else {
            return Err(McpError::invalid_request("not authenticated", None));
        };
        let trace = parts.and_then(|p| crate::native_api::traceparent(&p.headers));
        Ok((
            caller.caller.clone(),
            caller.session.clone(),
            caller.issued,
            trace,
        ))
    }
}

/// An upstream's result, in the shape every client revision accepts. An upstream on an older
/// revision sends no `resultType`; a client on 2026-07-28 requires it (`complete` for a plain
/// result). rmcp strips it again for clients that negotiated an older revision, so setting it
/// here is right for both.
fn as_complete(mut result: CallToolResult) -> CallToolResult {
    if result.result_type.is_none() {
        result.result_type = Some(rmcp::model::ResultType::COMPLETE);
    }
    result
}

fn refusal(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

impl ServerHandler for McpFront {
    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, McpError> {
        // Over stdio the session exists before `initialize`: its task is declared here (over
        // HTTP the gate declares it once the session is opened).
        if self.fixed.is_some() {
            if let Some(task) = ctx.meta.get(TASK_META).and_then(|v| v.as_str()) {
                let (caller, session, ..) = self.caller(&ctx)?;
                self.app
                    .declare_task(&caller, &session, task)
                    .await
                    .map_err(|e| McpError::invalid_params(e.to_string(), None))?;
            }
        }
        ctx.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        // A stdio client of an earlier revision is told, unsolicited, when to list again
        // (over HTTP such a client has no stream to be told on).
        if let Some(f) = &self.fixed {
            // Once per connection, however many times the client says it.
            if !f.telling.swap(true, std::sync::atomic::Ordering::SeqCst) {
                crate::mcp_changes::tell_stdio_client(
                    self.app.clone(),
                    f.token.clone(),
                    context.peer,
                );
            }
        }
    }

    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(crate::mcp_client::capabilities());
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
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (caller, ..) = self.caller(&ctx)?;
        // Seed 003: an agent sees only what it may call.
        let tools = self.app.visible_tools(&caller);
        let (tools, next) = crate::mcp_pages::page(tools, cursor(request.as_ref()))?;
        let mut listed = ListToolsResult::with_all_items(tools);
        listed.next_cursor = next;
        Ok(listed)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let asked = Asked {
            kind: ActionKind::Tool,
            name: request.name.to_string(),
            arguments: request.arguments.unwrap_or_default(),
            meta: request.meta.as_ref(),
            resume: request
                .request_state
                .map(|s| (s, request.input_responses.unwrap_or_default())),
        };
        let outcome = match self.govern(asked, &ctx).await? {
            Round::Input(input) => return Ok(input.into()),
            Round::Done(outcome) => outcome,
        };
        Ok(match self.answer(outcome) {
            Ok(Answer::Tool(result)) => as_complete(result).into(),
            Ok(_) => refusal(WRONG_KIND.into()),
            Err(text) => refusal(text),
        })
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let name = self.app.resource_action(&request.uri);
        let mut arguments = serde_json::Map::new();
        arguments.insert("uri".into(), serde_json::Value::String(request.uri));
        let asked = Asked {
            kind: ActionKind::Resource,
            name,
            arguments,
            meta: request.meta.as_ref(),
            resume: request
                .request_state
                .map(|s| (s, request.input_responses.unwrap_or_default())),
        };
        let outcome = match self.govern(asked, &ctx).await? {
            Round::Input(input) => return Ok(input.into()),
            Round::Done(outcome) => outcome,
        };
        match self.answer(outcome) {
            Ok(Answer::Resource(mut r)) => {
                r.result_type
                    .get_or_insert(rmcp::model::ResultType::COMPLETE);
                Ok(r.into())
            }
            Ok(_) => Err(McpError::internal_error(WRONG_KIND, None)),
            Err(text) => Err(refused_request(text)),
        }
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let asked = Asked {
            kind: ActionKind::Prompt,
            name: request.name,
            arguments: request.arguments.unwrap_or_default(),
            meta: request.meta.as_ref(),
            resume: request
                .request_state
                .map(|s| (s, request.input_responses.unwrap_or_default())),
        };
        let outcome = match self.govern(asked, &ctx).await? {
            Round::Input(input) => return Ok(input.into()),
            Round::Done(outcome) => outcome,
        };
        match self.answer(outcome) {
            Ok(Answer::Prompt(mut r)) => {
                r.result_type
                    .get_or_insert(rmcp::model::ResultType::COMPLETE);
                Ok(r.into())
            }
            Ok(_) => Err(McpError::internal_error(WRONG_KIND, None)),
            Err(text) => Err(refused_request(text)),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let (caller, session, ..) = self.caller_in_session(&ctx)?;
        let listed = self.app.visible_resources(&caller, &session).await;
        let (items, next) = crate::mcp_pages::page(listed, cursor(request.as_ref()))?;
        let mut page = ListResourcesResult::with_all_items(items);
        page.next_cursor = next;
        Ok(page)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let (caller, session, ..) = self.caller_in_session(&ctx)?;
        let listed = self.app.visible_resource_templates(&caller, &session).await;
        let (items, next) = crate::mcp_pages::page(listed, cursor(request.as_ref()))?;
        let mut page = ListResourceTemplatesResult::with_all_items(items);
        page.next_cursor = next;
        Ok(page)
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let (caller, session, ..) = self.caller_in_session(&ctx)?;
        let listed = self.app.visible_prompts(&caller, &session).await;
        let (items, next) = crate::mcp_pages::page(listed, cursor(request.as_ref()))?;
        let mut page = ListPromptsResult::with_all_items(items);
        page.next_cursor = next;
        Ok(page)
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let (caller, session, issued, _) = self.caller_in_session(&ctx)?;
        let full = || {
            McpError::invalid_request(
                format!("this connection holds {MAX_SUBSCRIPTIONS} subscriptions already"),
                None,
            )
        };
        let allowed = self.still_allowed(&ctx);
        // Over stdio an update goes to the connection; over HTTP to the session's standalone
        // stream (`GET /mcp`), and the subscription lives as long as the session.
        let sink: warden_runtime::UpdateSink = match &self.sessions {
            None => {
                let held = self.subscribed.lock().map_or(0, |s| s.len());
                if held >= MAX_SUBSCRIPTIONS {
                    return Err(full());
                }
                updates_to_peer(ctx.peer.clone(), allowed)
            }
            Some(sessions) => {
                if !issued {
                    return Err(McpError::invalid_request(
                        "resources/subscribe over HTTP needs an MCP session (initialize first): \
                         updates come on the session's stream (GET /mcp)",
                        None,
                    ));
                }
                let room = sessions.has_room(&session, &request.uri, MAX_SUBSCRIPTIONS);
                match room {
                    Ok(true) => {}
                    Ok(false) => return Err(full()),
                    Err(_) => return Err(session_gone()),
                }
                updates_to_session(
                    sessions,
                    session.clone(),
                    allowed,
                    self.app.session_notices(),
                )
            }
        };
        let subscription = self
            .app
            .subscribe(&caller, &session, &request.uri, sink)
            .await
            .map_err(|e| McpError::invalid_params(e.to_string(), None))?;
        match &self.sessions {
            None => {
                if let Ok(mut s) = self.subscribed.lock() {
                    s.insert(request.uri, subscription);
                }
            }
            Some(sessions) => {
                match sessions.hold(&session, request.uri, subscription, MAX_SUBSCRIPTIONS) {
                    Ok(true) => {}
                    Ok(false) => return Err(full()),
                    Err(_) => return Err(session_gone()),
                }
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let (_, session, ..) = self.caller(&ctx)?;
        if let Some(sessions) = &self.sessions {
            sessions.release(&session, &request.uri);
            // In a fleet the subscription may be held by the instance its subscribe reached.
            if let Some(bus) = self.app.session_notices() {
                crate::mcp_stream::publish(
                    bus,
                    SessionNotice::Unsubscribed {
                        session,
                        uri: request.uri,
                        at_ms: crate::mcp_sessions::now_ms(),
                    },
                );
            }
            return Ok(());
        }
        let gone = self
            .subscribed
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&request.uri));
        drop(gone);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        // List changes as asked; resource updates for URIs some entry admits (which of them
        // this caller may read is decided in `listen`, where the caller is known).
        let mut accepted = rmcp::model::SubscriptionFilter::new();
        crate::mcp_changes::accept(requested, &mut accepted);
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| self.app.admitted_anywhere(u))
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), McpError> {
        let ctx = context.request_context();
        let (caller, session, issued, _) = self.caller_in_session(ctx)?;
        // In a session Warden issued, the listen is one of its calls: ending the session
        // ends it.
        let _tracked = self
            .track_in_session(&session, issued, ctx, ctx.ct.clone())
            .map_err(|_| session_gone())?;
        let mut uris = context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        uris.sort();
        uris.dedup();
        if uris.len() > MAX_SUBSCRIPTIONS {
            return Err(McpError::invalid_params(
                format!("a listen may name at most {MAX_SUBSCRIPTIONS} resources"),
                None,
            ));
        }
        let mut held = Vec::new();
        let allowed = self.still_allowed(ctx);
        for uri in uris {
            let sink = context.sink().clone();
            let allowed = Arc::clone(&allowed);
            let updates: warden_runtime::UpdateSink = Arc::new(move |uri: &str| {
                if !allowed() {
                    return;
                }
                let (sink, uri) = (sink.clone(), uri.to_owned());
                tokio::spawn(async move {
                    let _ = sink.notify_resource_updated(uri).await;
                });
            });
            // The acknowledgment named every URI some entry admits: one this caller may not
            // read (or its upstream refuses) ends the listen with why, rather than going quiet.
            let s = self
                .app
                .subscribe(&caller, &session, &uri, updates)
                .await
                .map_err(|e| McpError::invalid_params(e.to_string(), None))?;
            held.push(s);
        }
        let wants = crate::mcp_changes::wanted(context.accepted());
        let told = async {
            if wants.is_empty() {
                std::future::pending::<()>().await;
            }
            crate::mcp_changes::tell_listener(
                &self.app,
                &caller,
                context.sink(),
                &wants,
                &*allowed,
            )
            .await;
            // Ended because the stream closed (then cancelled soon) or the credential went.
            std::future::pending::<()>().await;
        };
        let ended = tokio::select! {
            () = context.cancelled() => Ok(()),
            () = told => Ok(()),
            () = crate::mcp_changes::revoked(&*allowed) => Err(McpError::invalid_request(
                "the credential of this listen was revoked or expired",
                None,
            )),
        };
        drop(held);
        ended
    }

    #[expect(
        deprecated,
        reason = "logging is deprecated by SEP-2577 and still what clients and upstreams use"
    )]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.caller(&ctx)?;
        // Over stdio the level filters the upstreams' log messages; over HTTP (one front for
        // every client) it is accepted and every level is passed on, during a call only.
        if self.fixed.is_some() {
            crate::mcp_client::set_level(&self.log_level, &request);
        }
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let (caller, session, ..) = self.caller_in_session(&ctx)?;
        self.app
            .complete(&caller, &session, request, ctx.ct.clone())
            .await
            .map_err(|e| match e {
                warden_runtime::catalog::CompletionError::Failed(_)
                | warden_runtime::catalog::CompletionError::Undecided { .. } => {
                    McpError::internal_error(e.to_string(), None)
                }
                _ => McpError::invalid_params(e.to_string(), None),
            })
    }
}

/// One read, get or call as the client asked it.
struct Asked<'r> {
    kind: ActionKind,
    name: String,
    arguments: serde_json::Map<String, serde_json::Value>,
    meta: Option<&'r rmcp::model::RequestMetaObject>,
    /// A retry's `requestState` and `inputResponses` (revision 2026-07-28).
    resume: Option<(String, rmcp::model::InputResponses)>,
}

/// A request of a session that ended while it was served.
fn session_gone() -> McpError {
    McpError::invalid_request("this MCP session has ended", None)
}

/// Where a stdio client's updates go: notifications on its connection, while its credential
/// is good.
fn updates_to_peer(
    peer: rmcp::Peer<RoleServer>,
    allowed: Arc<dyn Fn() -> bool + Send + Sync>,
) -> warden_runtime::UpdateSink {
    Arc::new(move |uri: &str| {
        // INVARIANT (revocation is immediate): a revoked credential is told nothing more.
        if !allowed() {
            return;
        }
        let (peer, uri) = (peer.clone(), uri.to_owned());
        tokio::spawn(async move {
            let _ = peer
                .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri))
                .await;
        });
    })
}

/// Where an HTTP session's updates go: its standalone stream, while its credential is good —
/// here, or, in a fleet, on whichever instance holds it (told through `notices`).
fn updates_to_session(
    sessions: &Arc<Sessions>,
    session: String,
    allowed: Arc<dyn Fn() -> bool + Send + Sync>,
    notices: Option<Arc<dyn warden_core::sessions::NoticeBus>>,
) -> warden_runtime::UpdateSink {
    let sessions = Arc::downgrade(sessions);
    Arc::new(move |uri: &str| {
        // INVARIANT (revocation is immediate): a revoked credential is told nothing more.
        if !allowed() {
            return;
        }
        let Some(s) = sessions.upgrade() else { return };
        if s.notify(&session, crate::mcp_stream::resource_updated(uri)) {
            return;
        }
        if let Some(bus) = &notices {
            crate::mcp_stream::publish(
                Arc::clone(bus),
                SessionNotice::Updated {
                    session: session.clone(),
                    uri: uri.to_owned(),
                },
            );
        }
    })
}

/// Resources one connection (or one listen) may subscribe to at most.
const MAX_SUBSCRIPTIONS: usize = 256;

/// Said when the Executor answers a call of one kind with another's result (never expected).
const WRONG_KIND: &str = "Warden's Executor answered with a result of another kind than was asked";

/// A refused read or get: a JSON-RPC error whose message says why (there is no error result
/// for resources and prompts, as there is for tools).
fn refused_request(text: String) -> McpError {
    McpError::invalid_request(text, None)
}

impl McpFront {
    /// Proposes one action of `kind` on the governed path, with what the request's `_meta`
    /// says (task, approval, wait, trace context, progress), registered for cancellation.
    async fn govern(
        &self,
        asked: Asked<'_>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Round, McpError> {
        let Asked {
            kind,
            name,
            arguments,
            meta: request_meta,
            resume,
        } = asked;
        let (caller, session, issued, trace) = self.caller_in_session(ctx)?;
        // What a parked call is bound to: the kind, name and arguments of the call, so that a
        // retry continues exactly the call it answers for (hashed only for 2026-07-28 clients).
        let parked_as = |arguments: &serde_json::Map<String, serde_json::Value>| {
            format!(
                "{}:{name}:{}",
                kind.as_str(),
                warden_core::canonical::json_digest(&serde_json::Value::Object(arguments.clone()))
            )
        };
        // 2026-07-28 log messages go to the stream of the request serving the call now, when it
        // asked for them.
        let log_to = crate::mcp_rounds::LogTo::new(
            &ctx.peer,
            request_meta
                .and_then(rmcp::model::RequestMetaObject::log_level)
                .or_else(|| ctx.meta.log_level()),
        );
        // A retry with the answer to what the upstream asked continues the call parked for it.
        if let Some((state, answers)) = resume {
            let bound = parked_as(&arguments);
            self.rounds
                .redirect_log(caller.credential(), &bound, &state, log_to);
            let round = self
                .rounds
                .resume(caller.credential(), &bound, &state, answers, &ctx.ct)
                .await;
            return Ok(
                round.unwrap_or_else(|e| Round::Done(Outcome::Invalid { why: e.to_string() }))
            );
        }
        let progress_token = request_meta
            .and_then(rmcp::model::RequestMetaObject::get_progress_token)
            .or_else(|| ctx.meta.get_progress_token());
        // Over HTTP, `notifications/cancelled` comes on a request of its own: a call in a
        // session is registered where that request finds it. Outside a session (clients that
        // keep none cancel by closing the request) nothing is registered.
        let Ok(_tracked) = self.track_in_session(&session, issued, ctx, ctx.ct.clone()) else {
            return Ok(Round::Done(session_ended()));
        };
        // `_meta`: `warden/approval` names the approval this call redeems; `warden/wait`
        // (`false` or seconds) shortens the manifest's wait for an approval.
        // rmcp moves a request's `_meta` into the context; read both.
        let meta = |key: &str| {
            request_meta
                .and_then(|m| m.get(key))
                .or_else(|| ctx.meta.get(key))
                .cloned()
        };
        let approval = meta("warden/approval").and_then(|v| v.as_str().map(str::to_owned));
        let wait = match meta("warden/wait") {
            Some(serde_json::Value::Bool(false)) => Some(0),
            Some(serde_json::Value::Number(n)) => Some(n.as_u64().unwrap_or(0)),
            _ => None,
        };
        // `warden/task`: the user's request, declared by the host before the session has read
        // anything (every revision has `_meta` on a call; `initialize` is not always sent).
        if let Some(serde_json::Value::String(task)) = meta(TASK_META) {
            if let Err(e) = self.app.declare_task(&caller, &session, &task).await {
                return Ok(Round::Done(Outcome::Invalid { why: e.to_string() }));
            }
        }
        // Trace context (SEP-414): the call's `_meta.traceparent`, else the HTTP request's
        // `traceparent` header; a malformed one is ignored.
        let trace = meta("traceparent")
            .and_then(|v| v.as_str().and_then(TraceParent::parse))
            .or(trace);
        let progress = progress_token.map(|t| progress_sink(ctx, t));
        // A client on revision 2026-07-28 cannot be sent requests: what the upstream asks of it
        // comes back as an input-required result, and the call waits for the client's retry.
        let modern = ctx
            .protocol_version()
            .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28);
        if !modern {
            let client = self.client_side(ctx, &session, issued);
            let call = Call {
                session,
                tool: name,
                kind,
                operation: warden_core::Operation::Use,
                arguments: serde_json::Value::Object(arguments),
                trace,
                cancel: ctx.ct.clone(),
                approval: approval.as_deref(),
                wait_secs: wait,
                progress,
                client,
            };
            return Ok(Round::Done(self.app.propose(&caller, call).await));
        }
        let arguments_copy = arguments.clone();
        let (events, received) = tokio::sync::mpsc::channel(1);
        let stop = tokio_util::sync::CancellationToken::new();
        // A call that goes on between rounds stays one of its session's calls: the session's
        // end (`DELETE`, expiry, a revocation) cancels it.
        let Ok(held) = self.track_in_session(&session, issued, ctx, stop.clone()) else {
            return Ok(Round::Done(session_ended()));
        };
        let client: Arc<dyn warden_runtime::ClientSide> =
            Arc::new(crate::mcp_rounds::RoundsClient {
                events: events.clone(),
                capabilities: ctx.client_capabilities(),
                log: log_to,
            });
        let (app, who, tool, cancel) =
            (self.app.clone(), caller.clone(), name.clone(), stop.clone());
        let mut running = Box::pin(async move {
            let call = Call {
                session,
                tool,
                kind,
                operation: warden_core::Operation::Use,
                arguments: serde_json::Value::Object(arguments),
                trace,
                cancel,
                approval: approval.as_deref(),
                wait_secs: wait,
                progress,
                client: Some(client),
            };
            app.propose(&who, call).await
        });
        // Run here until the call ends or the upstream asks; only a call that must wait for
        // the client's next round goes on in a task of its own.
        let mut received = received;
        let first = tokio::select! {
            outcome = &mut running => return Ok(Round::Done(outcome)),
            e = received.recv() => e,
            () = ctx.ct.cancelled() => {
                stop.cancel();
                None
            }
        };
        tokio::spawn(async move {
            let outcome = running.await;
            drop(held);
            let _ = events.send(crate::mcp_rounds::Event::Done(outcome)).await;
        });
        let round = self.rounds.on(
            caller.credential(),
            &parked_as(&arguments_copy),
            first,
            received,
            stop,
        );
        Ok(round.unwrap_or_else(|e| Round::Done(Outcome::Invalid { why: e.to_string() })))
    }

    /// The answer of an outcome that ran, or the text that says why it did not.
    fn answer(&self, outcome: Outcome) -> Result<Answer, String> {
        match outcome {
            Outcome::NotDecided {
                rule,
                why,
                request_id,
            } => Err(format!(
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
                let r = self.app.approval(&r.id).unwrap_or(r);
                let what = escalation_text(decision.escalation.as_ref(), &decision.reason);
                let retry = if r.open() {
                    format!(
                        "Call again with the same arguments once it is approved (optionally \
                         with `_meta` {{\"warden/approval\": \"{}\"}}).",
                        r.id
                    )
                } else {
                    format!("The approval is {}: propose again.", r.status.as_str())
                };
                Err(format!(
                    "This call needs approval before it can run: {what} (rules: {}; request \
                     {request_id}). Approval id: {} ({}, needs {}). It was not run. {retry}",
                    decision.rules.join(", "),
                    r.id,
                    r.status.as_str(),
                    r.requires,
                ))
            }
            Outcome::Decided {
                decision,
                request_id,
                ..
            } if decision.decision == Verdict::Escalate => Err(format!(
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
                if decision.governance_unavailable() {
                    return Err(format!(
                        "Warden governance is unavailable (request {request_id}): {}. Nothing ran; \
                         call again once it is back.",
                        decision.reason
                    ));
                }
                let retry = if decision.rules.iter().any(|r| r == "approval.too_many_open") {
                    "Retry once some of this agent's approval requests are decided or expire."
                } else {
                    "Retrying the same call will not help."
                };
                Err(format!(
                    "Denied by Warden policy (rules: {}; request {request_id}): {}. {retry}",
                    decision.rules.join(", "),
                    decision.reason
                ))
            }
            Outcome::Ran { executed, .. } => Ok(executed.result),
            Outcome::Invalid { why } => Err(format!("Warden refused the call: {why}")),
            Outcome::Failed {
                request_id, error, ..
            } => Err(format!(
                "Warden allowed the call (request {request_id}) but it did not complete: {error}"
            )),
        }
    }
}

/// The cursor a list request names.
fn cursor(request: Option<&PaginatedRequestParams>) -> Option<&str> {
    request.and_then(|r| r.cursor.as_deref())
}

/// A call whose session ended before it could run.
fn session_ended() -> Outcome {
    Outcome::Invalid {
        why: "its MCP session ended before it could run. Open a new session and call again.".into(),
    }
}

/// The bearer token of an `Authorization` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// A sink that forwards progress to the agent, in order, under the agent's own token.
fn progress_sink(
    ctx: &RequestContext<RoleServer>,
    token: rmcp::model::ProgressToken,
) -> ProgressSink {
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
    let who = match e {
        Some(E::Approvers { approvers, role }) => {
            format!("{approvers} approver(s) with role `{role}` must approve")
        }
        Some(E::Humans { approvers }) => format!("{approvers} distinct human(s) must approve"),
        Some(E::Owner { owner }) => format!("the agent's owner `{owner}` must approve"),
        Some(E::Queued { until, .. }) => format!("queued until the tier's window opens at {until}"),
        // The Governor's reason says what is paused (the session or the agent) and why.
        Some(E::SessionPaused { .. }) | None => return reason.to_owned(),
    };
    // The Governor's reason says why (a tier, a trust level, what the arguments carry).
    if reason.is_empty() {
        who
    } else {
        format!("{who} ({reason})")
    }
}

/// What the `/mcp` gate needs: the gateway, the sessions, the body cap.
#[derive(Clone)]
struct Gate {
    app: Runtime,
    sessions: Arc<Sessions>,
    max_body: usize,
    /// This instance in its fleet (`None` alone).
    here: Option<Arc<crate::mcp_forward::Here>>,
}

pub(crate) fn refuse(status: StatusCode, rule: &str, why: String) -> Response {
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

/// Reads a request body of at most `max` bytes that arrives within `wait`.
async fn read_body(
    mut body: axum::body::Body,
    max: usize,
    wait: std::time::Duration,
) -> Result<axum::body::Bytes, Response> {
    use axum::body::HttpBody as _;
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.too_large",
            format!("the request body is larger than the gateway's limit of {max} bytes"),
        )
    };
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    let read = async {
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "request.unreadable",
                    format!("the request body could not be read: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len().saturating_add(data.len()) > max {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(())) => Ok(buf.into()),
        Ok(Err(r)) => Err(r),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "request.too_slow",
            format!(
                "the request body did not arrive within {} ms",
                wait.as_millis()
            ),
        )),
    }
}

/// How long a request body may take to arrive.
const BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the gate acts on itself, read from a JSON-RPC message.
#[derive(Debug, PartialEq, Eq)]
enum Peeked {
    Initialize,
    /// `notifications/cancelled`, with the JSON of the id it names.
    Cancelled(String),
    /// A `tools/call` whose params are of the wrong type: answered `-32602` with its id.
    BadParams {
        id: serde_json::Value,
        why: &'static str,
    },
    /// A JSON-RPC reply (a result or an error, no method), with the JSON of its id: the client
    /// answering a request Warden sent it on a call's stream.
    Reply(String),
    /// A call, read or get that resumes a parked call (`params.requestState`), with its id.
    Resume {
        id: serde_json::Value,
        state: String,
    },
    Other,
}

/// The JSON type of a value, read without keeping it (the contents of an object or array are
/// skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    String,
    Null,
    Other,
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Kind, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Kind::Object)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Kind, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Kind, E> {
                Ok(Kind::String)
            }
            fn visit_unit<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The task an `initialize` declares in its `_meta` (`warden/task`), if it is a string.
fn initialize_task(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Message {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let m: Message = serde_json::from_slice(body).ok()?;
    match m.params?.meta?.remove(TASK_META)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// The `_meta` key on `initialize` that declares the session's task (`docs/ifc.md`).
pub const TASK_META: &str = "warden/task";

fn peek(body: &[u8]) -> Peeked {
    #[derive(serde::Deserialize)]
    struct Message {
        method: Option<String>,
        id: Option<serde_json::Value>,
        params: Option<Params>,
        result: Option<serde::de::IgnoredAny>,
        error: Option<serde::de::IgnoredAny>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        name: Option<Kind>,
        arguments: Option<Kind>,
        /// Any JSON (a string is a state; anything else is rmcp's to refuse), so that a
        /// malformed one does not hide the rest of the message from the gate.
        #[serde(rename = "requestState")]
        request_state: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Cancelled {
        params: CancelledParams,
    }
    #[derive(serde::Deserialize)]
    struct CancelledParams {
        #[serde(rename = "requestId")]
        request_id: serde_json::Value,
    }
    // Anything unreadable is rmcp's to refuse (and the gate's to explain, see `explain`).
    let Ok(m) = serde_json::from_slice::<Message>(body) else {
        return Peeked::Other;
    };
    let resume = |id: Option<serde_json::Value>, params: Option<Params>| match (
        id,
        params.and_then(|p| p.request_state),
    ) {
        (Some(id), Some(serde_json::Value::String(state))) => Peeked::Resume { id, state },
        _ => Peeked::Other,
    };
    match m.method.as_deref() {
        Some("initialize") => Peeked::Initialize,
        Some("notifications/cancelled") => serde_json::from_slice::<Cancelled>(body)
            .ok()
            .map_or(Peeked::Other, |c| {
                Peeked::Cancelled(c.params.request_id.to_string())
            }),
        Some("tools/call") => {
            let (name, arguments) = m
                .params
                .as_ref()
                .map_or((None, None), |p| (p.name, p.arguments));
            let why = if name != Some(Kind::String) {
                "`params.name` must be the tool's name, a string"
            } else if !matches!(arguments, None | Some(Kind::Object | Kind::Null)) {
                "`params.arguments` must be an object"
            } else {
                return resume(m.id, m.params);
            };
            match m.id {
                Some(id) => Peeked::BadParams { id, why },
                None => Peeked::Other,
            }
        }
        Some("resources/read" | "prompts/get") => resume(m.id, m.params),
        None if m.result.is_some() || m.error.is_some() => match m.id {
            Some(id) => Peeked::Reply(id.to_string()),
            None => Peeked::Other,
        },
        _ => Peeked::Other,
    }
}

/// The `capabilities` an `initialize` request declares.
fn initialize_capabilities(body: &[u8]) -> Option<rmcp::model::ClientCapabilities> {
    #[derive(serde::Deserialize)]
    struct Init {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        capabilities: rmcp::model::ClientCapabilities,
    }
    serde_json::from_slice::<Init>(body)
        .ok()
        .map(|i| i.params.capabilities)
}

/// A JSON-RPC error answer.
pub(crate) fn rpc_error(
    status: StatusCode,
    id: &serde_json::Value,
    code: i32,
    message: String,
) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": code, "message": message },
        })),
    )
        .into_response()
}

/// rmcp answers a body it cannot read as a message with a bare 415; say what was wrong instead,
/// as JSON-RPC: a body that is not JSON (or nests deeper than 128) is a parse error (-32700),
/// JSON that is not a JSON-RPC message an invalid request (-32600). Only on this error path is
/// the body parsed whole.
fn explain(response: Response, request_is_json: bool, body: &[u8]) -> Response {
    if response.status() != StatusCode::UNSUPPORTED_MEDIA_TYPE || !request_is_json {
        return response;
    }
    let null = serde_json::Value::Null;
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(e) => rpc_error(
            StatusCode::BAD_REQUEST,
            &null,
            -32700,
            format!("parse error: the body is not JSON: {e}"),
        ),
        Ok(v) => rpc_error(
            StatusCode::BAD_REQUEST,
            v.get("id").unwrap_or(&null),
            -32600,
            "invalid request: the body is not a JSON-RPC 2.0 request or notification that MCP \
             defines (`jsonrpc`, `method`, and `params` of the method's shape)"
                .into(),
        ),
    }
}

/// Authenticates a `/mcp` request by its bearer credential (from `warden agents enroll`),
/// attaches the caller and its session, and keeps the sessions (see [`Sessions`]): an
/// `initialize` opens one (`Mcp-Session-Id` on the answer), `DELETE` ends one,
/// `notifications/cancelled` cancels the call it names. Anything refused is an HTTP error with
/// a JSON body naming the rule: 401 (credential), 403 `session.not_yours`, 404
/// `session.unknown`, 413 (body cap).
async fn gate(State(g): State<Gate>, req: Request, next: Next) -> Response {
    let token = bearer(req.headers());
    let caller = match g.app.authenticate(token) {
        Ok(c) => c,
        Err(r) => {
            let status = crate::native_api::status_of(r.kind);
            return refuse(status, r.rule, r.why);
        }
    };
    let credential = caller.credential().to_owned();
    let asked = match req.headers().get("mcp-session-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(id)) => Some(id.to_owned()),
        Some(Err(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "session.invalid",
                "the Mcp-Session-Id header is not visible ASCII".into(),
            )
        }
    };
    if let Some(id) = &asked {
        let checked = if req.method() == axum::http::Method::DELETE {
            g.sessions.close(id, &credential)
        } else {
            g.sessions.check(id, &credential)
        };
        match checked {
            Err(Refused::NotYours) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "session.not_yours",
                    "this MCP session was opened with another credential".into(),
                )
            }
            Err(Refused::Unknown) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    "session.unknown",
                    "no such MCP session (it ended or expired): initialize a new one".into(),
                )
            }
            Err(Refused::Unavailable) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session.unavailable",
                    "this MCP session is not held by this instance and the fleet's session \
                     directory cannot be reached: try again"
                        .into(),
                )
            }
            Ok(()) if req.method() == axum::http::Method::DELETE => {
                return StatusCode::NO_CONTENT.into_response()
            }
            Ok(()) => {}
        }
    }
    // A client before 2026-07-28 listens on its session's standalone stream.
    if let (Some(id), Some(token), true) = (&asked, token, req.method() == axum::http::Method::GET)
    {
        if crate::mcp_stream::wanted(req.headers()) {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let opener = crate::mcp_stream::Opener {
                app: g.app.clone(),
                sessions: Arc::clone(&g.sessions),
                caller,
                credential,
                token: token.to_owned(),
                session: id.clone(),
            };
            return crate::mcp_stream::respond(opener, accept);
        }
    }
    // A request outside any session (a client that keeps none) is in its credential's.
    let session = asked.clone().unwrap_or_else(|| format!("mcp:{credential}"));
    let mut peeked = Peeked::Other;
    let mut posted = None;
    let mut req = if req.method() == axum::http::Method::POST {
        let (parts, body) = req.into_parts();
        let body = match read_body(body, g.max_body, BODY_WAIT).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        peeked = peek(&body);
        posted = Some(body.clone());
        Request::from_parts(parts, axum::body::Body::from(body))
    } else {
        req
    };
    match &peeked {
        Peeked::Cancelled(request) => {
            g.sessions.cancel(&session, request);
        }
        Peeked::BadParams { id, why } => {
            return rpc_error(StatusCode::OK, id, -32602, format!("invalid params: {why}"))
        }
        // A reply to what an upstream asked through Warden goes to the call waiting for it
        // (rmcp, serving each request on its own, would refuse it).
        Peeked::Reply(id) if asked.is_some() => {
            let message = posted
                .as_deref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .unwrap_or_default();
            if g.sessions.reply(&session, id, message) {
                return StatusCode::ACCEPTED.into_response();
            }
            // Waited for on another instance of the fleet: passed there.
            let elsewhere = g
                .here
                .as_ref()
                .and_then(|h| Some((h, h.replies_elsewhere(&session, id, req.headers())?)));
            if let (Some((here, instance)), Some(body)) = (elsewhere, &posted) {
                return here
                    .forward_reply(&instance, req.headers(), body.clone())
                    .await;
            }
        }
        // A retry of a call parked on another instance of the fleet goes there.
        Peeked::Resume { id, state } => {
            let elsewhere = g.here.as_ref().and_then(|h| {
                h.elsewhere(state, req.headers())
                    .map(|instance| (Arc::clone(h), instance.to_owned()))
            });
            if let (Some((here, instance)), Some(body)) = (elsewhere, &posted) {
                return here
                    .forward_retry(&instance, req.headers(), body.clone(), id)
                    .await;
            }
        }
        Peeked::Initialize | Peeked::Reply(_) | Peeked::Other => {}
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    let agent = caller.agent().to_owned();
    let chain = caller.lineage();
    let task = match (&peeked, &posted) {
        (Peeked::Initialize, Some(body)) => initialize_task(body),
        _ => None,
    };
    let declarer = task.as_ref().map(|_| caller.clone());
    // A call that may wait for an approval keeps the SSE stream and its keep-alives.
    if posted.is_some() && g.app.manifest().approvals.wait_secs == 0 {
        req.extensions_mut().insert(Framing::Json);
    }
    req.extensions_mut().insert(Arc::new(McpCaller {
        caller,
        session,
        issued: asked.is_some(),
    }));
    let mut response = next.run(req).await;
    if let Some(body) = &posted {
        response = explain(response, is_json, body);
    }
    if peeked == Peeked::Initialize && response.status() == StatusCode::OK {
        // What the client can answer, for requests from upstreams on its calls' streams (kept
        // with the session, in the fleet's directory too).
        let client = posted.as_deref().and_then(initialize_capabilities);
        match g.sessions.open(&credential, &agent, chain, client) {
            Ok(id) => {
                // The task the host declared (`_meta` `warden/task`) is the new session's
                // trusted input; one that cannot be kept refuses the session.
                if let (Some(task), Some(c)) = (&task, &declarer) {
                    if let Err(e) = g.app.declare_task(c, &id, task).await {
                        let _ = g.sessions.close(&id, &credential);
                        return refuse(
                            StatusCode::BAD_REQUEST,
                            "session.task_refused",
                            e.to_string(),
                        );
                    }
                }
                if let Ok(v) = header::HeaderValue::from_str(&id) {
                    response.headers_mut().insert("mcp-session-id", v);
                }
            }
            Err(e) => {
                let status = match e {
                    OpenError::NoRandomness | OpenError::Unavailable(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    OpenError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
                };
                return refuse(status, "session.refused", e.to_string());
            }
        }
    }
    response
}

/// How the answer to a POST is framed ([`gate`] chooses; SSE unless it says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `application/json` when the first message is the answer (rmcp falls back to SSE when
    /// progress or another message comes first). Clients read the whole body, so they keep
    /// the connection: the official Python SDK closes an SSE answer as soon as it has the
    /// response, before the stream's end, and so opens a new connection for every call.
    Json,
}

/// The `/mcp` routes: Streamable HTTP behind the [`gate`]. rmcp serves each request on its own
/// (no session of its own); Warden keeps the sessions. A POST is answered with JSON when no
/// call can wait for an approval (the manifest's `approvals.wait_seconds` is 0), and otherwise
/// on an SSE stream, which carries progress and a keep-alive every 15 s while a call runs or
/// waits (so neither the client's read timeout nor a proxy's idle timeout cuts a long wait).
/// Idle sessions are swept every minute.
///
/// In a fleet (a Runtime with a session directory), `advertise` is the URL of this instance's
/// `/mcp` the others reach: a retry of a call parked here that reaches another instance is
/// passed here (see `mcp_forward`). Without it, such a retry is refused with why.
pub fn router(
    app: Runtime,
    max_body: usize,
    allowed_hosts: Option<Vec<String>>,
    advertise: Option<String>,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_max_request_body_bytes(max_body);
    if let Some(hosts) = allowed_hosts {
        config = config.with_allowed_hosts(hosts);
    }
    let ender = app.clone();
    let sessions = Sessions::new(
        Limits::default(),
        Box::new(move |key: &str| ender.end_session(key)),
        app.session_directory(),
    );
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let weak = Arc::downgrade(&sessions);
        let runtime = app.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                // Off the async runtime: in a fleet a sweep may ask the directory.
                let sweeping = Arc::clone(&s);
                let _ =
                    tokio::task::spawn_blocking(move || sweeping.sweep(std::time::Instant::now()))
                        .await;
                // Sessions of a revoked credential or agent end (their requests were refused
                // from the moment of revocation). If `DATA/revoked` cannot be read, every
                // request is refused already; the sessions wait for the next sweep.
                if let Some(revoked) = runtime.revocations() {
                    s.end_revoked(revoked);
                }
            }
        });
    }
    if let Some(bus) = app.session_notices() {
        crate::mcp_stream::relay_notices(bus, Arc::downgrade(&sessions));
    }
    let here = crate::mcp_forward::Here::new(&app, advertise);
    let mut front = McpFront::http(app.clone(), Arc::clone(&sessions));
    if let Some(h) = &here {
        front.rounds = Arc::new(Rounds::of_instance(h.instance.clone()));
        front.here = Some(Arc::clone(h));
    }
    let sse = StreamableHttpService::new(
        move || Ok(front.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let mut json = sse.clone();
    json.config.json_response = true;
    let framings = Arc::new((sse, json));
    axum::Router::new()
        .route(
            "/mcp",
            axum::routing::any(move |req: Request| {
                let framings = Arc::clone(&framings);
                async move {
                    let (sse, json) = &*framings;
                    match req.extensions().get::<Framing>() {
                        Some(Framing::Json) => json.handle(req).await.into_response(),
                        _ => sse.handle(req).await.into_response(),
                    }
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Gate {
                app,
                sessions,
                max_body,
                here,
            },
            gate,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[test]
    fn the_gate_reads_initialize_and_cancellations_and_leaves_the_rest_to_rmcp() {
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;
        assert_eq!(peek(init), Peeked::Initialize);
        let cancel = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":41,"reason":"x"}}"#;
        assert_eq!(peek(cancel), Peeked::Cancelled("41".into()));
        let cancel = br#"{"method":"notifications/cancelled","params":{"requestId":"a\"b"},"jsonrpc":"2.0"}"#;
        assert_eq!(peek(cancel), Peeked::Cancelled(r#""a\"b""#.into()));
        let bad = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":"a"}}"#;
        assert!(
            matches!(peek(bad), Peeked::BadParams { id, why } if id == 7 && why.contains("arguments"))
        );
        // A retry names the state it resumes; a state that is not a string is rmcp's to refuse,
        // and does not hide the rest of the call from the gate.
        let retry = br#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"p","requestState":"wrs_i_1"}}"#;
        assert!(
            matches!(peek(retry), Peeked::Resume { id, state } if id == 3 && state == "wrs_i_1")
        );
        let odd = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","arguments":"a","requestState":5}}"#;
        assert!(matches!(peek(odd), Peeked::BadParams { id, .. } if id == 4));
        let odd = br#"{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"a://b","requestState":{}}}"#;
        assert_eq!(peek(odd), Peeked::Other);
        let bad = br#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":[1],"arguments":{}}}"#;
        assert!(
            matches!(peek(bad), Peeked::BadParams { id, why } if id == "q" && why.contains("name"))
        );
        for other in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[{}]}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":null}}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#,
            br#"{"jsonrpc":"2.0","method":7}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"initialize"}]"#,
            b"{not json",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(
                peek(other),
                Peeked::Other,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // Deep nesting in a skipped value is skipped without recursion (no stack overflow);
        // rmcp, which parses the whole message, refuses it (the e2e test sends one).
        let deep = format!(
            r#"{{"method":"initialize","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(peek(deep.as_bytes()), Peeked::Initialize);
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

    #[tokio::test]
    async fn a_body_that_stalls_is_refused_when_its_time_is_up() {
        // Two bytes, then nothing: the body never ends.
        let stalled =
            futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from("01"))])
                .chain(futures::stream::pending());
        let body = axum::body::Body::from_stream(stalled);
        let wait = std::time::Duration::from_millis(50);
        let r = read_body(body, 10, wait).await.err().unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        // The control: the same bytes, ended, arrive in time.
        let ended = futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from("01"))]);
        let body = axum::body::Body::from_stream(ended);
        assert_eq!(
            read_body(body, 10, wait).await.ok().as_deref(),
            Some(&b"01"[..])
        );
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_whether_declared_or_streamed() {
        let ok = read_body(axum::body::Body::from("0123456789"), 10, WAIT).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"0123456789"[..]));
        // Declared (a known length): refused before reading.
        let r = read_body(axum::body::Body::from("01234567890"), 10, WAIT).await;
        assert_eq!(
            r.err().map(|r| r.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        // Streamed in chunks of unknown total: refused once the chunks pass the cap.
        let chunks = (0..5).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from("0123")));
        let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
        let r = read_body(body, 10, WAIT).await;
        assert_eq!(
            r.err().map(|r| r.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let chunks = (0..2).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from("0123")));
        let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
        assert_eq!(
            read_body(body, 10, WAIT).await.ok().as_deref(),
            Some(&b"01230123"[..])
        );
        // A body that breaks off is a 400 naming it.
        let chunks = [
            Ok(axum::body::Bytes::from("01")),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = axum::body::Body::from_stream(futures::stream::iter(chunks.into_iter()));
        let r = read_body(body, 10, WAIT).await.err().unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
