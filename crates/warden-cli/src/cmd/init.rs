//! `warden init [DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write `manifest.yaml` and `policies/` into (created if missing).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let path = warden_gateway::starter::write(&a.dir).map_err(anyhow::Error::msg)?;
    out!("wrote {}", path.display());
    out!("next: warden manifest validate {}", path.display());
    Ok(ExitCode::SUCCESS)
}
