//! `warden manifest validate|hash|diff|schema`.

use std::path::PathBuf;
use std::process::ExitCode;
use warden_policy::diff::Impact;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a manifest and its policies; print every error with file, line and key path.
    Validate {
        /// The manifest.
        file: PathBuf,
    },
    /// Print the bundle hash (manifest plus policy files) that decisions cite.
    Hash {
        /// The manifest.
        file: PathBuf,
    },
    /// Show what changed between two manifests, calling out every loosening.
    Diff {
        /// The current manifest.
        old: PathBuf,
        /// The proposed manifest.
        new: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the manifest's JSON Schema (generated from its types).
    Schema,
    /// Propose the next manifest version: a staged FILE beside the served manifest (its file
    /// name is sent; the gateway reads it from its manifest's directory), or without FILE the
    /// served manifest as it is now on disk. Opens the governance approval request, whose
    /// preview is the diff. Once approved (`warden approvals approve ID`), install the staged
    /// file as the manifest and reload the gateway (SIGHUP).
    Propose {
        /// The staged manifest (in the served manifest's directory).
        file: Option<PathBuf>,
        #[command(flatten)]
        admin: super::approvals::Admin,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Propose { file, admin } => {
            let body = match &file {
                Some(f) => {
                    let name = f
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| anyhow::anyhow!("`{}` has no file name", f.display()))?;
                    Some(serde_json::json!({ "file": name }).to_string())
                }
                None => None,
            };
            super::approvals::post(&admin, "/admin/v1/governance/proposals", body.as_deref())
        }
        Command::Validate { file } => {
            match warden_runtime::bundle::load_governor(&file).and_then(|g| {
                warden_runtime::bundle::check_upstream_files(&file, g.manifest()).map(|()| g)
            }) {
                Ok(g) => {
                    let m = g.manifest();
                    out!(
                        "ok: {} (version {}, {} tiers, {} agents, {} tools, {} policies, {})",
                        file.display(),
                        m.version,
                        m.tiers.len(),
                        m.agents.len(),
                        m.tools.len(),
                        g.cedar().policy_count,
                        g.policy_hash()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    super::print_load_error(&e);
                    eprintln!("{} error(s)", e.diagnostics.len());
                    Ok(ExitCode::from(super::EXIT_INPUT))
                }
            }
        }
        Command::Hash { file } => match warden_runtime::bundle::hash_bundle(&file) {
            Ok(h) => {
                out!("{h}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                super::print_load_error(&e);
                Ok(ExitCode::from(super::EXIT_INPUT))
            }
        },
        Command::Diff { old, new, json } => {
            let load = |p: &PathBuf| {
                warden_runtime::bundle::load_manifest(p).inspect_err(super::print_load_error)
            };
            let (Ok(a), Ok(b)) = (load(&old), load(&new)) else {
                return Ok(ExitCode::from(super::EXIT_INPUT));
            };
            let changes = warden_policy::diff::diff(&a, &b);
            let (ha, hb) = (
                warden_runtime::bundle::hash_bundle(&old),
                warden_runtime::bundle::hash_bundle(&new),
            );
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "old_hash": json_hash(&ha).0, "old_hash_error": json_hash(&ha).1,
                        "new_hash": json_hash(&hb).0, "new_hash_error": json_hash(&hb).1,
                        "changes": changes,
                    }))?
                );
            } else {
                out!("bundle {} -> {}", shown(&ha), shown(&hb));
                let loosened = changes
                    .iter()
                    .filter(|c| c.impact == Impact::Loosened)
                    .count();
                for c in &changes {
                    let mark = match c.impact {
                        Impact::Loosened => "! LOOSENED ",
                        Impact::Tightened => "  tightened",
                        Impact::Changed => "  changed  ",
                    };
                    out!("{mark} {}: {}", c.path, c.message);
                }
                if loosened > 0 {
                    out!("{loosened} change(s) loosen what agents may do: review them before deploying");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            out!(
                "{}",
                serde_json::to_string_pretty(&warden_policy::raw::manifest_json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The hash as text, or why there is none.
fn shown(h: &Result<String, warden_policy::LoadError>) -> String {
    match h {
        Ok(h) => h.clone(),
        Err(e) => {
            let first = e
                .diagnostics
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!("(no bundle hash: {first})")
        }
    }
}

/// The hash for JSON: the hash or `null`, and the reason or `null`.
fn json_hash(
    h: &Result<String, warden_policy::LoadError>,
) -> (serde_json::Value, serde_json::Value) {
    match h {
        Ok(h) => (
            serde_json::Value::String(h.clone()),
            serde_json::Value::Null,
        ),
        Err(e) => (
            serde_json::Value::Null,
            serde_json::Value::String(e.to_string()),
        ),
    }
}
