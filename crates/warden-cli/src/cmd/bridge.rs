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

use anyhow::Context as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResult, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt as _};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where a daemon's progress notifications go: the client's token and its peer, by the token
/// the bridge gave the daemon.
type Sinks = Arc<Mutex<HashMap<rmcp::model::ProgressToken, ProgressTarget>>>;

struct ProgressTarget {
    token: rmcp::model::ProgressToken,
    peer: rmcp::Peer<RoleServer>,
}

/// The bridge's side towards the daemon: relays progress and tool-list changes.
#[derive(Clone, Default)]
struct Upward {
    sinks: Sinks,
    client: Arc<Mutex<Option<rmcp::Peer<RoleServer>>>>,
}

#[expect(
    deprecated,
    reason = "sampling and roots are deprecated by SEP-2577 and still what upstreams send (issue 20)"
)]
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
        let peer = self.client.lock().ok().and_then(|p| p.clone());
        if let Some(peer) = peer {
            let _ = peer.notify_tool_list_changed().await;
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
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_prompts()
                .enable_completions()
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
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.note_client(&ctx);
        let tools = self
            .daemon
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| McpError::internal_error(format!("the Warden daemon: {e}"), None))?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.note_client(&ctx);
        let listed = self.daemon.peer().list_all_resources().await;
        Ok(ListResourcesResult::with_all_items(
            listed.map_err(daemon_error)?,
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        self.note_client(&ctx);
        let listed = self.daemon.peer().list_all_resource_templates().await;
        Ok(ListResourceTemplatesResult::with_all_items(
            listed.map_err(daemon_error)?,
        ))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        self.note_client(&ctx);
        let listed = self.daemon.peer().list_all_prompts().await;
        Ok(ListPromptsResult::with_all_items(
            listed.map_err(daemon_error)?,
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, McpError> {
        Ok(self.read(request, &ctx).await?.into())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, McpError> {
        Ok(self.get(request, &ctx).await?.into())
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
        let client_token = ctx.meta.get_progress_token();
        let mut params = CallToolRequestParams::new(request.name.to_string());
        params.arguments = request.arguments.clone();
        params.meta = warden_meta(request.meta.as_ref(), &ctx);
        let call =
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
        let handle = self
            .daemon
            .peer()
            .send_cancellable_request(call, rmcp::service::PeerRequestOptions::no_options())
            .await
            .map_err(|e| McpError::internal_error(format!("the Warden daemon: {e}"), None))?;
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
            Some(Ok(rmcp::model::ServerResult::CallToolResult(r))) => Ok(complete(r).into()),
            Some(Ok(_)) => Err(McpError::internal_error(
                "the Warden daemon answered with something other than a tool result",
                None,
            )),
            Some(Err(e)) => Err(McpError::internal_error(
                format!("the Warden daemon: {e}"),
                None,
            )),
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

/// Resources, prompts and completions: each the same request to the daemon, which governs
/// it; a refusal comes back as the daemon's own error.
impl Bridge {
    async fn read(
        &self,
        request: ReadResourceRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ReadResourceResult, McpError> {
        let mut params = ReadResourceRequestParams::new(request.uri);
        params.meta = warden_meta(request.meta.as_ref(), ctx);
        let mut r = self
            .daemon
            .peer()
            .read_resource(params)
            .await
            .map_err(daemon_error)?;
        r.result_type
            .get_or_insert(rmcp::model::ResultType::COMPLETE);
        Ok(r)
    }

    async fn get(
        &self,
        request: GetPromptRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<GetPromptResult, McpError> {
        let mut params = GetPromptRequestParams::new(request.name);
        params.arguments = request.arguments;
        params.meta = warden_meta(request.meta.as_ref(), ctx);
        let mut r = self
            .daemon
            .peer()
            .get_prompt(params)
            .await
            .map_err(daemon_error)?;
        r.result_type
            .get_or_insert(rmcp::model::ResultType::COMPLETE);
        Ok(r)
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
    let mut config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.to_owned(),
        );
    config.auth_header = Some(token.to_owned());
    // Results of several MiB arrive as one SSE event.
    config.max_sse_event_size = 64 << 20;
    // The Executor's HTTP client: verified TLS against the system's roots for https, no
    // redirect followed, no environment proxy.
    let http = warden_executor::tls::http_client(url, None)
        .with_context(|| format!("an HTTP client for {url}"))?;
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(http, config);
    let upward = Upward::default();
    let daemon = upward
        .clone()
        .serve(transport)
        .await
        .with_context(|| format!("connecting to the Warden daemon at {url}"))?;
    tracing::info!(daemon = %url, "bridging MCP on stdio to the Warden daemon");
    let client = Arc::clone(&upward.client);
    let bridge = Bridge { daemon, upward };
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
