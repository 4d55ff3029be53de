//! `warden check --manifest FILE [--state DIR] PROPOSAL.json`.

use anyhow::Context as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use warden_core::proposal::MAX_PROPOSAL_BYTES;
use warden_core::state::StateStore;
use warden_core::{Proposal, Verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest to decide under.
    #[arg(long)]
    manifest: PathBuf,
    /// State directory (counters, session history, holds); without it, state lasts one run.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Decide as if at this Unix time (seconds) instead of now.
    #[arg(long)]
    now: Option<i64>,
    /// The proposal: a JSON file, or `-` for standard input.
    proposal: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let bytes = read_proposal(&a.proposal)?;
    let proposal = Proposal::from_json_slice(&bytes)
        .with_context(|| format!("reading proposal `{}`", a.proposal.display()))?;
    let now = a.now.unwrap_or_else(warden_runtime::now_unix);
    let governor = match warden_runtime::bundle::load_governor(&a.manifest) {
        Ok(g) => g,
        Err(e) => {
            // INVARIANT (fail-closed): a bundle that does not load allows nothing, and says why.
            super::print_load_error(&e);
            let first = e
                .diagnostics
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            let d = warden_policy::deny_unloaded(&proposal, &first, now);
            out!("{}", serde_json::to_string_pretty(&d)?);
            return Ok(ExitCode::from(super::EXIT_INPUT));
        }
    };
    let state: Arc<dyn StateStore> = match &a.state {
        Some(dir) => Arc::new(
            warden_state::FileState::open(dir, now)
                .with_context(|| format!("opening state directory `{}`", dir.display()))?,
        ),
        None => Arc::new(warden_state::MemoryState::new()),
    };
    let d = governor.decide(&proposal, state.as_ref(), now);
    out!("{}", serde_json::to_string_pretty(&d)?);
    Ok(ExitCode::from(match d.decision {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::Escalate => 3,
    }))
}

fn read_proposal(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let limit = (MAX_PROPOSAL_BYTES as u64) + 1;
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot open proposal `{}`", path.display()))?
            .take(limit)
            .read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}
