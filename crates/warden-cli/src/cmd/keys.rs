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
        /// The ledger key kept outside the data directory (as for `serve --ledger-key`).
        #[arg(long, value_name = "SOURCE", env = "WARDEN_LEDGER_KEY")]
        ledger_key: Option<warden_runtime::witness::LedgerKey>,
        /// Where to write the new ledger key when it is kept outside the data directory
        /// (install it where `--ledger-key` points, then restart).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Rotate {
            role,
            data,
            ledger_key,
            out,
        } => match role.as_str() {
            "governor" => {
                let (old, new) = warden_runtime::agents::rotate_governor(&data)?;
                out!("governor key rotated: {old} -> {new}; credentials signed by {old} keep verifying");
                out!("restart the gateway to use it; the rotation is recorded in the ledger at start");
                Ok(ExitCode::SUCCESS)
            }
            "ledger" => {
                let key = ledger_key.unwrap_or_default();
                let (old, new) =
                    warden_runtime::witness::rotate_ledger_key(&data, &key, out.as_deref())?;
                out!("ledger key rotated: {old} -> {new}; DATA/keys/ledger.pub lists both, so checkpoints signed by {old} keep verifying");
                if let Some(out) = &out {
                    out!(
                        "the new key is in {}: install it where --ledger-key points",
                        out.display()
                    );
                }
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
