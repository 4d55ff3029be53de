//! `warden demo-server`: a small MCP server over stdio with harmless tools, the starter
//! manifest's upstream, so that a newcomer's first `warden serve` has something to govern.
//!
//! Tools: `echo` (returns its text), `now` (the current UTC time), `add` (two integers),
//! `repeat` (a text repeated, up to 16 MiB: large results). One prompt, `runner`, which says
//! which process serves it (a number drawn when the process starts): where a sandboxed demo
//! runs one process per agent or tenant, it shows which one a list or a get came from. The
//! Executor starts it like any other stdio upstream (the program name `warden` means the
//! running Warden binary).

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, ListPromptsResult, ListToolsResult, PaginatedRequestParams,
    Prompt, PromptMessage, Role, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

/// Largest `repeat` result.
const MAX_REPEAT_BYTES: u64 = 16 << 20;

/// The demo server.
#[derive(Debug, Clone, Default)]
pub struct Demo;

/// What the `runner` prompt says: which process serves it.
fn runner() -> String {
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let n = PROCESS.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(32)
    });
    format!("served by demo process {n:016x}")
}

fn schema(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "echo",
            "Returns the text it is given.",
            schema(json!({
                "type": "object",
                "properties": { "text": { "type": "string" } },
                "required": ["text"]
            })),
        ),
        Tool::new(
            "now",
            "The current time, UTC, RFC 3339.",
            schema(json!({ "type": "object", "properties": {} })),
        ),
        Tool::new(
            "repeat",
            "Returns `text` repeated `times` times (at most 16 MiB in all).",
            schema(json!({
                "type": "object",
                "properties": {
                    "text": { "type": "string" },
                    "times": { "type": "integer", "minimum": 0 }
                },
                "required": ["text", "times"]
            })),
        ),
        Tool::new(
            "add",
            "Adds two integers.",
            schema(json!({
                "type": "object",
                "properties": { "a": { "type": "integer" }, "b": { "type": "integer" } },
                "required": ["a", "b"]
            })),
        ),
    ]
}

fn text(t: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(t)]).into()
}

/// An error result (a tool that failed, not a protocol error).
pub(crate) fn fail(t: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(t)]).into()
}

/// What a built-in server (demo, process tools) says of itself: tools only.
pub(crate) fn server_info(name: &str) -> ServerConfig {
    let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
    info.server_info = rmcp::model::Implementation::new(name, env!("CARGO_PKG_VERSION"));
    info
}

impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        let mut info = server_info("warden-demo");
        info.capabilities.prompts = ServerCapabilities::builder()
            .enable_prompts()
            .build()
            .prompts;
        info
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let prompt = Prompt::new("runner", Some(runner()), None);
        Ok(ListPromptsResult::with_all_items(vec![prompt]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != "runner" {
            return Err(McpError::invalid_params(
                format!("unknown prompt `{}`", request.name),
                None,
            ));
        }
        let message = PromptMessage::new_text(Role::User, runner());
        Ok(GetPromptResult::new(vec![message]).into())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        Ok(match request.name.as_ref() {
            "echo" => match args.get("text").and_then(Value::as_str) {
                Some(t) => text(t),
                None => fail("`text` must be a string"),
            },
            "repeat" => match (
                args.get("text").and_then(Value::as_str),
                args.get("times").and_then(Value::as_u64),
            ) {
                (Some(t), Some(n)) if (t.len() as u64).saturating_mul(n) <= MAX_REPEAT_BYTES => {
                    text(t.repeat(usize::try_from(n).unwrap_or(0)))
                }
                (Some(_), Some(_)) => fail("the result would exceed 16 MiB"),
                _ => fail("`text` must be a string and `times` a non-negative integer"),
            },
            "now" => text(warden_core::time::rfc3339(crate::now_unix(), 0)),
            "add" => match (
                args.get("a").and_then(Value::as_i64),
                args.get("b").and_then(Value::as_i64),
            ) {
                (Some(a), Some(b)) => match a.checked_add(b) {
                    Some(sum) => text(sum.to_string()),
                    None => fail("the sum overflows"),
                },
                _ => fail("`a` and `b` must be integers"),
            },
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool `{other}`"),
                    None,
                ))
            }
        })
    }
}

/// Serves the demo over stdin/stdout until the client closes.
///
/// # Errors
/// The handshake's error.
pub async fn serve_stdio() -> Result<(), crate::ServeError> {
    let service = rmcp::ServiceExt::serve(Demo, rmcp::transport::io::stdio())
        .await
        .map_err(|e| crate::ServeError::Handshake(e.to_string()))?;
    let _ = service.waiting().await;
    Ok(())
}
