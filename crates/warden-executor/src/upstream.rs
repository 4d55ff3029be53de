//! Connections to upstream MCP servers: stdio children Warden starts, restarts and stops, and
//! Streamable HTTP endpoints. Private to the crate: the only way in is
//! [`crate::Executor::execute`], which redeems a grant first.

use crate::logs_in_order::LogsInOrder;
use crate::redact::Redactor;
use crate::secrets::Secrets;
use crate::ExecError;
use rmcp::model::Tool;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;
use warden_ledger::{Entry, EventRecord, Ledger};
use warden_manifest::upstream::{Transport, Upstream as Spec};

/// Variables an unsandboxed stdio upstream inherits from the gateway; everything else it gets
/// from `env`.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR", "USER"];

/// The `PATH` of a sandboxed server: the system directories its view holds.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Time to start a server and finish its `initialize` and `tools/list`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Calls in flight at once on one HTTP upstream connection.
const HTTP_CONCURRENCY: usize = 256;

/// Lines of a stdio server's stderr kept to explain a failed start.
const STDERR_TAIL: usize = 5;

/// How long a failed start waits for the server's stderr to end before saying why it failed.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// Largest single message accepted from an HTTP upstream.
const MAX_RESULT_BYTES: usize = 64 << 20;

/// Least time between two restarts of a server that died.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// The wait for the ping that checks a connection after a call on it timed out: the
/// upstream's timeout, but at least the first and at most the second.
const PROBE_WAIT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));

/// Milliseconds since the first call of this function in the process (a monotonic clock).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub(crate) type Client = RunningService<RoleClient, Relay>;

/// Whether a connection is over: cancelled, or its transport closed (the server exited or
/// was killed), even if nobody has called it since.
pub(crate) fn gone(c: &Client) -> bool {
    c.is_closed() || c.is_transport_closed()
}

/// A started server: the client, its tools, its executable and hash, its sandbox.
type Connected = (
    Client,
    Vec<Tool>,
    Option<(PathBuf, String)>,
    Option<crate::sandboxed::Running>,
);

/// Where progress of one call goes: `(progress, total, message)`, the message already redacted.
pub type ProgressSink = Arc<dyn Fn(f64, Option<f64>, Option<String>) + Send + Sync>;

/// The client side of an upstream connection: relays the upstream's progress notifications for
/// a call to whoever registered the token Warden gave that call (and drops any other), notes
/// when the upstream says its tools changed, and passes what the upstream asks of the agent's
/// client to the client of the call it serves ([`crate::client_requests`]).
#[derive(Clone, Default)]
pub(crate) struct Relay {
    /// What the upstream may ask of clients, and the calls in flight it may ask for (`None`:
    /// nothing is offered).
    pub(crate) asks: Option<crate::client_requests::Asks>,
    /// Who is subscribed to which of its resources.
    pub(crate) updates: Arc<crate::catalog::Updates>,
    sinks:
        Arc<std::sync::Mutex<std::collections::HashMap<rmcp::model::ProgressToken, ProgressSink>>>,
    // INVARIANT (INV-023): set by `notifications/tools/list_changed`; the tools are listed and
    // their pins checked again before the next call runs or the next tool list is served.
    tools_changed: Arc<std::sync::atomic::AtomicBool>,
    /// The upstream's name and where it announces changes to its lists.
    changes: Option<(String, crate::list_changes::ListChanges)>,
}

impl Relay {
    fn announce(&self, kind: warden_core::ActionKind) {
        if let Some((name, changes)) = &self.changes {
            changes.announce(name, kind);
        }
    }
}

impl Relay {
    /// Registers `sink` for `token` until the guard is dropped.
    pub(crate) fn register(
        &self,
        token: rmcp::model::ProgressToken,
        sink: ProgressSink,
    ) -> RelayGuard {
        if let Ok(mut m) = self.sinks.lock() {
            m.insert(token.clone(), sink);
        }
        RelayGuard {
            relay: self.clone(),
            token,
        }
    }
}

/// Unregisters a progress token when the call ends, however it ends.
pub(crate) struct RelayGuard {
    relay: Relay,
    token: rmcp::model::ProgressToken,
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.relay.sinks.lock() {
            m.remove(&self.token);
        }
    }
}

#[expect(
    deprecated,
    reason = "sampling, roots and logging are deprecated by SEP-2577 and still what upstreams send (issue 20)"
)]
impl rmcp::ClientHandler for Relay {
    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        let sink = self
            .sinks
            .lock()
            .ok()
            .and_then(|m| m.get(&params.progress_token).cloned());
        if let Some(sink) = sink {
            sink(params.progress, params.total, params.message);
        }
    }

    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        self.tools_changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.announce(warden_core::ActionKind::Tool);
    }

    async fn on_resource_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.announce(warden_core::ActionKind::Resource);
    }

    async fn on_prompt_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.announce(warden_core::ActionKind::Prompt);
    }

    fn get_info(&self) -> rmcp::model::ClientConfig {
        use warden_manifest::raw::ClientRequestKind as K;
        let mut info = rmcp::model::ClientConfig::default();
        info.client_info = rmcp::model::Implementation::new("warden", env!("CARGO_PKG_VERSION"));
        // INVARIANT (fail-closed): an upstream is offered only what its manifest block lets it
        // ask of the agent's client.
        let allowed = self.asks.as_ref().map(|a| &a.allowed);
        let offers = |k| allowed.is_some_and(|a| a.contains(&k));
        let caps = &mut info.capabilities;
        if offers(K::Sampling) {
            caps.sampling = Some(rmcp::model::SamplingCapability::default());
        }
        if offers(K::Elicitation) {
            caps.elicitation = Some(rmcp::model::ElicitationCapability::default());
        }
        if offers(K::Roots) {
            caps.roots = Some(rmcp::model::RootsCapabilities::default());
        }
        info
    }

    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        let origin = context
            .extensions
            .get::<rmcp::service::InboundStreamOrigin>();
        match &self.asks {
            Some(a) => a.sample(params, origin).await,
            None => Err(not_offered()),
        }
    }

    async fn create_elicitation(
        &self,
        params: rmcp::model::ElicitRequestParams,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let origin = context
            .extensions
            .get::<rmcp::service::InboundStreamOrigin>();
        match &self.asks {
            Some(a) => a.elicit(params, origin).await,
            None => Err(not_offered()),
        }
    }

    async fn list_roots(
        &self,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, rmcp::ErrorData> {
        let origin = context
            .extensions
            .get::<rmcp::service::InboundStreamOrigin>();
        match &self.asks {
            Some(a) => a.roots(origin).await,
            None => Err(not_offered()),
        }
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.updates.updated(&params.uri);
    }

    // Log messages never reach here: the transport hands them on in order
    // (`crate::logs_in_order`).
}

fn not_offered() -> rmcp::ErrorData {
    rmcp::ErrorData::invalid_request(
        "Warden offers this upstream nothing of the agent's client",
        None,
    )
}

#[derive(Default)]
struct Conn {
    client: Option<Arc<Client>>,
    /// The tools that passed their pins (what may be listed and called), shared: each call
    /// checks its tool against them without copying them.
    tools: Arc<Vec<Tool>>,
    last_attempt: Option<Instant>,
    last_error: Option<ConnectError>,
    /// Unpinned upstreams: the tool pins seen at the first connection of this run.
    first_seen: Option<BTreeMap<String, String>>,
    /// The sandboxed server's cgroup and egress proxy (dropping it kills the tree).
    running: Option<crate::sandboxed::Running>,
}

/// What an upstream is, as observed (for `warden upstreams pin`).
#[derive(Debug, Clone)]
pub struct Observed {
    /// The executable and its hash (stdio upstreams).
    pub executable: Option<(PathBuf, String)>,
    /// Each tool's pin, by upstream tool name.
    pub tools: BTreeMap<String, String>,
}

/// One upstream and its current connection.
pub(crate) struct Upstream {
    pub(crate) spec: Spec,
    /// The roots of an https upstream's `ca_file`, read when it was set up.
    ca: Option<Result<Arc<rustls::RootCertStore>, Arc<crate::tls::TlsError>>>,
    secrets: Arc<Secrets>,
    redactor: Arc<Redactor>,
    /// Where pin violations are recorded (`None` only when observing for `upstreams pin`).
    ledger: Option<Arc<Ledger>>,
    /// Progress relay shared by every connection of this upstream.
    pub(crate) relay: Relay,
    conn: tokio::sync::Mutex<Conn>,
    /// When a call was last answered ([`now_ms`]); read by [`Upstream::probe`].
    last_answer: std::sync::atomic::AtomicU64,
    /// Whether it has ever connected (a later connection is a reconnect).
    connected_once: std::sync::atomic::AtomicBool,
    /// How to sandbox (`None`: a server whose manifest asks for a sandbox does not start).
    sandbox: Option<crate::sandboxed::SandboxConfig>,
    /// Running trees, for the kill switch.
    trees: Arc<crate::sandboxed::Trees>,
    /// The boundary this runner serves, and who is behind it.
    pub(crate) boundary: crate::sandboxed::Boundary,
    /// The calls it serves right now.
    pub(crate) serving: crate::sandboxed::Serving,
    /// What the Executor counts.
    pub(crate) counters: Arc<crate::counters::Counters>,
}

/// The most of one stderr line of an upstream that Warden keeps (the rest is read and dropped).
const STDERR_LINE: usize = 8 * 1024;

/// The next line `reader` gives (without its newline), at most `max` bytes of it kept (the rest
/// of a longer line read and dropped), bytes that are not UTF-8 replaced; `None` at its end.
async fn next_line_lossy<R>(reader: &mut R, max: usize) -> Option<String>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut kept: Vec<u8> = Vec::new();
    let mut read_any = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => return read_any.then(|| String::from_utf8_lossy(&kept).into_owned()),
        };
        read_any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let line_part = newline.unwrap_or(buf.len());
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(buf.get(..line_part.min(room)).unwrap_or_default());
        match newline {
            Some(at) => {
                reader.consume(at.saturating_add(1));
                return Some(String::from_utf8_lossy(&kept).into_owned());
            }
            None => {
                let all = buf.len();
                reader.consume(all);
            }
        }
    }
}

/// The pin of a tool as listed.
pub(crate) fn pin_of(t: &Tool) -> String {
    let input = serde_json::Value::Object((*t.input_schema).clone());
    let output = t
        .output_schema
        .as_ref()
        .map(|o| serde_json::Value::Object((**o).clone()));
    warden_manifest::upstream::tool_pin(&t.name, t.description.as_deref(), &input, output.as_ref())
}

/// Why an upstream could not be started, reached or listed. Kept as the upstream's last error
/// (so it is `Clone`: foreign errors are held as their messages) and given to the agent,
/// redacted, as the reason the upstream is unavailable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// `warden` as a program, and the running binary cannot be found.
    #[error("cannot find the running Warden binary: {0}")]
    SelfNotFound(String),
    /// A program name that is not on `PATH`.
    #[error("`{0}` is not on PATH")]
    NotOnPath(String),
    /// A pinned or hashed file cannot be read.
    #[error("cannot read `{}`: {why}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A pinned file changed (INV-023).
    #[error(
        "`{}` is {got}, pinned {want}: the upstream does not start until re-pinned",
        path.display()
    )]
    PinMismatch {
        /// The file.
        path: PathBuf,
        /// Its hash now.
        got: String,
        /// Its pin.
        want: String,
    },
    /// The manifest sandboxes the upstream and this Warden has no sandbox (INV-006).
    #[error("the manifest sandboxes this upstream, and this Warden has no sandbox configured")]
    NoSandbox,
    /// The sandbox could not be prepared.
    #[error("{0}")]
    Launch(String),
    /// A secret the upstream's environment or headers need did not expand.
    #[error("{0}")]
    Secret(String),
    /// The process could not be started.
    #[error("cannot start `{program}`: {why}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        why: String,
    },
    /// The MCP handshake failed.
    #[error("MCP handshake with `{with}` failed: {why}")]
    Handshake {
        /// The program or URL.
        with: String,
        /// Why (with the server's last stderr lines, redacted later, for stdio).
        why: String,
    },
    /// The https upstream's TLS client could not be set up.
    #[error("{0}")]
    Tls(Arc<crate::tls::TlsError>),
    /// A header name in the manifest is not valid.
    #[error("header `{0}` is not a valid header name")]
    HeaderName(String),
    /// A header's value (after secrets) is not valid.
    #[error("the value of header `{0}` is not a valid header value")]
    HeaderValue(String),
    /// `tools/list` failed.
    #[error("tools/list failed: {0}")]
    ListTools(String),
    /// It did not start in time.
    #[error("did not start within {0}s")]
    Timeout(u64),
    /// The previous process tree survived its kill.
    #[error("the previous server's process tree survived its kill; not restarting")]
    Survived,
    /// A worker task died.
    #[error("{0}")]
    Interrupted(String),
}

impl From<crate::tls::TlsError> for ConnectError {
    fn from(e: crate::tls::TlsError) -> Self {
        ConnectError::Tls(Arc::new(e))
    }
}

/// SHA-256 of a file, `sha256:<hex>`.
///
/// # Errors
/// [`ConnectError::Unreadable`] when the file cannot be read.
pub async fn hash_file(path: &Path) -> Result<String, ConnectError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest as _;
        use std::io::Read as _;
        let unreadable = |e: std::io::Error| ConnectError::Unreadable {
            path: p.clone(),
            why: e.to_string(),
        };
        let mut f = std::fs::File::open(&p).map_err(unreadable)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(unreadable)?;
            if n == 0 {
                break;
            }
            h.update(buf.get(..n).unwrap_or_default());
        }
        let mut out = String::from("sha256:");
        warden_core::canonical::push_hex(&mut out, &h.finalize());
        Ok(out)
    })
    .await
    .map_err(|e| ConnectError::Interrupted(e.to_string()))?
}

/// The file `program` runs: `warden` is this binary; a name without `/` is looked up on `PATH`.
fn resolve(program: &str) -> Result<PathBuf, ConnectError> {
    if program == "warden" {
        return std::env::current_exe().map_err(|e| ConnectError::SelfNotFound(e.to_string()));
    }
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| ConnectError::NotOnPath(program.to_owned()))
}

/// An error and its causes, outermost first, each once.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// What every upstream of one Executor shares: the running sandbox trees (for the kill
/// switch), the counters (for `/metrics`) and where list changes are announced.
#[derive(Debug, Clone, Default)]
pub(crate) struct Common {
    pub(crate) trees: Arc<crate::sandboxed::Trees>,
    pub(crate) counters: Arc<crate::counters::Counters>,
    pub(crate) changes: crate::list_changes::ListChanges,
}

impl Upstream {
    pub(crate) fn new(
        spec: Spec,
        secrets: Arc<Secrets>,
        redactor: Arc<Redactor>,
        ledger: Option<Arc<Ledger>>,
        sandbox: Option<crate::sandboxed::SandboxConfig>,
        common: Common,
        boundary: crate::sandboxed::Boundary,
    ) -> Self {
        let Common {
            trees,
            counters,
            changes,
        } = common;
        let ca = match &spec.transport {
            Transport::Http {
                ca_file: Some(p), ..
            } => Some(crate::tls::load_ca(Path::new(p)).map_err(Arc::new)),
            _ => None,
        };
        let relay = Relay {
            asks: Some(crate::client_requests::Asks {
                upstream: spec.name.clone(),
                allowed: spec.client_requests.clone(),
                calls: Arc::default(),
                redactor: Arc::clone(&redactor),
                ledger: ledger.clone(),
                wait: Duration::from_millis(spec.timeout_ms),
            }),
            changes: Some((spec.name.clone(), changes)),
            ..Relay::default()
        };
        Upstream {
            ca,
            spec,
            secrets,
            redactor,
            relay,
            ledger,
            conn: tokio::sync::Mutex::new(Conn::default()),
            last_answer: std::sync::atomic::AtomicU64::new(0),
            connected_once: std::sync::atomic::AtomicBool::new(false),
            sandbox,
            trees,
            counters,
            boundary,
            serving: crate::sandboxed::Serving::default(),
        }
    }

    /// Whether its server is connected now (waiting at most 100 ms for a start under way).
    pub(crate) async fn serving_now(&self) -> bool {
        match tokio::time::timeout(std::time::Duration::from_millis(100), self.conn.lock()).await {
            Ok(conn) => conn.client.as_ref().is_some_and(|c| !gone(c)),
            Err(_) => false,
        }
    }

    /// Its sandbox's directory (workspace and egress sockets): one per runner.
    fn sandbox_dir(&self, cfg: &crate::sandboxed::SandboxConfig) -> PathBuf {
        cfg.dir.join(&self.spec.name).join(&self.boundary.key)
    }

    /// The sandbox profile its receipts name.
    pub(crate) fn profile(&self) -> String {
        crate::sandboxed::profile(self.sandbox.as_ref(), self.spec.sandbox.as_ref())
    }

    /// Records a pin violation in the ledger (best effort: the tool is withheld either way).
    async fn record(&self, kind: &str, reason: String) {
        // What an upstream lists (a tool's name) may carry a secret: none reaches the log or
        // the ledger.
        let reason = self.redactor.without_secrets(reason);
        tracing::error!(upstream = %self.spec.name, kind, "{reason}");
        let event = Entry::Event(EventRecord::about_gateway(
            kind,
            reason,
            crate::execution::now_ms().div_euclid(1000),
        ));
        let Some(ledger) = &self.ledger else { return };
        match ledger.submit(&event) {
            Ok(t) => {
                if let Err(e) = t.recorded().await {
                    tracing::error!(error = %e, "could not record a pin violation");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not record a pin violation"),
        }
    }

    /// The tools agents may see: those whose pins hold ([`Upstream::admit_pinned`]), each
    /// redacted of the secrets Warden holds.
    async fn admit(&self, conn: &mut Conn, listed: Vec<Tool>) -> Vec<Tool> {
        let admitted = self.admit_pinned(conn, listed).await;
        let mut shown = Vec::with_capacity(admitted.len());
        for tool in admitted {
            match self.shown(tool) {
                Ok(t) => shown.push(t),
                Err(name) => {
                    self.record(
                        "upstream.tool_withheld",
                        format!(
                            "upstream `{}` lists tool `{name}` whose name holds a secret: withheld",
                            self.spec.name
                        ),
                    )
                    .await;
                }
            }
        }
        shown
    }

    /// `tool` as agents see it: an upstream may print a secret it was given into a description
    /// or a schema, which is redacted there (INV-010). A tool whose name would change (or
    /// whose redacted form is no tool) cannot be offered: `Err` with its name.
    fn shown(&self, tool: Tool) -> Result<Tool, String> {
        let name = tool.name.to_string();
        self.redactor
            .without_secrets_in(tool)
            .filter(|t| t.name == name.as_str())
            .ok_or(name)
    }

    /// Keeps the tools whose pins hold; records and withholds the others (INV-023).
    async fn admit_pinned(&self, conn: &mut Conn, listed: Vec<Tool>) -> Vec<Tool> {
        // INVARIANT (INV-023): a name listed twice is ambiguous (which one would run?): every
        // copy is withheld, whatever the pins say.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &listed {
            *counts.entry(t.name.to_string()).or_default() += 1;
        }
        let mut unique = Vec::with_capacity(listed.len());
        for t in listed {
            if counts.get(t.name.as_ref()).copied().unwrap_or(0) > 1 {
                self.record(
                    "upstream.tool_duplicated",
                    format!(
                        "upstream `{}` lists tool `{}` more than once: withheld",
                        self.spec.name, t.name
                    ),
                )
                .await;
            } else {
                unique.push(t);
            }
        }
        let listed = unique;
        let seen: BTreeMap<String, String> = listed
            .iter()
            .map(|t| (t.name.to_string(), pin_of(t)))
            .collect();
        let (expected, how) = match &self.spec.pins {
            Some(p) => (p.tools.clone(), "pinned"),
            None => match &conn.first_seen {
                Some(first) => (first.clone(), "first seen"),
                None => {
                    tracing::warn!(
                        upstream = %self.spec.name,
                        "unpinned upstream: its tools are trusted as first listed in this run (`warden upstreams pin`)"
                    );
                    conn.first_seen = Some(seen.clone());
                    return listed;
                }
            },
        };
        let mut admitted = Vec::new();
        for t in listed {
            let name = t.name.to_string();
            let got = seen.get(&name).cloned().unwrap_or_default();
            match expected.get(&name) {
                Some(want) if *want == got => admitted.push(t),
                Some(want) => {
                    self.record(
                        "upstream.tool_changed",
                        format!(
                            "upstream `{}` tool `{name}` changed its description or schema ({how} {want}, now {got}): withdrawn until re-pinned",
                            self.spec.name
                        ),
                    )
                    .await;
                }
                None => {
                    self.record(
                        "upstream.tool_unpinned",
                        format!(
                            "upstream `{}` lists tool `{name}` ({got}), which is not {how}: withheld until pinned",
                            self.spec.name
                        ),
                    )
                    .await;
                }
            }
        }
        admitted
    }

    fn unavailable(&self, why: impl Into<String>) -> ExecError {
        // The reason reaches the agent: an upstream's or transport's message may quote a
        // secret (a header, an environment value), so it is redacted first.
        let why = self.redactor.without_secrets(why.into());
        ExecError::Unavailable {
            upstream: self.spec.name.clone(),
            why,
        }
    }

    /// The live client if it is connected now (never starts one, never waits).
    pub(crate) fn client_if_connected(&self) -> Option<Arc<Client>> {
        let conn = self.conn.try_lock().ok()?;
        conn.client.as_ref().filter(|c| !gone(c)).cloned()
    }

    /// The live client, starting (or restarting) the server if needed (waiting for a start
    /// already under way).
    pub(crate) async fn client(&self) -> Result<(Arc<Client>, Arc<Vec<Tool>>), ExecError> {
        let mut conn = self.conn.lock().await;
        self.connect_locked(&mut conn).await
    }

    /// A call on this upstream was answered: its connection works.
    pub(crate) fn answered(&self) {
        self.last_answer
            .fetch_max(now_ms(), std::sync::atomic::Ordering::SeqCst);
    }

    /// Checks, after a call on `client` timed out, that the connection still works: when a
    /// ping is not answered within the upstream's timeout (bounded by [`PROBE_WAIT`]) and no
    /// other call was answered meanwhile, the connection ends and the next call makes a new
    /// one (a stdio server is restarted). Calls still in flight on it then fail as "went away".
    ///
    /// A connection can stop working without closing: a Streamable HTTP server that restarted
    /// has forgotten Warden's MCP session, and one that answers that with an error carrying no
    /// request id (as server-everything does, with a 400) leaves every later call unanswered
    /// until it times out. A slow tool on a working connection passes the ping and is kept, and
    /// so is a busy one whose other calls come back; a server that serves one request at a
    /// time and is still busy with the call that timed out fails the ping and is restarted.
    pub(crate) fn probe(self: &Arc<Self>, client: &Arc<Client>) {
        let me = Arc::downgrade(self);
        let client = Arc::downgrade(client);
        let (least, most) = PROBE_WAIT;
        let wait = Duration::from_millis(self.spec.timeout_ms).clamp(least, most);
        tokio::spawn(async move {
            let Some(c) = client.upgrade() else { return };
            let started = now_ms();
            let ping = rmcp::model::ClientRequest::PingRequest(rmcp::model::PingRequest::default());
            let answered = matches!(
                tokio::time::timeout(wait, c.peer().send_request(ping)).await,
                Ok(Ok(_))
            );
            // A runner ended meanwhile is not kept alive by its probe.
            let Some(me) = me.upgrade() else { return };
            let other_answer = me.last_answer.load(std::sync::atomic::Ordering::SeqCst) >= started;
            if answered || other_answer {
                return;
            }
            let mut conn = me.conn.lock().await;
            // Only the connection that failed: a newer one is left alone.
            if conn.client.as_ref().is_some_and(|now| Arc::ptr_eq(now, &c)) {
                tracing::warn!(
                    upstream = %me.spec.name,
                    "a call timed out and the connection did not answer a ping: reconnecting"
                );
                conn.client = None;
                c.cancellation_token().cancel();
            }
        });
    }

    /// The tools now, without waiting: `None` if the server is not up (a start is then begun in
    /// the background, unless one is under way). A slow or hung upstream never delays the tool
    /// lists of the others. When the upstream said its tools changed, they are listed again in
    /// the background, and meanwhile the tools as last checked are given (with the descriptions
    /// their pins vouch for): no call runs before the new listing is checked.
    pub(crate) fn tools_now(self: &Arc<Self>) -> Option<Arc<Vec<Tool>>> {
        let conn = self.conn.try_lock().ok()?;
        let up = conn.client.as_ref().is_some_and(|c| !gone(c));
        let changed = self
            .relay
            .tools_changed
            .load(std::sync::atomic::Ordering::SeqCst);
        let tools = up.then(|| Arc::clone(&conn.tools));
        drop(conn);
        if !up || changed {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                // Only one start at a time; a busy lock means one is under way.
                if let Ok(mut conn) = me.conn.try_lock() {
                    let _ = me.connect_locked(&mut conn).await;
                }
            });
        }
        tools
    }

    async fn connect_locked(
        &self,
        conn: &mut Conn,
    ) -> Result<(Arc<Client>, Arc<Vec<Tool>>), ExecError> {
        if let Some(c) = conn.client.take() {
            if !gone(&c) {
                // INVARIANT (INV-023): tools the upstream says changed are listed again and
                // admitted by their pins before anything is called or listed.
                if !self
                    .relay
                    .tools_changed
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    conn.client = Some(Arc::clone(&c));
                    return Ok((c, Arc::clone(&conn.tools)));
                }
                // INVARIANT (fail-closed): the client stays out of `conn` until its new listing
                // is admitted. Should this future be dropped meanwhile (its call cancelled), the
                // next call starts a new connection, which lists and checks the tools anew.
                match tokio::time::timeout(CONNECT_TIMEOUT, c.list_all_tools()).await {
                    Ok(Ok(listed)) => {
                        conn.tools = Arc::new(self.admit(conn, listed).await);
                        conn.client = Some(Arc::clone(&c));
                        tracing::info!(upstream = %self.spec.name, tools = conn.tools.len(), "upstream tools listed again after it said they changed");
                        return Ok((c, Arc::clone(&conn.tools)));
                    }
                    // Not listed: start afresh (a new connection lists them).
                    _ => {
                        tracing::warn!(upstream = %self.spec.name, "upstream said its tools changed but did not list them; reconnecting")
                    }
                }
            } else {
                tracing::warn!(upstream = %self.spec.name, "upstream connection closed; restarting");
            }
            c.cancellation_token().cancel();
        }
        if let Some(t) = conn.last_attempt {
            if t.elapsed() < RESTART_BACKOFF {
                return Err(self.unavailable(
                    conn.last_error
                        .as_ref()
                        .map_or_else(|| "restarting".into(), ToString::to_string),
                ));
            }
        }
        conn.last_attempt = Some(Instant::now());
        // INVARIANT (fail-closed): the previous tree, if any, is killed before a new one
        // starts; one that survives its kill blocks the restart.
        if let Some(old) = conn.running.take() {
            let gone = tokio::task::spawn_blocking(move || old.stop())
                .await
                .unwrap_or(false);
            if !gone {
                let e = ConnectError::Survived;
                conn.last_error = Some(e.clone());
                return Err(self.unavailable(e.to_string()));
            }
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok((client, listed, _, running))) => {
                let tools = Arc::new(self.admit(conn, listed).await);
                tracing::info!(upstream = %self.spec.name, tools = tools.len(), "upstream connected");
                let reconnected = self
                    .connected_once
                    .swap(true, std::sync::atomic::Ordering::Relaxed);
                let client = Arc::new(client);
                if reconnected {
                    crate::counters::Counters::add(&self.counters.upstream_reconnects);
                    self.resume_after_restart(&client);
                }
                if let (Some(r), Some(sb)) = (&running, &self.spec.sandbox) {
                    crate::sandboxed::watch(
                        self.spec.name.clone(),
                        Arc::downgrade(&client),
                        r.cgroup.clone(),
                        Duration::from_millis(sb.heartbeat_ms),
                        self.ledger.clone(),
                    );
                }
                conn.running = running;
                conn.client = Some(Arc::clone(&client));
                conn.tools = Arc::clone(&tools);
                conn.last_error = None;
                Ok((client, tools))
            }
            Ok(Err(e)) => {
                crate::counters::Counters::add(&self.counters.upstream_connect_failures);
                conn.last_error = Some(e.clone());
                Err(self.unavailable(e.to_string()))
            }
            Err(_) => {
                let e = ConnectError::Timeout(CONNECT_TIMEOUT.as_secs());
                conn.last_error = Some(e.clone());
                Err(self.unavailable(e.to_string()))
            }
        }
    }

    /// After a restart: the new server is subscribed to every resource that still has
    /// subscribers (the old one's subscriptions died with it), and clients are told its lists
    /// may have changed.
    fn resume_after_restart(&self, client: &Arc<Client>) {
        for kind in [
            warden_core::ActionKind::Tool,
            warden_core::ActionKind::Resource,
            warden_core::ActionKind::Prompt,
        ] {
            self.relay.announce(kind);
        }
        let uris = self.relay.updates.uris();
        if uris.is_empty() {
            return;
        }
        let (client, name) = (Arc::clone(client), self.spec.name.clone());
        let redactor = Arc::clone(&self.redactor);
        tokio::spawn(async move {
            for uri in uris {
                #[expect(
                    deprecated,
                    reason = "resources/subscribe is what upstreams on earlier revisions take"
                )]
                let asked = client
                    .peer()
                    .subscribe(rmcp::model::SubscribeRequestParams::new(uri.clone()));
                if let Err(e) = asked.await {
                    let error = redactor.without_secrets(e.to_string());
                    tracing::warn!(upstream = %name, %uri, %error, "could not subscribe the restarted upstream again");
                }
            }
        });
    }

    /// Observes the upstream as it is now (no pins enforced), then stops it.
    pub(crate) async fn observe(&self) -> Result<Observed, ConnectError> {
        let (client, tools, executable, running) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.connect_with(false))
                .await
                .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT.as_secs()))??;
        let _ = client.cancel().await;
        drop(running);
        Ok(Observed {
            executable,
            tools: tools
                .iter()
                .map(|t| (t.name.to_string(), pin_of(t)))
                .collect(),
        })
    }

    async fn connect(&self) -> Result<Connected, ConnectError> {
        self.connect_with(true).await
    }

    /// Starts (stdio) or reaches the server, checking the executable and file pins first when
    /// `enforce`, and lists its tools.
    async fn connect_with(&self, enforce: bool) -> Result<Connected, ConnectError> {
        let mut executable = None;
        let mut running = None;
        let client = match &self.spec.transport {
            Transport::Stdio { program, args } => {
                let exe = resolve(program)?;
                let pins = self.spec.pins.as_ref().filter(|_| enforce);
                if pins.is_some_and(|p| p.executable.is_some()) || !enforce {
                    executable = Some((exe.clone(), hash_file(&exe).await?));
                }
                if let Some(p) = pins {
                    // INVARIANT (INV-023): a pinned server whose files changed does not start.
                    let mut checks: Vec<(PathBuf, &String)> =
                        p.files.iter().map(|(f, h)| (PathBuf::from(f), h)).collect();
                    if let (Some(want), Some((path, _))) = (&p.executable, &executable) {
                        checks.insert(0, (path.clone(), want));
                    }
                    for (path, want) in checks {
                        let got = match &executable {
                            Some((e, h)) if *e == path => h.clone(),
                            _ => hash_file(&path).await?,
                        };
                        if got != *want {
                            let e = ConnectError::PinMismatch {
                                path,
                                got,
                                want: want.clone(),
                            };
                            self.record("upstream.binary_changed", e.to_string()).await;
                            return Err(e);
                        }
                    }
                }
                let mut cmd = match &self.spec.sandbox {
                    None => {
                        let mut cmd = tokio::process::Command::new(&exe);
                        cmd.args(args);
                        cmd
                    }
                    Some(sb) => {
                        // INVARIANT (fail-closed, INV-006): a server the manifest sandboxes
                        // starts only through the sandbox.
                        let cfg = self.sandbox.as_ref().ok_or(ConnectError::NoSandbox)?;
                        let (cmd, r) = crate::sandboxed::launch(
                            cfg,
                            &self.spec.name,
                            &self.sandbox_dir(cfg),
                            sb,
                            &exe,
                            args,
                            crate::sandboxed::Records {
                                ledger: self.ledger.clone(),
                                owner: &self.boundary,
                                serving: &self.serving,
                                counters: &self.counters,
                                redactor: &self.redactor,
                            },
                        )
                        .map_err(|e| {
                            crate::counters::Counters::add(&self.counters.sandbox_failed);
                            ConnectError::Launch(e.to_string())
                        })?;
                        crate::counters::Counters::add(&self.counters.sandbox_started);
                        // Registered before it starts: a kill during the start reaches it.
                        if let Some(cg) = &r.cgroup {
                            self.trees.add(&self.spec.name, &self.boundary.key, cg);
                        }
                        running = Some(r);
                        tokio::process::Command::from(cmd)
                    }
                };
                cmd.env_clear().kill_on_drop(true);
                if self.spec.sandbox.is_some() {
                    // INVARIANT (issue 18): nothing of the gateway's own environment describes
                    // the host inside the sandbox: a fixed PATH of the directories in its view,
                    // its workspace as home, its private /tmp; only the locale is passed on.
                    cmd.env("PATH", SANDBOX_PATH);
                    if let Ok(v) = std::env::var("LANG") {
                        cmd.env("LANG", v);
                    }
                    if let Some(cfg) = &self.sandbox {
                        cmd.env("HOME", self.sandbox_dir(cfg).join("work"));
                    }
                    cmd.env("TMPDIR", "/tmp");
                } else {
                    for var in INHERITED_ENV {
                        if let Ok(v) = std::env::var(var) {
                            cmd.env(var, v);
                        }
                    }
                }
                for (k, t) in &self.spec.env {
                    // INVARIANT (INV-009): secrets go into the child's environment, nowhere else.
                    let v = self
                        .secrets
                        .expand(t)
                        .map_err(|e| ConnectError::Secret(e.to_string()))?;
                    cmd.env(k, v.as_str());
                }
                let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| ConnectError::Spawn {
                        program: program.clone(),
                        why: e.to_string(),
                    })?;
                let last_words = stderr.map(|stderr| self.log_stderr(stderr));
                let transport = LogsInOrder::new(transport, self.relay.asks.clone());
                match Relay::clone(&self.relay).serve(transport).await {
                    Ok(client) => client,
                    Err(e) => {
                        // Why it failed is usually on its stderr (bwrap's or the sandbox
                        // helper's message, a missing interpreter): say it here, not only at
                        // debug level.
                        let said = match last_words {
                            Some(rx) => tokio::time::timeout(STDERR_GRACE, rx)
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .unwrap_or_default(),
                            None => Vec::new(),
                        };
                        let said = if said.is_empty() {
                            String::new()
                        } else {
                            format!("; its stderr ended with: {}", said.join(" | "))
                        };
                        return Err(ConnectError::Handshake {
                            with: program.clone(),
                            why: format!("{e}{said}"),
                        });
                    }
                }
            }
            Transport::Http { url, .. } => {
                // INVARIANT (verified TLS): an https upstream is reached only after its
                // certificate verifies against the system's roots or its `ca_file` (read once,
                // when the upstream was set up).
                let roots = match &self.ca {
                    Some(Ok(roots)) => Some(Arc::clone(roots)),
                    Some(Err(e)) => return Err(ConnectError::Tls(Arc::clone(e))),
                    None => None,
                };
                let http = crate::tls::client_with(url, roots)?;
                let mut config =
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                        url.clone(),
                    )
                    // One connection carries every agent's calls: do not serialise them.
                    .max_concurrent_requests(HTTP_CONCURRENCY);
                config.channel_buffer_capacity = HTTP_CONCURRENCY;
                config.max_sse_event_size = MAX_RESULT_BYTES;
                for (k, t) in &self.spec.headers {
                    // INVARIANT (INV-009): secrets go into the upstream's headers, nowhere else.
                    let v = self
                        .secrets
                        .expand(t)
                        .map_err(|e| ConnectError::Secret(e.to_string()))?;
                    if k.eq_ignore_ascii_case("authorization") {
                        if let Some(token) = v.strip_prefix("Bearer ") {
                            config.auth_header = Some(token.to_owned());
                            continue;
                        }
                    }
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| ConnectError::HeaderName(k.clone()))?;
                    let value = http::HeaderValue::from_str(&v)
                        .map_err(|_| ConnectError::HeaderValue(k.clone()))?;
                    config.custom_headers.insert(name, value);
                }
                let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                    crate::traced_http::TracedClient(http),
                    config,
                );
                let transport = LogsInOrder::new(transport, self.relay.asks.clone());
                Relay::clone(&self.relay)
                    .serve(transport)
                    .await
                    // The cause chain says why (a TLS refusal names the certificate problem).
                    .map_err(|e| ConnectError::Handshake {
                        with: url.clone(),
                        why: causes(&e),
                    })?
            }
        };
        let tools = client
            .list_all_tools()
            .await
            .map_err(|e| ConnectError::ListTools(e.to_string()))?;
        Ok((client, tools, executable, running))
    }

    /// Forwards the child's stderr to the log, redacted (a server may print its own secrets);
    /// once it ends, its last lines (redacted) are sent on the returned channel.
    fn log_stderr(
        &self,
        stderr: tokio::process::ChildStderr,
    ) -> tokio::sync::oneshot::Receiver<Vec<String>> {
        let name = self.spec.name.clone();
        let redactor = Arc::clone(&self.redactor);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr);
            let mut last = std::collections::VecDeque::with_capacity(STDERR_TAIL);
            // INVARIANT (an upstream's stderr never stops being read): a line that is not UTF-8
            // or is very long is still read whole, so the server never meets a closed pipe
            // (and dies of it) and Warden keeps at most STDERR_LINE bytes of any line.
            while let Some(line) = next_line_lossy(&mut reader, STDERR_LINE).await {
                let line = redactor.without_secrets(line);
                tracing::debug!(upstream = %name, "{line}");
                if last.len() == STDERR_TAIL {
                    last.pop_front();
                }
                last.push_back(line.chars().take(512).collect::<String>());
            }
            let _ = tx.send(last.into());
        });
        rx
    }

    /// Stops the server.
    pub(crate) async fn stop(&self) {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.client.take() {
            if let Ok(c) = Arc::try_unwrap(c) {
                let _ = c.cancel().await;
            }
        }
        conn.running = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines that are not UTF-8, longer than kept, or without a final newline are all read,
    /// none stops the reading, and what is kept is bounded.
    #[tokio::test]
    async fn stderr_lines_are_read_whole_lossily_and_kept_bounded() {
        let mut input: Vec<u8> = b"plain\n\xff\xfe not utf-8\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\nafter\nno newline at the end");
        // A reader that hands out a few bytes at a time, as a pipe does.
        let mut reader = tokio::io::BufReader::with_capacity(7, input.as_slice());
        let mut lines = Vec::new();
        while let Some(line) = next_line_lossy(&mut reader, 1024).await {
            lines.push(line);
        }
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines.first().map(String::as_str), Some("plain"));
        assert_eq!(
            lines.get(1).map(String::as_str),
            Some("\u{FFFD}\u{FFFD} not utf-8")
        );
        assert_eq!(lines.get(2).map(String::len), Some(1024));
        assert_eq!(lines.get(3).map(String::as_str), Some("after"));
        assert_eq!(
            lines.get(4).map(String::as_str),
            Some("no newline at the end")
        );
    }
}
