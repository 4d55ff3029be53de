//! `warden incident export|verify`: one agent's decisions, receipts and events since a time,
//! with their inclusion proofs against one signed checkpoint, verifiable offline
//! (`docs/incidents.md`).

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::process::ExitCode;

use warden_ledger::incident;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    place: super::ledger::Where,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Bundle an agent's entries since a time (read-only; runs beside a serving gateway).
    Export {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// From when: Unix seconds, or a time ago such as `30m`, `24h`, `7d`.
        #[arg(long, default_value = "0")]
        since: String,
        /// Write the bundle here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a bundle with only the ledger's public key (`--key`). Exit 1 naming the first
    /// entry that does not verify.
    Verify {
        /// The bundle.
        file: PathBuf,
    },
}

/// Unix seconds, or `N` followed by `s`, `m`, `h` or `d` meaning that long ago.
fn since(text: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(t) = text.parse::<i64>() {
        return Ok(t);
    }
    let Some((at, _)) = text.char_indices().last() else {
        bail!("--since is empty: give Unix seconds or a time ago such as `24h`");
    };
    let (n, unit) = text.split_at(at);
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--since `{text}`: give Unix seconds or a time ago such as `24h`"),
    };
    let n: i64 = n
        .parse()
        .with_context(|| format!("--since `{text}`: `{n}` is not a number"))?;
    Ok(now.saturating_sub(n.saturating_mul(secs)))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let v = super::ledger::verifier(&a.place)?;
    match a.command {
        Command::Export {
            agent,
            since: from,
            out,
        } => {
            let from = since(&from, warden_runtime::now_unix())?;
            let mut s = super::ledger::open(&a.place, &v)?;
            // A running gateway signs a checkpoint within a second of its last append: wait up
            // to 3 s for one that covers everything recorded, so the bundle holds what was
            // just recorded (a hold set a moment ago).
            for _ in 0..30 {
                let covered = match s.latest_checkpoint()? {
                    Some(note) => warden_ledger::Checkpoint::open(&note, &v, v.name())
                        .is_ok_and(|cp| s.size().is_ok_and(|n| cp.size >= n)),
                    None => false,
                };
                if covered {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                s = super::ledger::open(&a.place, &v)?;
            }
            let bundle = incident::build(&mut *s, &v, &agent, from)?;
            let text = serde_json::to_string_pretty(&bundle)?;
            match out {
                Some(path) => std::fs::write(&path, format!("{text}\n"))
                    .with_context(|| format!("writing `{}`", path.display()))?,
                None => out!("{text}"),
            }
            eprintln!(
                "bundled {} entries of agent `{agent}` since {from}, proven against the signed checkpoint",
                bundle.entries.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading `{}`", file.display()))?;
            let bundle: incident::Bundle = match serde_json::from_str(&text) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!(
                        "FAILED: `{}` is not an incident bundle: {e}",
                        file.display()
                    );
                    return Ok(ExitCode::from(1));
                }
            };
            match incident::verify(&bundle, &v) {
                Ok(ok) => {
                    out!(
                        "ok: {} decisions, {} receipts, {} events of agent `{}` since {}, all in the log at checkpoint size {} root {}",
                        ok.counts.0,
                        ok.counts.1,
                        ok.counts.2,
                        bundle.agent,
                        bundle.since,
                        ok.size,
                        ok.root
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
