//! `warden keys rotate ROLE`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Replace a key; what the old one signed keeps verifying.
    ///
    /// Roles: `governor` (signs agent credentials and session lineages), `grant` (the MAC key of
    /// grants), `ledger` (signs checkpoints). The gateway picks the
    /// new key up when it restarts and records the rotation in the ledger then.
    Rotate {
        /// Which key.
        role: String,
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Rotate { role, data } => match role.as_str() {
            "governor" => {
                let (old, new) = warden_runtime::agents::rotate_governor(&data)?;
                out!("governor key rotated: {old} -> {new}; credentials signed by {old} keep verifying");
                out!("restart the gateway to use it; the rotation is recorded in the ledger at start");
                Ok(ExitCode::SUCCESS)
            }
            "ledger" => {
                let (old, new) = warden_runtime::witness::rotate_ledger_key(&data)?;
                out!("ledger key rotated: {old} -> {new}; DATA/keys/ledger.pub lists both, so checkpoints signed by {old} keep verifying");
                out!("restart the gateway to use it; the rotation is recorded in the ledger at start");
                Ok(ExitCode::SUCCESS)
            }
            "grant" => {
                let (old, new) = warden_runtime::agents::rotate_grant(&data)?;
                out!("grant key rotated: {old} -> {new}; grants made with {old} keep verifying until they expire");
                out!("restart the gateway to use it; the rotation is recorded in the ledger at start");
                Ok(ExitCode::SUCCESS)
            }
            other => {
                eprintln!(
                    "error: rotating the `{other}` key is not supported (supported: governor, grant, ledger)"
                );
                Ok(ExitCode::from(super::EXIT_INPUT))
            }
        },
    }
}
