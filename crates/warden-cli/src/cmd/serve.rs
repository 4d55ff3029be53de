//! `warden serve`: the gateway on its embedded defaults.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Where the ledger's signing key is kept, outside the data directory: env:VARIABLE,
    /// file:/absolute/path or keyring:DESCRIPTION (default DATA/keys/ledger.key).
    #[arg(long, value_name = "SOURCE", env = "WARDEN_LEDGER_KEY")]
    ledger_key: Option<warden_runtime::witness::LedgerKey>,
    /// When receipts are durable: `grouped` (default; written before the answer, synced
    /// within 5 ms or with the next decision, a call whose receipt a power loss cut is closed as
    /// `interrupted` at the next start) or `strict` (synced before the answer). Decisions are
    /// always synced before anything runs. See docs/ledger.md.
    #[arg(long, value_enum, default_value = "grouped", env = "WARDEN_RECEIPTS")]
    receipts: ReceiptDurability,
    /// Send the ledger's checkpoints to this witness (repeatable): its base URL, `#`, its
    /// verifier key (`warden witness keygen` prints it).
    #[arg(long = "witness", value_name = "URL#KEY")]
    witnesses: Vec<warden_runtime::witnessing::WitnessTarget>,
    /// Remember signed-request nonces and redeemed grants in Redis, so several instances accept
    /// each request and each grant once.
    #[arg(long, value_name = "URL", env = "WARDEN_REPLAY_REDIS")]
    replay_redis: Option<String>,
    /// Keep counters, session history and holds (kill switch, quarantine, pause, demotion) in
    /// Redis, shared by every instance given the same URL and prefix, instead of DATA/state.
    #[arg(long, value_name = "redis://...", env = "WARDEN_STATE")]
    state: Option<String>,
    /// Log lines as readable text (default) or as JSON, one object per line (`timestamp`,
    /// `level`, `target`, `fields.message`, the event's other fields).
    #[arg(long, value_enum, default_value = "text", env = "WARDEN_LOG_FORMAT")]
    log_format: LogFormat,
    /// The prefix of the state's keys in that Redis (one per fleet).
    #[arg(long, value_name = "PREFIX", env = "WARDEN_STATE_PREFIX", default_value = warden_runtime::runtime::DEFAULT_STATE_PREFIX)]
    state_prefix: String,
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
    /// Count and time nothing for /metrics (which then answers 404).
    #[arg(long)]
    no_metrics: bool,
    /// In a fleet (`--state redis://...`): the URL of this instance's /mcp that the other
    /// instances reach (e.g. http://10.0.0.5:8700/mcp). A 2026-07-28 client's retry of a call
    /// waiting here for its input that reaches another instance is passed here.
    #[arg(long, value_name = "URL", env = "WARDEN_ADVERTISE")]
    advertise: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StdioArgs {
    #[command(flatten)]
    common: Common,
    /// The agent's credential file (from `warden agents enroll`).
    #[arg(long)]
    credential: PathBuf,
    /// Bridge to a running `warden serve` instead of opening the data directory: its MCP
    /// endpoint (`http://127.0.0.1:8080/mcp`). Every window and client then shares that one
    /// gateway, ledger and state.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
}

/// How long `serve` and `stdio` wait for upstreams to start before serving (the rest keep
/// starting in the background).
const UPSTREAM_START_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Lifetime of the credential written for the starter agent.
const STARTER_CREDENTIAL_SECS: i64 = 30 * 24 * 3600;

/// When receipts are durable (`--receipts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiptDurability {
    /// Written before the answer, synced within a few milliseconds.
    Grouped,
    /// Synced before the answer.
    Strict,
}

impl From<ReceiptDurability> for warden_ledger::Receipts {
    fn from(r: ReceiptDurability) -> Self {
        match r {
            ReceiptDurability::Grouped => warden_ledger::Receipts::default(),
            ReceiptDurability::Strict => warden_ledger::Receipts::Strict,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
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
        .with_writer(std::io::stderr);
    match format {
        // Colour only for a terminal: a log written to a file or a journal gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Assembles the gateway ([`warden_runtime::runtime::Runtime`], the one composition root),
/// writing the starter manifest (and the starter agent's credential) on a first run without
/// one; `Err(code)` when the manifest does not load (already reported).
fn open(
    a: &Common,
    metrics: bool,
) -> anyhow::Result<Result<warden_runtime::runtime::Runtime, ExitCode>> {
    let starter = a.manifest.is_none();
    let manifest = match a.manifest.clone() {
        Some(m) => m,
        None => {
            let m = a.data.join("manifest.yaml");
            if !m.exists() {
                warden_runtime::starter::write_with_approvers(&a.data, &a.data)?;
                tracing::warn!(path = %m.display(), "no manifest given: wrote the starter manifest");
            }
            m
        }
    };
    let config = warden_runtime::runtime::Config {
        data: a.data.clone(),
        manifest: manifest.clone(),
        ledger_postgres: a.ledger_postgres.clone(),
        ledger_key: a.ledger_key.clone().unwrap_or_default(),
        receipts: a.receipts.into(),
        witnesses: a.witnesses.clone(),
        replay_redis: a.replay_redis.clone(),
        state_redis: a.state.clone(),
        state_prefix: a.state_prefix.clone(),
        helper: std::env::current_exe().context("finding the warden binary")?,
        // OpenTelemetry traces, if the OTEL_* variables ask for them (docs/observability.md).
        traces: warden_runtime::traces::Traces::from_env()
            .context("traces (the OTEL_* environment variables)")?,
        metrics,
    };
    if config.traces.on() {
        tracing::info!("traces exported over OTLP (HTTP/protobuf)");
    }
    let runtime = match warden_runtime::runtime::Runtime::open(config) {
        Ok(r) => r,
        Err(warden_runtime::runtime::RuntimeError::Manifest { path, error }) => {
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
        starter_credential(&a.data, &runtime.manifest(), a.log_format)?;
    }
    Ok(Ok(runtime))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    logging(a.common.log_format);
    let runtime = match open(&a.common, !a.no_metrics)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let stop = on_stop()?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let admin_listener = tokio::net::TcpListener::bind(a.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", a.admin_listen))?;
        // SIGHUP: load the manifest again and swap it in whole if it loads and its version is
        // newer; otherwise the current one stays in force (the Runtime records either).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let reloading = runtime.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = reloading.reload().await;
            }
        });
        tracing::info!(admin = %a.admin_listen, "admin listener (kill, quarantine, lockdown, resume)");
        tokio::spawn(warden_gateway::operator_api::serve(
            admin_listener,
            runtime.operator(),
            stopped(stop.clone()),
        ));
        for (name, why) in runtime.start(UPSTREAM_START_WAIT).await {
            tracing::warn!(upstream = %name, "tools withheld until it starts: {why}");
        }
        if let Some(url) = &a.advertise {
            advertised(url)?;
        }
        if a.advertise.is_some() && runtime.session_directory().is_none() {
            tracing::warn!("--advertise has no effect without a fleet (--state redis://...)");
        }
        let mcp = warden_gateway::mcp::router(
            runtime.clone(),
            a.mcp_max_body,
            (!a.listen.ip().is_loopback()).then(Vec::new),
            a.advertise.clone(),
        );
        tracing::info!(url = %format!("http://{}/mcp", a.listen), "MCP endpoint (Streamable HTTP, bearer credential)");
        tracing::info!(listen = %a.listen, "warden serving the HTTP API");
        warden_gateway::native_api::serve_with(listener, runtime.clone(), Some(mcp), stopped(stop))
            .await?;
        runtime.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Checks `--advertise`: the other instances pass requests to it, so it must be an http(s) URL
/// with a host (a mistake is told at start, not when a forwarded request fails).
fn advertised(url: &str) -> anyhow::Result<()> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("--advertise `{url}` is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        anyhow::bail!(
            "--advertise `{url}` must be an http:// or https:// URL with a host, e.g. http://10.0.0.5:8700/mcp"
        );
    }
    Ok(())
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
    format: LogFormat,
) -> anyhow::Result<()> {
    let Some(agent) = m.raw.agents.first().map(|a| a.id.clone()) else {
        return Ok(());
    };
    let path = data.join("agents").join(format!("{agent}.credential"));
    if !path.exists() {
        warden_runtime::agents::enroll(
            data,
            m,
            &agent,
            warden_runtime::now_unix(),
            STARTER_CREDENTIAL_SECS,
        )
        .with_context(|| format!("enrolling the starter agent `{agent}`"))?;
    }
    let said = format!(
        "starter agent `{agent}`: credential in {} (send it as `Authorization: Bearer <credential>` to /mcp)",
        path.display()
    );
    match format {
        // Said plainly, for the person who just started it.
        LogFormat::Text => eprintln!("{said}"),
        LogFormat::Json => tracing::info!(credential = %path.display(), "{said}"),
    }
    Ok(())
}

/// `warden stdio`: one agent over stdin/stdout, for desktop clients that launch their servers.
pub fn stdio(a: StdioArgs) -> anyhow::Result<ExitCode> {
    logging(a.common.log_format);
    let token = std::fs::read_to_string(&a.credential)
        .with_context(|| format!("reading the credential `{}`", a.credential.display()))?;
    if let Some(url) = &a.connect {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(super::bridge::run(url, token.trim()))?;
        return Ok(ExitCode::SUCCESS);
    }
    // No admin listener, so no `/metrics`: nothing is counted.
    let runtime = match open(&a.common, false)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    // One agent's calls on one thread: fewer thread hops per call than two workers handing
    // tasks to each other (docs/benchmarks.md, issue 21). A decision's sync blocks that thread,
    // but calls that are ready meanwhile queue behind it first and share it (`Ledger::record`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let front = warden_gateway::mcp::McpFront::stdio(runtime.clone(), token.trim())
            .map_err(|e| anyhow::anyhow!("credential `{}` refused: {e}", a.credential.display()))?;
        for (name, why) in runtime.start(UPSTREAM_START_WAIT).await {
            tracing::warn!(upstream = %name, "tools withheld until it starts: {why}");
        }
        tracing::info!("serving MCP on stdio");
        let stop = on_stop()?;
        // Pipes (how desktop clients launch servers) are driven by the reactor, not the
        // blocking pool: no thread hand-off per message.
        let service = rmcp::ServiceExt::serve(front, rmcp::transport::io::stdio_pipes())
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
        runtime.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod advertise_tests {
    use super::advertised;

    #[test]
    fn advertise_is_an_http_or_https_url_with_a_host() {
        assert!(advertised("http://10.0.0.5:8700/mcp").is_ok());
        assert!(advertised("https://warden-2.internal/mcp").is_ok());
        for bad in [
            "10.0.0.5:8700",
            "ftp://10.0.0.5/mcp",
            "file:///tmp/x",
            "not a url",
        ] {
            let e = advertised(bad).unwrap_err().to_string();
            assert!(e.contains("--advertise"), "{bad}: {e}");
        }
    }
}
