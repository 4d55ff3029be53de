//! `warden witness`: a witness for Warden ledgers, to run outside the gateway's data directory
//! (another process, user or host): it cosigns a log's checkpoints only while each extends the
//! one before (C2SP `tlog-witness`; docs/ledger.md "Witnesses").

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use warden_ledger::cosign::Cosigner;
use warden_ledger::witness::{Witness, MAX_REQUEST_BYTES};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make the witness's key in DIR (`witness.key`, 0600) and print its verifier key (also
    /// written to `witness.pub`): what gateways pass to `--witness URL#KEY`.
    Keygen {
        /// The witness's directory.
        #[arg(long)]
        data: PathBuf,
        /// Its name (shown on its cosignatures), e.g. `witness.example.com/w1`.
        #[arg(long)]
        name: String,
    },
    /// Serve `POST /add-checkpoint` and `GET /<hex SHA-256 of a log's origin>/checkpoint`.
    Serve {
        /// The witness's directory (its key and what it has cosigned).
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8710")]
        listen: SocketAddr,
        /// A log to witness (repeatable): its verifier key, or a file holding it (a gateway's
        /// `DATA/keys/ledger.pub`).
        #[arg(long = "log", value_name = "KEY|FILE", required = true)]
        logs: Vec<PathBuf>,
    },
}

fn key_path(data: &Path) -> PathBuf {
    data.join("witness.key")
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Keygen { data, name } => {
            let path = key_path(&data);
            anyhow::ensure!(
                !path.exists(),
                "{} exists: a witness keeps its key (a new key is a new witness)",
                path.display()
            );
            let key = Cosigner::generate(&name)?;
            let mut private = key.to_private_string().to_string();
            private.push('\n');
            warden_runtime::keyfile::write_secret(&path, private.as_bytes())?;
            let public = key.verifier().to_string();
            warden_runtime::keyfile::write_public(
                &data.join("witness.pub"),
                format!("{public}\n").as_bytes(),
            )?;
            out!("{public}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { data, listen, logs } => serve(&data, listen, &logs),
    }
}

fn serve(data: &Path, listen: SocketAddr, logs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let text = warden_runtime::keyfile::read_secret(&key_path(data))?;
    let key = Cosigner::parse(&text).context("the witness key")?;
    let logs = logs
        .iter()
        .map(|l| warden_runtime::witness::load_verifier(l))
        .collect::<Result<Vec<_>, _>>()?;
    let witness = Arc::new(Witness::open(data, key, logs)?);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!("warden witness: listening on {}", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/add-checkpoint", axum::routing::post(add_checkpoint))
            .route("/{origin}/checkpoint", axum::routing::get(checkpoint))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(witness);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn add_checkpoint(
    axum::extract::State(w): axum::extract::State<Arc<Witness>>,
    body: String,
) -> (axum::http::StatusCode, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Blocking: the state is synced to disk before the answer.
    let answer = tokio::task::spawn_blocking(move || w.add_checkpoint(&body, now)).await;
    match answer {
        Ok(Ok(line)) => (axum::http::StatusCode::OK, line),
        Ok(Err(refusal)) => (
            axum::http::StatusCode::from_u16(refusal.status())
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
            refusal.body(),
        ),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e}\n"),
        ),
    }
}

async fn checkpoint(
    axum::extract::State(w): axum::extract::State<Arc<Witness>>,
    axum::extract::Path(origin): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    match w.latest(&origin) {
        Some(note) => (axum::http::StatusCode::OK, note),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "no checkpoint cosigned for that log\n".into(),
        ),
    }
}
