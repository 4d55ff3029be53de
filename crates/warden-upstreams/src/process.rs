//! `warden process-server`: the MCP server behind a manifest's `process` tools (INV-004,
//! INV-012). The Executor starts it like any sandboxed stdio upstream, so it and every program
//! it runs are inside that upstream's sandbox; each call runs one fixed program with arguments
//! filled from the call's arguments — each template element stays one argument, nothing goes
//! through a shell, and a value that stands alone may not start with `-` (it cannot become an
//! option).

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::io::AsyncReadExt as _;
use warden_manifest::raw::RawProcessTool;
use warden_manifest::upstream::{parse_arg_template, ArgPart};

/// Most output kept from a run (stdout); the rest is cut with a note.
const MAX_OUTPUT: usize = 1 << 20;
/// Most of stderr kept for an error result.
const MAX_STDERR: usize = 4 << 10;
/// Longest one run may take (the Executor's own call timeout usually ends it first, by
/// cancelling the call).
const MAX_RUN: std::time::Duration = std::time::Duration::from_secs(600);

/// One tool, parsed.
#[derive(Debug, Clone)]
struct ProcessTool {
    program: String,
    args: Vec<Vec<ArgPart>>,
    description: String,
}

/// The process server.
#[derive(Debug, Clone)]
pub struct ProcessServer {
    tools: Arc<BTreeMap<String, ProcessTool>>,
}

impl ProcessServer {
    /// A server for the tools in `spec` (the JSON the manifest's validation wrote).
    ///
    /// # Errors
    /// [`ServeError`](crate::ServeError): a spec that does not parse.
    pub fn new(spec: &str) -> Result<Self, crate::ServeError> {
        let raw: BTreeMap<String, RawProcessTool> =
            serde_json::from_str(spec).map_err(|e| crate::ServeError::Spec(e.to_string()))?;
        let mut tools = BTreeMap::new();
        for (name, t) in raw {
            let args = t
                .args
                .iter()
                .map(|a| parse_arg_template(a))
                .collect::<Result<Vec<_>, _>>()?;
            tools.insert(
                name,
                ProcessTool {
                    program: t.program,
                    args,
                    description: t.description.unwrap_or_default(),
                },
            );
        }
        Ok(ProcessServer {
            tools: Arc::new(tools),
        })
    }
}

/// The argument vector for one call.
///
/// # Errors
/// A missing or unusable argument, named.
fn argv(t: &[Vec<ArgPart>], args: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(t.len());
    for parts in t {
        let mut s = String::new();
        for p in parts {
            match p {
                ArgPart::Literal(l) => s.push_str(l),
                ArgPart::Param(name) => {
                    let v = match args.get(name) {
                        Some(Value::String(v)) => v.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(Value::Bool(b)) => b.to_string(),
                        Some(_) => {
                            return Err(format!(
                                "argument `{name}` must be a string, number or boolean"
                            ))
                        }
                        None => return Err(format!("argument `{name}` is missing")),
                    };
                    if v.contains('\0') {
                        return Err(format!("argument `{name}` contains NUL"));
                    }
                    s.push_str(&v);
                }
            }
        }
        // INVARIANT (INV-012): an element that starts with a call's value cannot become an
        // option (`{file}.txt` with `--output=/x` would).
        if let (Some(ArgPart::Param(name)), true) = (parts.first(), s.starts_with('-')) {
            return Err(format!(
                "argument `{name}` starts with `-`: it could be read as an option"
            ));
        }
        out.push(s);
    }
    Ok(out)
}

fn params_of(t: &ProcessTool) -> Vec<String> {
    let mut names: Vec<String> = t
        .args
        .iter()
        .flatten()
        .filter_map(|p| match p {
            ArgPart::Param(n) => Some(n.clone()),
            ArgPart::Literal(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn listed(name: &str, t: &ProcessTool) -> Tool {
    let params = params_of(t);
    let properties: Map<String, Value> = params
        .iter()
        .map(|p| {
            (
                p.clone(),
                json!({ "type": ["string", "number", "boolean"] }),
            )
        })
        .collect();
    let schema = json!({ "type": "object", "properties": properties, "required": params });
    let schema = match schema {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Tool::new(name.to_owned(), t.description.clone(), schema)
}

/// Reads at most `cap` bytes, then drains the rest; whether it was cut.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R, cap: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut cut = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                let take = n.min(room);
                out.extend_from_slice(buf.get(..take).unwrap_or_default());
                cut |= take < n;
            }
        }
    }
    (out, cut)
}

/// Kills a run's whole process group (its children and their children too).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn run(
    t: &ProcessTool,
    argv: Vec<String>,
    cancel: tokio_util::sync::CancellationToken,
) -> CallToolResponse {
    let mut cmd = tokio::process::Command::new(&t.program);
    cmd.args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run `{}`: {e}", t.program)),
    };
    let pid = child.id();
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pid);
        return fail("no output pipes");
    };
    let all = async {
        tokio::join!(
            read_capped(out, MAX_OUTPUT),
            read_capped(err, MAX_STDERR),
            child.wait()
        )
    };
    // INVARIANT: a run ends when its call is cancelled or runs too long — with everything it
    // started (a grandchild holding the pipes would otherwise keep the call open).
    let ((stdout, cut), (stderr, _), status) = tokio::select! {
        r = all => r,
        () = cancel.cancelled() => {
            kill_group(pid);
            return fail("cancelled: the run and everything it started were killed");
        }
        () = tokio::time::sleep(MAX_RUN) => {
            kill_group(pid);
            return fail(format!("ran over {}s: killed with everything it started", MAX_RUN.as_secs()));
        }
    };
    // The program is done; anything it left running in its group goes too.
    kill_group(pid);
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    if cut {
        text.push_str(&format!("\n[output cut at {MAX_OUTPUT} bytes]"));
    }
    match status {
        Ok(s) if s.success() => CallToolResult::success(vec![ContentBlock::text(text)]).into(),
        Ok(s) => fail(format!(
            "`{}` ended with {s}\n{text}{}",
            t.program,
            String::from_utf8_lossy(&stderr)
        )),
        Err(e) => fail(format!("waiting for `{}`: {e}", t.program)),
    }
}

use crate::demo::fail;

impl ServerHandler for ProcessServer {
    fn get_info(&self) -> ServerConfig {
        crate::demo::server_info("warden-process")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            self.tools.iter().map(|(n, t)| listed(n, t)).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(t) = self.tools.get(request.name.as_ref()) else {
            return Err(McpError::invalid_params(
                format!("unknown tool `{}`", request.name),
                None,
            ));
        };
        let args = request.arguments.unwrap_or_default();
        Ok(match argv(&t.args, &args) {
            Ok(argv) => run(t, argv, ctx.ct.clone()).await,
            Err(e) => fail(e),
        })
    }
}

/// Serves the process tools of `spec` over stdin/stdout until the client closes.
///
/// # Errors
/// A bad spec, or the handshake's error.
pub async fn serve_stdio(spec: &str) -> Result<(), crate::ServeError> {
    let server = ProcessServer::new(spec)?;
    let service = rmcp::ServiceExt::serve(server, rmcp::transport::io::stdio())
        .await
        .map_err(|e| crate::ServeError::Handshake(e.to_string()))?;
    let _ = service.waiting().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(args: &[&str]) -> Vec<Vec<ArgPart>> {
        args.iter()
            .map(|a| parse_arg_template(a).unwrap())
            .collect()
    }

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn each_element_stays_one_argument_and_nothing_is_a_shell() {
        let t = tpl(&["-l", "{path}", "--label={name}-x"]);
        let a = argv(
            &t,
            &map(json!({"path": "a b; rm -rf / $(id)", "name": "-n"})),
        )
        .unwrap();
        assert_eq!(a, vec!["-l", "a b; rm -rf / $(id)", "--label=-n-x"]);
        let n = argv(&tpl(&["{n}"]), &map(json!({"n": 42}))).unwrap();
        assert_eq!(n, vec!["42"]);
    }

    #[test]
    fn bad_arguments_are_refused_by_name() {
        let t = tpl(&["{path}"]);
        let e = argv(&t, &map(json!({"path": "--output=/etc/passwd"}))).unwrap_err();
        assert!(e.contains("`path` starts with `-`"), "{e}");
        // Glued to text after it, still the start of the element: refused.
        let e = argv(&tpl(&["{file}.txt"]), &map(json!({"file": "--output=/x"}))).unwrap_err();
        assert!(e.contains("`file` starts with `-`"), "{e}");
        // After a fixed prefix it is only a value.
        assert_eq!(
            argv(&tpl(&["--name={v}"]), &map(json!({"v": "-x"}))).unwrap(),
            vec!["--name=-x"]
        );
        let e = argv(&t, &map(json!({}))).unwrap_err();
        assert!(e.contains("`path` is missing"), "{e}");
        let e = argv(&t, &map(json!({"path": {"a": 1}}))).unwrap_err();
        assert!(e.contains("string, number or boolean"), "{e}");
        let e = argv(&t, &map(json!({"path": "a\u{0}b"}))).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
    }

    #[test]
    fn templates_are_parsed_strictly() {
        assert_eq!(
            parse_arg_template("--x={a_1}.{b}").unwrap(),
            vec![
                ArgPart::Literal("--x=".into()),
                ArgPart::Param("a_1".into()),
                ArgPart::Literal(".".into()),
                ArgPart::Param("b".into())
            ]
        );
        for bad in ["{", "}", "{}", "{A}", "{a b}", "x}{y"] {
            assert!(parse_arg_template(bad).is_err(), "{bad}");
        }
    }
}
