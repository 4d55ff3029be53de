//! `warden replay --manifest M TRACES.jsonl > DECISIONS.jsonl`: recorded sessions decided again.

use anyhow::Context as _;
use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use warden_runtime::replay::{replay_trace, Trace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest to decide under.
    #[arg(long)]
    manifest: PathBuf,
    /// The agent each trace runs as (default: the manifest's only agent).
    #[arg(long)]
    agent: Option<String>,
    /// Decide as if at this Unix time (seconds) instead of now.
    #[arg(long)]
    now: Option<i64>,
    /// The traces: one JSON object per line (`{"id", "task", "steps": [{"tool", "arguments",
    /// "output"}]}`), or `-` for standard input.
    traces: PathBuf,
}

/// The longest trace line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let governor = match warden_runtime::bundle::load_governor(&a.manifest) {
        Ok(g) => g,
        Err(e) => {
            super::print_load_error(&e);
            return Ok(ExitCode::from(super::EXIT_INPUT));
        }
    };
    let agent = match a.agent {
        Some(x) => x,
        None => {
            let agents = &governor.manifest().agents;
            let mut ids = agents.keys();
            match (ids.next(), ids.next()) {
                (Some(only), None) => only.clone(),
                _ => anyhow::bail!(
                    "the manifest has {} agents: name the one to replay as with --agent",
                    agents.len()
                ),
            }
        }
    };
    let redactor =
        warden_executor::Redactor::new(std::iter::empty()).context("building the redactor")?;
    let now = a.now.unwrap_or_else(warden_runtime::now_unix);
    let input: Box<dyn std::io::BufRead> = if a.traces.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.traces)
                .with_context(|| format!("opening `{}`", a.traces.display()))?,
        ))
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            anyhow::bail!("line {}: longer than {MAX_LINE} bytes", n + 1);
        }
        let trace: Trace =
            serde_json::from_str(&line).with_context(|| format!("line {}: not a trace", n + 1))?;
        let decisions = replay_trace(&governor, &redactor, &agent, &trace, now)
            .with_context(|| format!("line {}", n + 1))?;
        for d in decisions {
            serde_json::to_writer(&mut out, &d)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
