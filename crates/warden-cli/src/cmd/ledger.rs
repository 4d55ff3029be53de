//! `warden ledger`: read, prove and verify the Witness ledger. Every subcommand only reads; it
//! can run beside a serving gateway.

use anyhow::{bail, Context as _};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use warden_ledger::file::Mode;
use warden_ledger::merkle::{leaf_hash, to_hex};
use warden_ledger::note::Checkpoint;
use warden_ledger::{proof, verify, LedgerStore, NoteVerifier};
use warden_runtime::witness;

#[derive(Debug, clap::Args)]
pub struct Where {
    /// Data directory holding `ledger/` and `keys/ledger.pub`.
    #[arg(long, default_value = ".warden", global = true)]
    data: PathBuf,
    /// Read the ledger from PostgreSQL instead of DATA/ledger.
    #[arg(
        long,
        value_name = "URL",
        env = "WARDEN_LEDGER_POSTGRES",
        global = true
    )]
    postgres: Option<String>,
    /// The ledger's public key (a file, or the key itself); defaults to DATA/keys/ledger.pub.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    place: Where,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Recompute everything and check it against the signed checkpoint.
    ///
    /// Exit status 0 if the log verifies; 1 naming the first bad entry (or the checkpoint)
    /// and what is wrong; 3 if every entry checks out but the newest come after the latest
    /// signed checkpoint (an unsigned tail: no signature vouches for them).
    Verify {
        /// Also prove the log extends this older checkpoint (a signed note you kept).
        #[arg(long, value_name = "FILE")]
        from_checkpoint: Option<PathBuf>,
        /// Verify an export file instead of the stored ledger (needs only the public key).
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        /// Also decode every record and check its canonical form (slower; exports always are).
        #[arg(long)]
        records: bool,
        /// Also prove the log extends the latest checkpoint this witness cosigned (URL#KEY,
        /// as for `serve --witness`): a log rolled back or forked since fails.
        #[arg(long, value_name = "URL#KEY", value_parser = boxed_witness, conflicts_with_all = ["from_checkpoint", "export"])]
        witness: Option<Box<warden_runtime::witnessing::WitnessTarget>>,
    },
    /// Print the last entries as JSON Lines.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
    },
    /// Print one entry with its leaf hash.
    Show {
        /// The entry's index.
        index: u64,
    },
    /// Write the entries the latest checkpoint covers, and the checkpoint, as JSON Lines.
    Export {
        /// Write here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print an inclusion proof for an entry as JSON.
    Prove {
        /// The entry's index.
        index: u64,
        /// Tree size to prove against; defaults to the latest checkpoint's.
        #[arg(long)]
        size: Option<u64>,
    },
    /// Print a consistency proof between two tree sizes as JSON.
    Consistency {
        /// The older size.
        old_size: u64,
        /// The newer size.
        new_size: u64,
    },
    /// Print the latest signed checkpoint.
    Checkpoint,
}

/// `ledger verify`'s exit code when every entry checks out but some come after the latest
/// signed checkpoint (0: all verified; 1: verification failed).
pub const VERIFY_UNSIGNED_TAIL: u8 = 3;

pub(super) fn verifier(place: &Where) -> anyhow::Result<NoteVerifier> {
    let path = place
        .key
        .clone()
        .unwrap_or_else(|| witness::pub_path(&place.data));
    Ok(witness::load_verifier(&path)?)
}

pub(super) fn open(place: &Where, v: &NoteVerifier) -> anyhow::Result<Box<dyn LedgerStore>> {
    witness::open_store(
        &place.data,
        place.postgres.as_deref(),
        v.name(),
        Mode::ReadOnly,
    )
    .with_context(|| format!("opening the ledger in `{}`", place.data.display()))
}

fn latest(s: &mut dyn LedgerStore, v: &NoteVerifier) -> anyhow::Result<(String, Checkpoint)> {
    let note = s
        .latest_checkpoint()?
        .context("the ledger has no signed checkpoint yet")?;
    let cp = Checkpoint::open(&note, v, v.name()).context("the latest checkpoint")?;
    Ok((note, cp))
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    let _ = writeln!(out);
    Ok(())
}

fn entry_json(index: u64, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    let entry: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("entry {index} is not JSON"))?;
    Ok(serde_json::json!({
        "index": index,
        "leaf_hash": to_hex(&leaf_hash(bytes)),
        "entry": entry,
    }))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let v = verifier(&a.place)?;
    match a.command {
        Command::Verify {
            from_checkpoint,
            export,
            records,
            witness,
        } => {
            let mut older = from_checkpoint
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading `{}`", p.display()))
                })
                .transpose()?;
            if let Some(w) = &witness {
                match witnessed(w, v.name()) {
                    Ok((note, time)) => {
                        out!(
                            "witness {} cosigned this log's checkpoint at {} (Unix seconds)",
                            w.key.name(),
                            time
                        );
                        older = Some(note);
                    }
                    Err(e) => {
                        eprintln!(
                            "ledger verification FAILED: witness {}: {e:#}",
                            w.key.name()
                        );
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            let result = if let Some(path) = export {
                if older.is_some() {
                    bail!("--from-checkpoint applies to the stored ledger, not to --export");
                }
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("opening `{}`", path.display()))?;
                verify::verify_export(&mut std::io::BufReader::new(f), &v)
            } else {
                let mut s = match open(&a.place, &v) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("ledger verification FAILED: {e:#}");
                        return Ok(ExitCode::from(1));
                    }
                };
                verify::verify_store(&mut *s, &v, older.as_deref(), records)
            };
            match result {
                Ok(report) if report.unsigned > 0 => {
                    // INVARIANT (verify vouches only for what is signed): entries after the
                    // signed checkpoint are reported apart, with their own exit code.
                    let signed = if report.signed {
                        format!(
                            "{} entries verified against the signed checkpoint at size {} root {}",
                            report.checkpoint_size, report.checkpoint_size, report.checkpoint_root
                        )
                    } else {
                        "the ledger has no signed checkpoint yet".to_owned()
                    };
                    out!(
                        "UNSIGNED TAIL: {signed}; the {} entries after it are intact but no \
                         signature covers them (a gateway stopped before its next checkpoint, \
                         or entries appended by someone who can write the data directory)",
                        report.unsigned
                    );
                    Ok(ExitCode::from(VERIFY_UNSIGNED_TAIL))
                }
                Ok(report) => {
                    out!(
                        "ok: {} entries verified; signed checkpoint at size {} root {}{}",
                        report.entries,
                        report.checkpoint_size,
                        report.checkpoint_root,
                        report
                            .extends_checkpoint
                            .map(|s| format!("; extends the checkpoint at size {s}"))
                            .unwrap_or_default()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("ledger verification FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Tail { lines } => {
            let mut s = open(&a.place, &v)?;
            let size = s.size()?;
            let mut out = std::io::stdout().lock();
            let mut err = None;
            s.scan(size.saturating_sub(lines), size, &mut |i, b| {
                match entry_json(i, b) {
                    Ok(j) => {
                        let _ = writeln!(out, "{j}");
                    }
                    Err(e) => err = Some(e),
                }
                Ok(())
            })?;
            err.map_or(Ok(ExitCode::SUCCESS), Err)
        }
        Command::Show { index } => {
            let mut s = open(&a.place, &v)?;
            let bytes = proof::entry_checked(&mut *s, index)?;
            print_json(&entry_json(index, &bytes)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { out } => {
            let mut s = open(&a.place, &v)?;
            let n = match out {
                Some(path) => {
                    let f = std::fs::File::create(&path)
                        .with_context(|| format!("creating `{}`", path.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = verify::export(&mut *s, &mut w)?;
                    w.flush()?;
                    n
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    let n = verify::export(&mut *s, &mut w)?;
                    w.flush()?;
                    n
                }
            };
            eprintln!("exported {n} entries and the checkpoint that covers them");
            Ok(ExitCode::SUCCESS)
        }
        Command::Prove { index, size } => {
            let mut s = open(&a.place, &v)?;
            let (note, cp) = latest(&mut *s, &v)?;
            let size = size.unwrap_or(cp.size);
            let p = proof::inclusion(&mut *s, index, size)?;
            let mut j = serde_json::to_value(&p)?;
            if let (true, Some(obj)) = (size == cp.size, j.as_object_mut()) {
                obj.insert("checkpoint".into(), note.into());
            }
            print_json(&j)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Consistency { old_size, new_size } => {
            let mut s = open(&a.place, &v)?;
            print_json(&proof::consistency(&mut *s, old_size, new_size)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoint => {
            let mut s = open(&a.place, &v)?;
            let (note, _) = latest(&mut *s, &v)?;
            print!("{note}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A `--witness` value, boxed (it is by far the largest argument of any subcommand).
fn boxed_witness(
    s: &str,
) -> Result<
    Box<warden_runtime::witnessing::WitnessTarget>,
    warden_runtime::witnessing::WitnessTargetError,
> {
    s.parse().map(Box::new)
}

/// The latest checkpoint `w` cosigned for the log `origin`, its cosignature verified, and when
/// it was made.
fn witnessed(
    w: &warden_runtime::witnessing::WitnessTarget,
    origin: &str,
) -> anyhow::Result<(String, u64)> {
    let url = format!(
        "{}/{}/checkpoint",
        w.url,
        warden_ledger::witness::origin_hash(origin)
    );
    let client = warden_executor::tls::http_client(&w.url, None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, note) = rt.block_on(async {
        let resp = client
            .get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?;
        let status = resp.status().as_u16();
        anyhow::Ok((status, resp.text().await?))
    })?;
    anyhow::ensure!(
        status == 200,
        "asked for its checkpoint: {status} {}",
        note.trim()
    );
    let time = w.key.verify(&note).context("its cosignature")?;
    Ok((note, time))
}
