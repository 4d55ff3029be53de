//! `warden serve`: the gateway on its embedded defaults.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// What `serve` and `stdio` share: where the data, manifest, ledger and replay state are.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Data directory (state, keys, ledger; the starter manifest if none is given).
    #[arg(long, default_value = ".warden")]
    data: PathBuf,
    /// The manifest; defaults to DATA/manifest.yaml, written from the starter if missing.
    #[arg(long, alias = "config")]
    manifest: Option<PathBuf>,
    /// Keep the Witness ledger in PostgreSQL (shared by several instances) instead of
    /// DATA/ledger.
    #[arg(long, value_name = "URL", env = "WARDEN_LEDGER_POSTGRES")]
    ledger_postgres: Option<String>,
    /// Remember signed-request nonces and redeemed grants in Redis, so several instances accept
    /// each request and each grant once.
    #[arg(long, value_name = "URL", env = "WARDEN_REPLAY_REDIS")]
    replay_redis: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Address to listen on (HTTP API and MCP at /mcp).
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Address of the admin listener (kill switch, quarantine, lockdown, resume), which takes
    /// only the admin token in DATA/keys/admin.token.
    #[arg(long, default_value = "127.0.0.1:8701")]
    admin_listen: SocketAddr,
    /// Largest MCP request body accepted on /mcp, in bytes.
    #[arg(long, default_value_t = warden_gateway::mcp::DEFAULT_MAX_BODY)]
    mcp_max_body: usize,
}

#[derive(Debug, clap::Args)]
pub struct StdioArgs {
    #[command(flatten)]
    common: Common,
    /// The agent's credential file (from `warden agents enroll`).
    #[arg(long)]
    credential: PathBuf,
}

/// How long `serve` and `stdio` wait for upstreams to start before serving (the rest keep
/// starting in the background).
const UPSTREAM_START_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Lifetime of the credential written for the starter agent.
const STARTER_CREDENTIAL_SECS: i64 = 30 * 24 * 3600;

fn logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // INVARIANT (secrets never logged): rmcp logs upstream messages (progress, raw
            // lines) before Warden redacts them, so it never logs below `warn`, whatever
            // RUST_LOG says.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
                .add_directive(
                    "rmcp=warn"
                        .parse()
                        .unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::WARN.into()),
                ),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log written to a file or a journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Assembles the gateway ([`warden_gateway::runtime::Runtime`], the one composition root),
/// writing the starter manifest (and the starter agent's credential) on a first run without
/// one; `Err(code)` when the manifest does not load (already reported).
fn open(a: &Common) -> anyhow::Result<Result<warden_gateway::runtime::Runtime, ExitCode>> {
    let starter = a.manifest.is_none();
    let manifest = match a.manifest.clone() {
        Some(m) => m,
        None => {
            let m = a.data.join("manifest.yaml");
            if !m.exists() {
                warden_gateway::starter::write_with_approvers(&a.data, &a.data)
                    .map_err(anyhow::Error::msg)?;
                tracing::warn!(path = %m.display(), "no manifest given: wrote the starter manifest");
            }
            m
        }
    };
    let config = warden_gateway::runtime::Config {
        data: a.data.clone(),
        manifest: manifest.clone(),
        ledger_postgres: a.ledger_postgres.clone(),
        replay_redis: a.replay_redis.clone(),
        helper: std::env::current_exe().context("finding the warden binary")?,
    };
    let runtime = match warden_gateway::runtime::Runtime::open(config) {
        Ok(r) => r,
        Err(warden_gateway::runtime::RuntimeError::Manifest { path, error }) => {
            // INVARIANT (fail-closed): without a loaded bundle the gateway does not start.
            super::print_load_error(&error);
            eprintln!(
                "error: manifest `{}` does not load; refusing to start",
                path.display()
            );
            return Ok(Err(ExitCode::from(super::EXIT_INPUT)));
        }
        Err(e) => return Err(e.into()),
    };
    if starter {
        starter_credential(&a.data, runtime.app.governor.get().manifest())?;
    }
    Ok(Ok(runtime))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    logging();
    let runtime = match open(&a.common)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let (app, executor, clock) = (
        runtime.app.clone(),
        Arc::clone(&runtime.executor),
        Arc::clone(&runtime.clock),
    );
    let manifest = runtime.config.manifest.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let notifier = notifier(&rt, &app, &manifest);
    let app = warden_gateway::server::AppState {
        notifier: notifier.clone(),
        ..app
    };
    let admin = warden_gateway::admin::AdminState {
        notifier,
        ..runtime.admin().context("loading the admin token")?
    };
    rt.block_on(async move {
        let stop = on_stop()?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let shutdown = stopped(stop.clone());
        // SIGHUP: load the manifest again and swap it in whole if it loads and its version is
        // newer; otherwise the current one stays in force.
        warden_gateway::approvals::record_approvers(
            &app.ledger,
            app.governor.get().manifest(),
            "approvers at start",
        )
        .await;
        let current = Arc::clone(&app.governor);
        let ledger = Arc::clone(&app.ledger);
        let book = Arc::clone(&app.approvals);
        let manifest_path = manifest.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let old = current.get();
                let before = warden_gateway::approvals::approver_summary(old.manifest());
                let (c, m, k) = (Arc::clone(&current), manifest_path.clone(), Arc::clone(&clock));
                let b = Arc::clone(&book);
                match tokio::task::spawn_blocking(move || {
                    warden_gateway::execution::reload(&c, &k, &m, &b)
                })
                .await
                {
                    Ok(Ok((v, approval))) => {
                        tracing::info!(version = v, "manifest reloaded");
                        warden_gateway::promotion::record_raised(
                            &ledger,
                            old.manifest(),
                            current.get().manifest(),
                        )
                        .await;
                        if let Some(r) = approval {
                            warden_gateway::governance::record(
                                &ledger,
                                "governance.applied",
                                format!(
                                    "manifest version {v} (bundle {}) swapped in, approved by {} (approval {})",
                                    r.binding.arguments_hash,
                                    r.approved_by().join(", "),
                                    r.id
                                ),
                            )
                            .await;
                        }
                        let now = current.get();
                        // An approver's key rotated, or approvers changed: recorded.
                        if warden_gateway::approvals::approver_summary(now.manifest()) != before {
                            warden_gateway::approvals::record_approvers(
                                &ledger,
                                now.manifest(),
                                "approvers changed by a manifest reload",
                            )
                            .await;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "manifest reload refused");
                        warden_gateway::governance::record(&ledger, "manifest.reload_refused", e)
                            .await;
                    }
                    Err(e) => tracing::error!(error = %e, "manifest reload failed"),
                }
            }
        });
        let admin_listener = tokio::net::TcpListener::bind(a.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", a.admin_listen))?;
        tracing::info!(admin = %a.admin_listen, "admin listener (kill, quarantine, lockdown, resume)");
        tokio::spawn(warden_gateway::admin::serve(
            admin_listener,
            admin,
            stopped(stop),
        ));
        spawn_expiry_recorder(&app);
        for (name, why) in executor.start(UPSTREAM_START_WAIT).await {
            tracing::warn!(upstream = %name, "tools withheld until it starts: {why}");
        }
        let mcp = warden_gateway::mcp::router(
            app.clone(),
            Arc::clone(&executor),
            a.mcp_max_body,
            (!a.listen.ip().is_loopback()).then(Vec::new),
        );
        tracing::info!(url = %format!("http://{}/mcp", a.listen), "MCP endpoint (Streamable HTTP, bearer credential)");
        tracing::info!(listen = %a.listen, "warden serving the HTTP API");
        warden_gateway::server::serve_with(listener, app, Some(mcp), shutdown).await?;
        executor.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Watches for SIGINT (Ctrl-C) and SIGTERM (what systemd, Docker and Kubernetes send): either
/// stops the gateway cleanly (listeners close, the upstreams are stopped, the ledger signs its
/// last checkpoint as it closes, exit 0). The handlers are installed before this returns, so a
/// signal that arrives while the gateway starts is not lost. Call inside the runtime.
fn on_stop() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!("{which}: shutting down");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Resolves once [`on_stop`] saw a signal.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Writes a credential for the starter manifest's first agent if it has none, and says where.
fn starter_credential(
    data: &std::path::Path,
    m: &warden_policy::manifest::Manifest,
) -> anyhow::Result<()> {
    let Some(agent) = m.raw.agents.first().map(|a| a.id.clone()) else {
        return Ok(());
    };
    let path = data.join("agents").join(format!("{agent}.credential"));
    if !path.exists() {
        warden_gateway::agents::enroll(
            data,
            m,
            &agent,
            warden_gateway::now_unix(),
            STARTER_CREDENTIAL_SECS,
        )
        .with_context(|| format!("enrolling the starter agent `{agent}`"))?;
    }
    eprintln!(
        "starter agent `{agent}`: credential in {} (send it as `Authorization: Bearer <credential>` to /mcp)",
        path.display()
    );
    Ok(())
}

/// `warden stdio`: one agent over stdin/stdout, for desktop clients that launch their servers.
/// Starts the manifest's webhooks (their HMAC keys are secrets from the manifest's `secrets`).
fn notifier(
    rt: &tokio::runtime::Runtime,
    app: &warden_gateway::server::AppState,
    manifest: &std::path::Path,
) -> warden_gateway::notify::Notifier {
    let governor = app.governor.get();
    let m = governor.manifest();
    let dir = manifest.parent().unwrap_or(std::path::Path::new("."));
    let (secrets, _) = warden_executor::Secrets::load(&m.secrets, dir);
    let _entered = rt.enter();
    let (notifier, errors) =
        warden_gateway::notify::Notifier::start(&m.webhooks, |name| secrets.get(name));
    for e in errors {
        tracing::error!("{e}");
    }
    if !m.webhooks.is_empty() {
        tracing::info!(webhooks = m.webhooks.len(), "notifications on");
    }
    notifier
}

/// Records expired approval requests within a second (on the current runtime).
fn spawn_expiry_recorder(app: &warden_gateway::server::AppState) {
    let (book, ledger) = (Arc::clone(&app.approvals), Arc::clone(&app.ledger));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            warden_gateway::approvals::record_expired(&book, &ledger).await;
        }
    });
}

pub fn stdio(a: StdioArgs) -> anyhow::Result<ExitCode> {
    logging();
    let token = std::fs::read_to_string(&a.credential)
        .with_context(|| format!("reading the credential `{}`", a.credential.display()))?;
    let warden_gateway::runtime::Runtime { app, executor, .. } = match open(&a.common)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        spawn_expiry_recorder(&app);
        let front = warden_gateway::mcp::McpFront::stdio(app, Arc::clone(&executor), token.trim())
            .map_err(|e| anyhow::anyhow!("credential `{}` refused: {e}", a.credential.display()))?;
        for (name, why) in executor.start(UPSTREAM_START_WAIT).await {
            tracing::warn!(upstream = %name, "tools withheld until it starts: {why}");
        }
        tracing::info!("serving MCP on stdio");
        let stop = on_stop()?;
        let service = rmcp::ServiceExt::serve(front, rmcp::transport::io::stdio())
            .await
            .context("MCP handshake on stdio")?;
        let cancel = service.cancellation_token();
        let waiting = service.waiting();
        tokio::pin!(waiting);
        tokio::select! {
            _ = &mut waiting => {}
            () = stopped(stop) => {
                cancel.cancel();
                let _ = waiting.await;
            }
        }
        executor.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
