//! `warden stdio --connect URL --credential FILE`: one desktop client's stdio bridged to a
//! running `warden serve`'s `/mcp` (issue 20), so that every window and client shares one
//! gateway, one ledger and one state, where the embedded `warden stdio` is one process per
//! data directory.
//!
//! The bridge decides nothing and holds no key: it is an MCP server on stdio whose every
//! request is the same request to the daemon, made with the agent's credential, and whose
//! answers are the daemon's. Progress comes back under the client's own token; a cancelled call
//! is cancelled at the daemon; Warden's `_meta` keys (`warden/task`, `warden/approval`,
//! `warden/wait`) are passed on, the rest of `_meta` belongs to each hop's own protocol revision.
//!
//! What an upstream asks of the desktop client while serving its call (sampling, elicitation,
//! roots) reaches it in the client's own revision: a client before 2026-07-28 is sent the
//! request the daemon sent the bridge on the call's stream; a 2026-07-28 client's calls go to
//! the daemon on a 2026-07-28 connection of their own, so that the daemon answers
//! `input_required` and the client retries with its answer (`requestState` and
//! `inputResponses` passed on unchanged, the client's own capabilities and log level sent with
//! each call).
//!
//! List changes and resource updates come from the daemon on the standalone stream of the
//! bridge's first session and reach the desktop client in its revision (see
//! `bridge_notices`): unsolicited before 2026-07-28, on a `subscriptions/listen` stream that
//! asked for them on 2026-07-28.

#![expect(
    deprecated,
    reason = "sampling, roots and logging are deprecated by SEP-2577 and still what upstreams and clients use (issue 20)"
)]

use anyhow::Context as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt as _};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::bridge_notices::{Listeners, Notice};
use warden_core::ActionKind;

/// Where a daemon's progress notifications go: the client's token and its peer, by the token
/// the bridge gave the daemon.
type Sinks = Arc<Mutex<HashMap<rmcp::model::ProgressToken, ProgressTarget>>>;

struct ProgressTarget {
    token: rmcp::model::ProgressToken,
    peer: rmcp::Peer<RoleServer>,
}

/// The bridge's side towards the daemon: relays progress and log messages.
#[derive(Clone, Default)]
struct Upward {
    sinks: Sinks,
    client: Arc<Mutex<Option<rmcp::Peer<RoleServer>>>>,
    /// The least severe log level a client before 2026-07-28 asked for (`logging/setLevel`).
    level: Arc<Mutex<Option<rmcp::model::LoggingLevel>>>,
    /// Who hears what the daemon tells outside any request.
    listeners: Arc<Listeners>,
}

impl rmcp::ClientHandler for Upward {
    /// The bridge offers the daemon what a desktop client may answer; whether this one can is
    /// checked when a request comes (the daemon records a refusal).
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut info = rmcp::model::ClientConfig::default();
        info.client_info =
            rmcp::model::Implementation::new("warden-bridge", env!("CARGO_PKG_VERSION"));
        info.capabilities.sampling = Some(rmcp::model::SamplingCapability::default());
        info.capabilities.elicitation = Some(rmcp::model::ElicitationCapability::default());
        info.capabilities.roots = Some(rmcp::model::RootsCapabilities::default());
        info
    }

    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, McpError> {
        let peer = self.client_for(|c| c.sampling.is_some(), "sampling")?;
        until_cancelled(&context, peer.create_message(params)).await
    }

    async fn create_elicitation(
        &self,
        params: rmcp::model::ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, McpError> {
        let peer = self.client_for(|c| c.elicitation.is_some(), "elicitation")?;
        until_cancelled(&context, peer.create_elicitation(params)).await
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, McpError> {
        let peer = self.client_for(|c| c.roots.is_some(), "roots")?;
        until_cancelled(&context, peer.list_roots()).await
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        let target = self.sinks.lock().ok().and_then(|m| {
            m.get(&params.progress_token)
                .map(|t| (t.token.clone(), t.peer.clone()))
        });
        if let Some((token, peer)) = target {
            let mut p = params;
            p.progress_token = token;
            let _ = peer.notify_progress(p).await;
        }
    }

    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        self.listeners.tell(Notice::Changed(ActionKind::Tool)).await;
    }

    async fn on_resource_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.listeners
            .tell(Notice::Changed(ActionKind::Resource))
            .await;
    }

    async fn on_prompt_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.listeners
            .tell(Notice::Changed(ActionKind::Prompt))
            .await;
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.listeners.tell(Notice::Updated(params.uri)).await;
    }

    /// A log message the daemon sent while serving a call (already redacted, and on
    /// 2026-07-28 only for a call whose client asked for them, at its level).
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        let least = self.level.lock().ok().and_then(|l| *l);
        if least.is_some_and(|l| {
            warden_gateway::mcp::severity(params.level) < warden_gateway::mcp::severity(l)
        }) {
            return;
        }
        let peer = self.client.lock().ok().and_then(|p| p.clone());
        if let Some(peer) = peer {
            let _ = peer.notify_logging_message(params).await;
        }
    }
}

/// The desktop client's answer, or an error once the daemon no longer waits for it.
async fn until_cancelled<T>(
    context: &RequestContext<RoleClient>,
    answer: impl std::future::Future<Output = Result<T, rmcp::ServiceError>>,
) -> Result<T, McpError> {
    tokio::select! {
        r = answer => r.map_err(daemon_error),
        () = context.ct.cancelled() => Err(McpError::internal_error("the daemon no longer waits for this answer", None)),
    }
}

impl Upward {
    /// The desktop client, if it declared what `declared` checks (a daemon's request on a call's
    /// stream is passed on to it).
    fn client_for(
        &self,
        declared: impl Fn(&rmcp::model::ClientCapabilities) -> bool,
        what: &str,
    ) -> Result<rmcp::Peer<RoleServer>, McpError> {
        let peer = self.client.lock().ok().and_then(|p| p.clone());
        match peer {
            Some(p) if p.peer_info().is_some_and(|i| declared(&i.capabilities)) => Ok(p),
            _ => Err(McpError::invalid_request(
                format!("the desktop client did not declare {what}"),
                None,
            )),
        }
    }
}

/// The bridge's side towards the desktop client.
struct Bridge {
    daemon: RunningService<RoleClient, Upward>,
    upward: Upward,
    /// Where the daemon is, for the 2026-07-28 connection.
    at: Daemon,
    /// The daemon on revision 2026-07-28, for the calls of a client on that revision (made on
    /// first use, made again after it failed or idled).
    modern: tokio::sync::Mutex<Option<Modern>>,
    /// The next 2026-07-28 connection's generation.
    generations: std::sync::atomic::AtomicU64,
    /// One change to the client's subscriptions at a time (a count and the daemon's answer
    /// move together), and what a client before 2026-07-28 subscribed to (`resources/subscribe`
    /// twice is one subscription).
    subscribing: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// The 2026-07-28 connection to the daemon and the MCP session its requests belong to.
struct Modern {
    service: RunningService<RoleClient, Upward>,
    session: String,
    /// Which connection this is (a failure ends only the connection it happened on).
    generation: u64,
    last_used: std::time::Instant,
}

/// A 2026-07-28 connection unused this long is made again, with a new session, before its
/// next request: the daemon ends a session idle for 30 minutes, and a request in an ended
/// session would fail.
const MODERN_IDLE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How to reach the daemon: its `/mcp` URL and the agent's credential.
struct Daemon {
    url: String,
    token: String,
}

impl Daemon {
    /// The Executor's HTTP client: verified TLS against the system's roots for https, no
    /// redirect followed, no environment proxy.
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let url = &self.url;
        warden_executor::tls::http_client(url, None)
            .with_context(|| format!("an HTTP client for {url}"))
    }

    /// A connection to the daemon with the `initialize` handshake (an MCP session of its own).
    async fn connect(&self, upward: Upward) -> anyhow::Result<RunningService<RoleClient, Upward>> {
        let url = &self.url;
        let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
            self.http()?,
            self.config(),
        );
        upward
            .serve(transport)
            .await
            .with_context(|| format!("connecting to the Warden daemon at {url}"))
    }

    /// A connection to the daemon on revision 2026-07-28 whose requests belong to an MCP
    /// session the bridge opens for them: a desktop client's calls are then in a session of
    /// its own (its information flow, its task), as over the `initialize` connection, not in
    /// the credential's one session shared by every 2026-07-28 client without one.
    async fn connect_2026_07_28(
        &self,
        upward: Upward,
    ) -> anyhow::Result<(RunningService<RoleClient, Upward>, String)> {
        use rmcp::service::ClientServiceExt as _;
        let url = &self.url;
        let session = self.open_session(&self.http()?).await?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::HeaderName::from_static("mcp-session-id"),
            reqwest::header::HeaderValue::from_str(&session)
                .context("the daemon issued a session id that is not a header value")?,
        );
        // Sent by the HTTP client itself: rmcp keeps `Mcp-Session-Id` for its own sessions.
        let http = warden_executor::tls::http_client_sending(url, headers)
            .with_context(|| format!("an HTTP client for {url}"))?;
        let transport =
            rmcp::transport::StreamableHttpClientTransport::with_client(http, self.config());
        let lifecycle = rmcp::service::ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        };
        let service = upward
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .with_context(|| format!("connecting to the Warden daemon at {url} (2026-07-28)"))?;
        Ok((service, session))
    }

    /// Ends an MCP session the bridge opened (best effort: an idle one ends at the daemon
    /// anyway).
    async fn close_session(&self, session: &str) {
        if let Ok(http) = self.http() {
            let _ = http
                .delete(&self.url)
                .bearer_auth(&self.token)
                .header("mcp-session-id", session)
                .send()
                .await;
        }
    }

    /// Opens an MCP session at the daemon (an `initialize` that declares nothing: a 2026-07-28
    /// client's capabilities come with each request) and answers its id.
    async fn open_session(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        let initialize = serde_json::json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": rmcp::model::ProtocolVersion::V_2025_11_25.to_string(),
                "capabilities": {},
                "clientInfo": {"name": "warden-bridge", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let answer = http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(initialize.to_string())
            .send()
            .await
            .with_context(|| {
                format!(
                    "opening an MCP session at the Warden daemon at {}",
                    self.url
                )
            })?;
        let status = answer.status();
        let id = answer
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match id {
            Some(id) if status.is_success() => Ok(id),
            _ => anyhow::bail!(
                "the Warden daemon at {} opened no MCP session (HTTP {status}): {}",
                self.url,
                answer.text().await.unwrap_or_default()
            ),
        }
    }

    fn config(
        &self,
    ) -> rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig {
        let mut config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                self.url.clone(),
            );
        config.auth_header = Some(self.token.clone());
        // Results of several MiB arrive as one SSE event.
        config.max_sse_event_size = 64 << 20;
        config
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_completions()
                .enable_logging()
                .build(),
        );
        info.server_info = rmcp::model::Implementation::new("warden", env!("CARGO_PKG_VERSION"));
        info.instructions = self
            .daemon
            .peer()
            .peer_info()
            .and_then(|i| i.instructions.clone());
        info
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.note_client(&ctx);
        let mut listed = self
            .daemon
            .peer()
            .list_tools(page_of(request))
            .await
            .map_err(daemon_error)?;
        complete_page(&mut listed.result_type);
        Ok(listed)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.note_client(&ctx);
        let mut listed = self
            .daemon
            .peer()
            .list_resources(page_of(request))
            .await
            .map_err(daemon_error)?;
        complete_page(&mut listed.result_type);
        Ok(listed)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        self.note_client(&ctx);
        let mut listed = self
            .daemon
            .peer()
            .list_resource_templates(page_of(request))
            .await
            .map_err(daemon_error)?;
        complete_page(&mut listed.result_type);
        Ok(listed)
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        self.note_client(&ctx);
        let mut listed = self
            .daemon
            .peer()
            .list_prompts(page_of(request))
            .await
            .map_err(daemon_error)?;
        complete_page(&mut listed.result_type);
        Ok(listed)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, McpError> {
        self.read(request, &ctx).await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, McpError> {
        self.get(request, &ctx).await
    }

    async fn complete(
        &self,
        mut params: CompleteRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        // The client's `_meta` belongs to its hop.
        params.meta = None;
        let mut answer = self
            .daemon
            .peer()
            .complete(params)
            .await
            .map_err(daemon_error)?;
        answer
            .result_type
            .get_or_insert(rmcp::model::ResultType::COMPLETE);
        Ok(answer)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        self.note_client(&ctx);
        let modern = on_2026_07_28(&ctx);
        let mut params = CallToolRequestParams::new(request.name.to_string());
        params.arguments = request.arguments.clone();
        params.meta = warden_meta(request.meta.as_ref(), &ctx);
        if modern {
            params.request_state = request.request_state;
            params.input_responses = request.input_responses;
        }
        let call =
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
        match self.forward(call, &ctx, modern).await? {
            rmcp::model::ServerResult::CallToolResult(r) => Ok(complete(r).into()),
            rmcp::model::ServerResult::InputRequiredResult(r) if modern => {
                Ok(rmcp::model::CallToolResponse::InputRequired(r))
            }
            _ => Err(unexpected("a tool result")),
        }
    }

    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let Ok(mut l) = self.upward.level.lock() {
            *l = Some(request.level);
        }
        Ok(())
    }

    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        // A client before 2026-07-28 is told list changes and updates unsolicited.
        self.upward.listeners.tell_unsolicited(context.peer);
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let mut legacy = self.subscribing.lock().await;
        if legacy.contains(&request.uri) {
            return Ok(());
        }
        self.hold(&request.uri).await?;
        legacy.insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let mut legacy = self.subscribing.lock().await;
        if legacy.remove(&request.uri) {
            self.let_go(&request.uri).await;
        }
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        // Everything asked: the daemon decides each resource when the listen subscribes to it
        // (a refusal ends the listen with the daemon's reason).
        Some(requested.clone())
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), McpError> {
        let accepted = context.accepted();
        let uris: std::collections::BTreeSet<String> = accepted
            .resource_subscriptions
            .iter()
            .flatten()
            .cloned()
            .collect();
        if uris.len() > MAX_LISTEN_RESOURCES {
            return Err(McpError::invalid_params(
                format!("a listen may name at most {MAX_LISTEN_RESOURCES} resources"),
                None,
            ));
        }
        let mut held: Vec<String> = Vec::new();
        {
            let _one_at_a_time = self.subscribing.lock().await;
            for uri in &uris {
                if let Err(e) = self.hold(uri).await {
                    for u in &held {
                        self.let_go(u).await;
                    }
                    return Err(e);
                }
                held.push(uri.clone());
            }
        }
        let lists = warden_gateway::mcp::lists_wanted(accepted);
        let listeners = &self.upward.listeners;
        let id = listeners.add(lists, uris, context.sink().clone());
        context.cancelled().await;
        listeners.remove(id);
        let _one_at_a_time = self.subscribing.lock().await;
        for u in &held {
            self.let_go(u).await;
        }
        Ok(())
    }
}

/// Resources one listen may name at most (as at the daemon).
const MAX_LISTEN_RESOURCES: usize = 256;

/// A page from the daemon (whose connection is on an earlier revision, which has no
/// `resultType`) in the shape every client revision accepts: a 2026-07-28 client requires
/// `resultType` (rmcp strips it again for older clients).
fn complete_page(result_type: &mut Option<rmcp::model::ResultType>) {
    result_type.get_or_insert(rmcp::model::ResultType::COMPLETE);
}

/// The page a list request asks for, as the bridge asks the daemon for it: the daemon's
/// pages and cursors pass through (the client's `_meta` belongs to its hop).
fn page_of(request: Option<PaginatedRequestParams>) -> Option<PaginatedRequestParams> {
    request.and_then(|r| r.cursor).map(|cursor| {
        let mut p = PaginatedRequestParams::default();
        p.cursor = Some(cursor);
        p
    })
}

/// Whether the desktop client speaks revision 2026-07-28 or later (it cannot be sent
/// requests: what an upstream asks comes back to it as an input-required result).
fn on_2026_07_28(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28)
}

fn unexpected(what: &str) -> McpError {
    McpError::internal_error(
        format!("the Warden daemon answered with something other than {what}"),
        None,
    )
}

impl Bridge {
    /// The daemon's connection for this client, and which 2026-07-28 connection it is: one of
    /// its own for a client on that revision (made on first use, and again after it failed or
    /// idled), the bridge's first connection otherwise.
    async fn daemon_for(
        &self,
        modern: bool,
    ) -> Result<(rmcp::Peer<RoleClient>, Option<u64>), McpError> {
        if !modern {
            return Ok((self.daemon.peer().clone(), None));
        }
        let mut current = self.modern.lock().await;
        let stale = current.as_ref().is_none_or(|m| {
            m.service.peer().is_transport_closed() || m.last_used.elapsed() >= MODERN_IDLE
        });
        if stale {
            if let Some(old) = current.take() {
                self.at.close_session(&old.session).await;
            }
            let (service, session) = self
                .at
                .connect_2026_07_28(self.upward.clone())
                .await
                .map_err(|e| McpError::internal_error(format!("{e:#}"), None))?;
            let generation = self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *current = Some(Modern {
                service,
                session,
                generation,
                last_used: std::time::Instant::now(),
            });
        }
        let m = current
            .as_mut()
            .ok_or_else(|| McpError::internal_error("no connection to the Warden daemon", None))?;
        m.last_used = std::time::Instant::now();
        Ok((m.service.peer().clone(), Some(m.generation)))
    }

    /// Sends `request` to the daemon and waits for its answer: progress comes back under the
    /// client's token, a cancellation by the client cancels it at the daemon. A 2026-07-28
    /// client's request carries its own capabilities (the daemon asks it only what it
    /// declared) and log level.
    async fn forward(
        &self,
        request: rmcp::model::ClientRequest,
        ctx: &RequestContext<RoleServer>,
        modern: bool,
    ) -> Result<rmcp::model::ServerResult, McpError> {
        let (daemon, generation) = self.daemon_for(modern).await?;
        let mut options = rmcp::service::PeerRequestOptions::no_options();
        if modern {
            let mut meta = rmcp::model::RequestMetaObject::new();
            // INVARIANT (fail-closed): the daemon learns only what the client itself declared.
            meta.set_client_capabilities(ctx.client_capabilities().unwrap_or_default());
            if let Some(level) = ctx.meta.log_level() {
                meta.set_log_level(level);
            }
            options.meta = Some(meta);
        }
        let client_token = ctx.meta.get_progress_token();
        let handle = match daemon.send_cancellable_request(request, options).await {
            Ok(h) => h,
            Err(e) => return Err(self.failed(e, generation).await),
        };
        let upstream_token = handle.progress_token.clone();
        if let (Some(token), Ok(mut sinks)) = (client_token, self.upward.sinks.lock()) {
            sinks.insert(
                upstream_token.clone(),
                ProgressTarget {
                    token,
                    peer: ctx.peer.clone(),
                },
            );
        }
        let (id, peer) = (handle.id.clone(), handle.peer.clone());
        let answer = tokio::select! {
            r = handle.await_response() => Some(r),
            () = ctx.ct.cancelled() => None,
        };
        if let Ok(mut sinks) = self.upward.sinks.lock() {
            sinks.remove(&upstream_token);
        }
        match answer {
            None => {
                let _ = peer
                    .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                        Some(id),
                        Some("cancelled by the client".to_owned()),
                    ))
                    .await;
                Err(McpError::internal_error("cancelled", None))
            }
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(self.failed(e, generation).await),
        }
    }

    /// The daemon's error; when the 2026-07-28 connection `generation` itself failed (its
    /// session ended, the daemon restarted), it is made again for the next request — unless
    /// another request made it again already.
    async fn failed(&self, e: rmcp::ServiceError, generation: Option<u64>) -> McpError {
        if let (Some(g), false) = (generation, matches!(e, rmcp::ServiceError::McpError(_))) {
            let mut current = self.modern.lock().await;
            if current.as_ref().is_some_and(|m| m.generation == g) {
                if let Some(old) = current.take() {
                    self.at.close_session(&old.session).await;
                }
            }
        }
        daemon_error(e)
    }
}

/// The desktop client's subscriptions, held at the daemon (on the bridge's first connection,
/// whose session's stream carries the updates) once per URI. Called under `subscribing`, so a
/// URI counted is one the daemon accepted.
impl Bridge {
    async fn hold(&self, uri: &str) -> Result<(), McpError> {
        if !self.upward.listeners.hold(uri) {
            return Ok(());
        }
        let params = rmcp::model::SubscribeRequestParams::new(uri.to_owned());
        match self.daemon.peer().subscribe(params).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.upward.listeners.release(uri);
                Err(daemon_error(e))
            }
        }
    }

    async fn let_go(&self, uri: &str) {
        if self.upward.listeners.release(uri) {
            let params = rmcp::model::UnsubscribeRequestParams::new(uri.to_owned());
            let _ = self.daemon.peer().unsubscribe(params).await;
        }
    }
}

impl Bridge {
    /// Remembers the client's peer (for notifications the daemon sends).
    fn note_client(&self, ctx: &RequestContext<RoleServer>) {
        if let Ok(mut p) = self.upward.client.lock() {
            p.get_or_insert_with(|| ctx.peer.clone());
        }
    }
}

/// Resources and prompts: each the same request to the daemon, which governs it; a refusal
/// comes back as the daemon's own error.
impl Bridge {
    async fn read(
        &self,
        request: ReadResourceRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, McpError> {
        self.note_client(ctx);
        let modern = on_2026_07_28(ctx);
        let mut params = ReadResourceRequestParams::new(request.uri);
        params.meta = warden_meta(request.meta.as_ref(), ctx);
        if modern {
            params.request_state = request.request_state;
            params.input_responses = request.input_responses;
        }
        let read = rmcp::model::ClientRequest::ReadResourceRequest(
            rmcp::model::ReadResourceRequest::new(params),
        );
        match self.forward(read, ctx, modern).await? {
            rmcp::model::ServerResult::ReadResourceResult(mut r) => {
                r.result_type
                    .get_or_insert(rmcp::model::ResultType::COMPLETE);
                Ok(r.into())
            }
            rmcp::model::ServerResult::InputRequiredResult(r) if modern => {
                Ok(rmcp::model::ReadResourceResponse::InputRequired(r))
            }
            _ => Err(unexpected("a resource")),
        }
    }

    async fn get(
        &self,
        request: GetPromptRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, McpError> {
        self.note_client(ctx);
        let modern = on_2026_07_28(ctx);
        let mut params = GetPromptRequestParams::new(request.name);
        params.arguments = request.arguments;
        params.meta = warden_meta(request.meta.as_ref(), ctx);
        if modern {
            params.request_state = request.request_state;
            params.input_responses = request.input_responses;
        }
        let get = rmcp::model::ClientRequest::GetPromptRequest(rmcp::model::GetPromptRequest::new(
            params,
        ));
        match self.forward(get, ctx, modern).await? {
            rmcp::model::ServerResult::GetPromptResult(mut r) => {
                r.result_type
                    .get_or_insert(rmcp::model::ResultType::COMPLETE);
                Ok(r.into())
            }
            rmcp::model::ServerResult::InputRequiredResult(r) if modern => {
                Ok(rmcp::model::GetPromptResponse::InputRequired(r))
            }
            _ => Err(unexpected("a prompt")),
        }
    }
}

/// Warden's own `_meta` keys as the client sent them (rmcp moves `_meta` into the context).
/// The rest belongs to this hop (the protocol revision's per-request fields, the client's
/// progress token): the bridge speaks its own revision to the daemon and asks for progress
/// with a token of its own.
fn warden_meta(
    request: Option<&rmcp::model::RequestMetaObject>,
    ctx: &RequestContext<RoleServer>,
) -> Option<rmcp::model::RequestMetaObject> {
    let mut meta = serde_json::Map::new();
    for (k, v) in request.iter().flat_map(|m| m.iter()).chain(ctx.meta.iter()) {
        if k.starts_with("warden/") {
            meta.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    (!meta.is_empty()).then(|| rmcp::model::RequestMetaObject(rmcp::model::MetaObject(meta)))
}

/// The daemon's own error (a refusal says why), or why the daemon could not be asked.
fn daemon_error(e: rmcp::ServiceError) -> McpError {
    match e {
        rmcp::ServiceError::McpError(e) => e,
        other => McpError::internal_error(format!("the Warden daemon: {other}"), None),
    }
}

/// A result in the shape every client revision accepts (see the gateway's `as_complete`).
fn complete(mut r: CallToolResult) -> CallToolResult {
    if r.result_type.is_none() {
        r.result_type = Some(rmcp::model::ResultType::COMPLETE);
    }
    r
}

/// Connects to the daemon's `/mcp` at `url` as the agent whose credential is `token`, then
/// serves the desktop client on stdio until either side ends.
///
/// # Errors
/// The daemon cannot be reached or refuses the credential, or stdio fails.
pub async fn run(url: &str, token: &str) -> anyhow::Result<()> {
    let at = Daemon {
        url: url.to_owned(),
        token: token.to_owned(),
    };
    let upward = Upward::default();
    let daemon = at.connect(upward.clone()).await?;
    tracing::info!(daemon = %url, "bridging MCP on stdio to the Warden daemon");
    let client = Arc::clone(&upward.client);
    let bridge = Bridge {
        daemon,
        upward,
        at,
        modern: tokio::sync::Mutex::new(None),
        generations: std::sync::atomic::AtomicU64::new(0),
        subscribing: tokio::sync::Mutex::default(),
    };
    let service = bridge
        .serve(rmcp::transport::io::stdio_pipes())
        .await
        .context("MCP handshake on stdio")?;
    // The desktop client, for the daemon's requests, whatever it asks first.
    if let Ok(mut c) = client.lock() {
        *c = Some(service.peer().clone());
    }
    let _ = service.waiting().await;
    Ok(())
}
