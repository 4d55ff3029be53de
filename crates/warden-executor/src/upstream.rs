//! Connections to upstream MCP servers: stdio children Warden starts, restarts and stops, and
//! Streamable HTTP endpoints. Private to the crate: the only way in is
//! [`crate::Executor::execute`], which redeems a grant first.

use crate::redact::Redactor;
use crate::secrets::Secrets;
use crate::ExecError;
use rmcp::model::Tool;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt as _};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;
use warden_policy::upstream::{Transport, Upstream as Spec};

/// Variables a stdio upstream inherits from the gateway; everything else it gets from `env`.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR", "USER"];

/// Time to start a server and finish its `initialize` and `tools/list`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Least time between two restarts of a server that died.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) type Client = RunningService<RoleClient, ()>;

#[derive(Default)]
struct Conn {
    client: Option<Arc<Client>>,
    tools: Vec<Tool>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// One upstream and its current connection.
pub(crate) struct Upstream {
    pub(crate) spec: Spec,
    secrets: Arc<Secrets>,
    redactor: Arc<Redactor>,
    conn: tokio::sync::Mutex<Conn>,
}

impl Upstream {
    pub(crate) fn new(spec: Spec, secrets: Arc<Secrets>, redactor: Arc<Redactor>) -> Self {
        Upstream {
            spec,
            secrets,
            redactor,
            conn: tokio::sync::Mutex::new(Conn::default()),
        }
    }

    fn unavailable(&self, why: impl Into<String>) -> ExecError {
        ExecError::Unavailable {
            upstream: self.spec.name.clone(),
            why: why.into(),
        }
    }

    /// The live client, starting (or restarting) the server if needed.
    pub(crate) async fn client(&self) -> Result<(Arc<Client>, Vec<Tool>), ExecError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = &conn.client {
            if !c.is_closed() {
                return Ok((Arc::clone(c), conn.tools.clone()));
            }
            tracing::warn!(upstream = %self.spec.name, "upstream connection closed; restarting");
            conn.client = None;
        }
        if let Some(t) = conn.last_attempt {
            if t.elapsed() < RESTART_BACKOFF {
                return Err(self.unavailable(
                    conn.last_error
                        .clone()
                        .unwrap_or_else(|| "restarting".into()),
                ));
            }
        }
        conn.last_attempt = Some(Instant::now());
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok((client, tools))) => {
                tracing::info!(upstream = %self.spec.name, tools = tools.len(), "upstream connected");
                let client = Arc::new(client);
                conn.client = Some(Arc::clone(&client));
                conn.tools = tools.clone();
                conn.last_error = None;
                Ok((client, tools))
            }
            Ok(Err(e)) => {
                conn.last_error = Some(e.clone());
                Err(self.unavailable(e))
            }
            Err(_) => {
                let e = format!("did not start within {}s", CONNECT_TIMEOUT.as_secs());
                conn.last_error = Some(e.clone());
                Err(self.unavailable(e))
            }
        }
    }

    async fn connect(&self) -> Result<(Client, Vec<Tool>), String> {
        let client = match &self.spec.transport {
            Transport::Stdio { program, args } => {
                // `warden` names this Warden binary (the starter's built-in demo server).
                let exe = if program == "warden" {
                    std::env::current_exe()
                        .map_err(|e| format!("cannot find the running Warden binary: {e}"))?
                } else {
                    std::path::PathBuf::from(program)
                };
                let mut cmd = tokio::process::Command::new(exe);
                cmd.args(args).env_clear().kill_on_drop(true);
                for var in INHERITED_ENV {
                    if let Ok(v) = std::env::var(var) {
                        cmd.env(var, v);
                    }
                }
                for (k, t) in &self.spec.env {
                    // INVARIANT (INV-009): secrets go into the child's environment, nowhere else.
                    let v = self.secrets.expand(t).map_err(|e| e.to_string())?;
                    cmd.env(k, v.as_str());
                }
                let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start `{program}`: {e}"))?;
                if let Some(stderr) = stderr {
                    self.log_stderr(stderr);
                }
                ().serve(transport)
                    .await
                    .map_err(|e| format!("MCP handshake with `{program}` failed: {e}"))?
            }
            Transport::Http { url } => {
                return Err(format!(
                    "Streamable HTTP upstreams (`{url}`) are not supported by this build yet"
                ))
            }
        };
        let tools = client
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
        Ok((client, tools))
    }

    /// Forwards the child's stderr to the log, redacted (a server may print its own secrets).
    fn log_stderr(&self, stderr: tokio::process::ChildStderr) {
        let name = self.spec.name.clone();
        let redactor = Arc::clone(&self.redactor);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let none = BTreeSet::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = redactor
                    .redact_str(&line, &none)
                    .map_or(line, |(redacted, _)| redacted);
                tracing::debug!(upstream = %name, "{line}");
            }
        });
    }

    /// Tools the server lists, if it is up (starting it if needed).
    pub(crate) async fn tools(&self) -> Result<Vec<Tool>, ExecError> {
        self.client().await.map(|(_, t)| t)
    }

    /// Stops the server.
    pub(crate) async fn stop(&self) {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.client.take() {
            if let Ok(c) = Arc::try_unwrap(c) {
                let _ = c.cancel().await;
            }
        }
    }
}
