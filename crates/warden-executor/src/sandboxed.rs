//! Stdio upstreams inside the sandbox (issue 6): the launch, the egress proxy each one gets,
//! the heartbeat, and the kill.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warden_ledger::{Entry, EventRecord, Ledger};
use warden_manifest::upstream::Sandbox;
use warden_sandbox::cgroup::Cgroup;
use warden_sandbox::egress::{self, Policy, Proxy, SystemResolver};
use warden_sandbox::spec::{Bridge, Guarantee, Limits, Spec, DEFAULT_PROXY_PORT, NOBODY};

/// What the Executor sandboxes with.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// This host's mechanisms (probed once at start).
    pub host: Arc<warden_sandbox::Host>,
    /// Where workspaces and egress sockets live (`DATA/sandbox`).
    pub dir: PathBuf,
}

/// A sandboxed server that is running: its cgroup and its egress proxy. Dropping it kills the
/// whole tree and stops the proxy.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) cgroup: Option<Arc<Cgroup>>,
    proxy: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Kills the tree and stops the proxy; whether the tree is gone.
    pub(crate) fn stop(mut self) -> bool {
        if let Some(p) = self.proxy.take() {
            p.abort();
        }
        self.cgroup
            .take()
            .is_none_or(|cg| cg.kill(Duration::from_secs(2)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = &self.proxy {
            p.abort();
        }
        if let Some(cg) = &self.cgroup {
            cg.kill(Duration::from_secs(2));
        }
    }
}

/// The guarantees of a manifest block.
pub(crate) fn required(sb: &Sandbox) -> Vec<Guarantee> {
    sb.require
        .iter()
        .filter_map(|g| Guarantee::parse(g))
        .collect()
}

/// The profile a receipt names.
pub(crate) fn profile(cfg: Option<&SandboxConfig>, sb: Option<&Sandbox>) -> String {
    match (cfg, sb) {
        (Some(cfg), Some(sb)) => cfg.host.profile(&required(sb)),
        _ => "none".into(),
    }
}

/// Records an event about upstream `name`'s sandbox (best effort, off the caller's path).
pub(crate) fn record(ledger: Option<&Arc<Ledger>>, kind: &str, name: &str, reason: String) {
    record_for(ledger, kind, name, &Boundary::default(), "", reason);
}

/// The calls a runner is serving right now (their request ids), so that what its sandbox does
/// meanwhile (its egress) can be tied to a call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Serving(Arc<Mutex<Vec<String>>>);

/// Takes a call off its runner's [`Serving`] list when it ends, however it ends.
pub(crate) struct Served {
    serving: Serving,
    request_id: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(mut v) = self.serving.0.lock() {
            if let Some(i) = v.iter().position(|r| *r == self.request_id) {
                v.swap_remove(i);
            }
        }
    }
}

impl Serving {
    /// The call `request_id` is being served until the guard goes.
    pub(crate) fn enter(&self, request_id: &str) -> Served {
        if let Ok(mut v) = self.0.lock() {
            v.push(request_id.to_owned());
        }
        Served {
            serving: self.clone(),
            request_id: request_id.to_owned(),
        }
    }

    /// The request id to record an egress event under: the one call in flight on the runner;
    /// with several (a shared runner), none, and the reason names them all; with none, the
    /// server acted on its own.
    fn attribution(&self) -> (String, String) {
        let calls = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        match calls.as_slice() {
            [one] => (one.clone(), String::new()),
            [] => (
                String::new(),
                " (no call in flight: the server's own)".into(),
            ),
            many => (
                String::new(),
                format!(" (during the calls {})", many.join(", ")),
            ),
        }
    }
}

/// The boundary a runner serves: its key (`tenant-…`, `agent-…`, `session-…`; `_tools` for the
/// server that only lists tools, `_pin` for one observed for pinning), also its directory's
/// name; and who is behind it, for the records of what its sandbox does (its egress): the
/// tenant, and the agent and session when the runner is theirs alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Boundary {
    pub(crate) key: String,
    pub(crate) tenant: String,
    pub(crate) agent: String,
    pub(crate) session: String,
}

impl Boundary {
    /// A boundary no caller is behind.
    pub(crate) fn unowned(key: &str) -> Self {
        Boundary {
            key: key.to_owned(),
            ..Boundary::default()
        }
    }
}

/// [`record`], attributed to who is behind the runner's `owner` boundary.
pub(crate) fn record_for(
    ledger: Option<&Arc<Ledger>>,
    kind: &str,
    name: &str,
    owner: &Boundary,
    request_id: &str,
    reason: String,
) {
    tracing::warn!(upstream = %name, kind, tenant = %owner.tenant, agent = %owner.agent, "{reason}");
    let Some(ledger) = ledger else { return };
    let event = Entry::Event(EventRecord {
        kind: kind.to_owned(),
        agent: owner.agent.clone(),
        tenant: owner.tenant.clone(),
        session: owner.session.clone(),
        reason: format!("upstream `{name}`: {reason}"),
        trace_id: String::new(),
        request_id: request_id.to_owned(),
        time: crate::execution::now_ms().div_euclid(1000),
    });
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if let Ok(t) = ledger.submit(&event) {
        handle.spawn(async move {
            if let Err(e) = t.recorded().await {
                tracing::error!(error = %e, "could not record a sandbox event");
            }
        });
    }
}

/// Why a sandboxed upstream could not be prepared to launch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// Its directory or its egress socket could not be set up.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The sandbox refused the launch (a layer it must enforce is missing, ...).
    #[error(transparent)]
    Sandbox(#[from] warden_sandbox::SandboxError),
}

/// Where what a sandbox does is recorded and counted.
pub(crate) struct Records<'a> {
    /// The ledger (none when only observing for pins).
    pub(crate) ledger: Option<Arc<Ledger>>,
    /// Who the runner serves.
    pub(crate) owner: &'a Boundary,
    /// The calls it serves now.
    pub(crate) serving: &'a Serving,
    /// The Executor's counters.
    pub(crate) counters: &'a Arc<crate::counters::Counters>,
    /// The Executor's redactor: what the sandbox sent (a refused request line) may carry a
    /// secret it was given.
    pub(crate) redactor: &'a Arc<crate::Redactor>,
}

/// Prepares upstream `name`'s launch in the sandbox: workspace, cgroup, egress proxy.
pub(crate) fn launch(
    cfg: &SandboxConfig,
    name: &str,
    base: &Path,
    sb: &Sandbox,
    exe: &Path,
    args: &[String],
    records: Records<'_>,
) -> Result<(std::process::Command, Running), LaunchError> {
    let Records {
        ledger,
        owner,
        serving,
        counters,
        redactor,
    } = records;
    let base = base.to_path_buf();
    let workspace = base.join("work");
    let mut spec = Spec::new(exe.to_path_buf(), args.to_vec(), workspace);
    spec.read_only = sb.read_only.iter().map(PathBuf::from).collect();
    spec.read_only.push(exe.to_path_buf());
    spec.limits = Limits {
        cpu_seconds: sb.cpu_seconds,
        cpu_millicores: sb.cpu_millicores,
        memory_bytes: sb.memory_bytes,
        pids: sb.processes,
        open_files: sb.open_files,
        file_size_bytes: sb.file_size_bytes,
        workspace_bytes: sb.workspace_bytes,
    };
    spec.require = required(sb);
    let mut proxy = None;
    if !sb.egress_allow.is_empty() {
        std::fs::create_dir_all(&base).map_err(|error| LaunchError::Io {
            path: base.clone(),
            error,
        })?;
        // One socket per launch (another Warden process, `upstreams pin`, never unlinks a
        // running server's socket).
        static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = format!("egress-{}-{n}.sock", std::process::id());
        let socket = base.join(&file);
        let _ = std::fs::remove_file(&socket);
        let listener = bind_short(&base, &file).map_err(|error| LaunchError::Io {
            path: socket.clone(),
            error,
        })?;
        // Only this sandbox's uid may connect (the socket is bound into its view alone).
        let mode = if warden_sandbox::is_root() {
            std::os::unix::fs::chown(&socket, Some(NOBODY), Some(NOBODY)).map_err(|error| {
                LaunchError::Io {
                    path: socket.clone(),
                    error,
                }
            })?;
            0o600
        } else {
            0o666
        };
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|error| LaunchError::Io {
                path: socket.clone(),
                error,
            })?;
        let policy = Policy {
            allow: sb.egress_allow.clone(),
            private_allow: sb.private_networks.clone(),
            max_bytes_out: sb.max_out_bytes,
            max_bytes_in: sb.max_in_bytes,
            connections_per_minute: sb.connections_per_minute,
        };
        let who = name.to_owned();
        // INVARIANT (attributed egress, issue 18): every connection the sandbox opens or is
        // refused is recorded with the tenant (and agent, session) its runner serves.
        // And with the call it served then (its request id), when it served one alone.
        let (owner, serving, counters) = (owner.clone(), serving.clone(), Arc::clone(counters));
        let redactor = Arc::clone(redactor);
        let recorder: egress::Recorder = Arc::new(move |e: egress::Event| {
            let kind = if e.allowed {
                crate::counters::Counters::add(&counters.egress_allowed);
                "egress.allowed"
            } else {
                crate::counters::Counters::add(&counters.egress_refused);
                "egress.refused"
            };
            let to = e.address.map(|a| format!(" ({a})")).unwrap_or_default();
            let (request_id, during) = serving.attribution();
            // INVARIANT (INV-010): a refused request line or header is the sandbox's own text
            // and may quote a secret the upstream was given: redacted before the log and the
            // ledger, which cannot be scrubbed afterwards.
            let reason = redactor
                .without_secrets(format!("{}:{}{to}: {}{during}", e.host, e.port, e.reason));
            record_for(ledger.as_ref(), kind, &who, &owner, &request_id, reason);
        });
        let p = Proxy::new(policy, Arc::new(SystemResolver), recorder);
        proxy = Some((p, listener));
        spec.egress = Some(Bridge {
            socket,
            port: DEFAULT_PROXY_PORT,
        });
    }
    let (cgroup, cmd) = cfg.host.prepare(&format!("upstream-{name}"), spec)?;
    // Served only once the launch is prepared: a refused launch leaves no proxy behind.
    let proxy = proxy.map(|(p, listener)| tokio::spawn(p.serve(listener)));
    Ok((
        cmd,
        Running {
            cgroup: cgroup.map(Arc::new),
            proxy,
        },
    ))
}

/// Binds a Unix socket named `file` in `dir`, whatever the length of `dir`'s path.
///
/// A socket's address holds at most 107 bytes (`sun_path`), and a runner's directory under a
/// real data directory is longer than that. The socket is bound through `/proc/self/fd/N/`, N a
/// descriptor of `dir`, so the address stays short while the socket is made in `dir` (where the
/// sandbox binds it into its view by its full path).
fn bind_short(dir: &Path, file: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::fd::AsRawFd as _;
    let handle = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}/{file}", handle.as_raw_fd()));
    let listener = tokio::net::UnixListener::bind(&short)?;
    drop(handle);
    Ok(listener)
}

/// Watches a running server: if it stops answering pings for `heartbeat`, its whole tree is
/// killed and the loss recorded (the next call starts it again).
pub(crate) fn watch(
    name: String,
    client: std::sync::Weak<crate::upstream::Client>,
    cgroup: Option<Arc<Cgroup>>,
    heartbeat: Duration,
    ledger: Option<Arc<Ledger>>,
) {
    let interval = (heartbeat / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(c) = client.upgrade() else { return };
            if crate::upstream::gone(&c) {
                return;
            }
            let ping = rmcp::model::ClientRequest::PingRequest(rmcp::model::PingRequest {
                method: Default::default(),
                extensions: Default::default(),
            });
            let answered = tokio::time::timeout(heartbeat, c.send_request(ping)).await;
            drop(c);
            // Any answer, even an error reply, means the server is there.
            if matches!(answered, Ok(Ok(_) | Err(rmcp::ServiceError::McpError(_)))) {
                continue;
            }
            // The connection is over: the next call starts a fresh server.
            if let Some(c) = client.upgrade() {
                c.cancellation_token().cancel();
            }
            record(
                ledger.as_ref(),
                "sandbox.lost",
                &name,
                format!(
                    "no answer to a heartbeat within {}s: its whole process tree is killed",
                    heartbeat.as_secs_f64()
                ),
            );
            if let Some(cg) = &cgroup {
                let cg = Arc::clone(cg);
                let _ = tokio::task::spawn_blocking(move || cg.kill(Duration::from_secs(5))).await;
            }
            return;
        }
    });
}

/// The trees of running sandboxed servers, for the kill switch (which cannot wait for a lock).
#[derive(Debug, Default)]
pub(crate) struct Trees(Mutex<Vec<Tree>>);

/// One running tree: its upstream, the boundary its runner serves, its cgroup.
type Tree = (String, String, std::sync::Weak<Cgroup>);

impl Trees {
    pub(crate) fn add(&self, name: &str, boundary: &str, cg: &Arc<Cgroup>) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|(_, _, w)| w.strong_count() > 0);
            v.push((name.to_owned(), boundary.to_owned(), Arc::downgrade(cg)));
        }
    }

    /// Kills every running tree; returns the names of the servers killed. Blocking: call it
    /// off the async threads.
    pub(crate) fn kill_all(&self) -> Vec<String> {
        self.kill_where(|_, _| true)
    }

    /// Kills the running trees of the runners `pick` chooses (by upstream and boundary).
    pub(crate) fn kill_where(&self, pick: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let live: Vec<(String, Arc<Cgroup>)> = match self.0.lock() {
            Ok(v) => v
                .iter()
                .filter(|(n, b, _)| pick(n, b))
                .filter_map(|(n, b, w)| w.upgrade().map(|c| (format!("{n} ({b})"), c)))
                .collect(),
            Err(_) => return Vec::new(),
        };
        let mut killed = Vec::new();
        for (name, cg) in live {
            if !cg.pids().is_empty() {
                cg.kill(Duration::from_secs(2));
                killed.push(name);
            }
        }
        killed
    }
}
