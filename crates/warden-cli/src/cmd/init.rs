//! `warden init [DIR] [--data DATA]`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write `manifest.yaml` and `policies/` into (created if missing).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Data directory the starter approvers' keys are made in (`DATA/keys/approvers/`).
    #[arg(long, default_value = ".warden")]
    data: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let path = warden_runtime::starter::write_with_approvers(&a.dir, &a.data)?;
    out!("wrote {}", path.display());
    out!("next: warden manifest validate {}", path.display());
    Ok(ExitCode::SUCCESS)
}
