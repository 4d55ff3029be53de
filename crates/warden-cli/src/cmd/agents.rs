//! `warden agents enroll|revoke`: agent credentials issued and revoked from the data directory.

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Issue a credential for an agent listed in the manifest (and a new key for it).
    ///
    /// Writes DATA/agents/ID.credential and DATA/agents/ID.key (both 0600).
    Enroll {
        /// The agent's id in the manifest.
        id: String,
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
        /// The manifest; defaults to DATA/manifest.yaml.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// How long the credential is valid, in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: i64,
    },
    /// Derive a narrower credential for a sub-agent `PARENT.NAME` from PARENT's credential and
    /// key (never more tools, trust or time than PARENT holds). The sub-agent must also be
    /// listed in the manifest to act.
    Derive {
        /// The parent agent (its credential and key are in DATA/agents/).
        parent: String,
        /// The sub-agent's name inside the parent's namespace.
        #[arg(long)]
        name: String,
        /// Tools the sub-agent may call (comma-separated); default: the parent's.
        #[arg(long, value_delimiter = ',')]
        tools: Option<Vec<String>>,
        /// Trust level (intern, junior, senior, principal); default: the parent's.
        #[arg(long)]
        trust: Option<String>,
        /// How long it is valid, in hours (never beyond the parent's expiry).
        #[arg(long, default_value_t = 1)]
        ttl_hours: i64,
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
    },
    /// Print what DATA/agents/ID.credential says (its id, for revoking that one credential;
    /// tenant, owner, trust, tools, expiry). Reads only; verifies nothing.
    Show {
        /// The agent's id.
        id: String,
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
    },
    /// Promote an agent one trust level (criteria from the manifest's `promotion`, and the
    /// `governance` approvers' approval), or restore a demoted one (the approval alone). Run it,
    /// have the approval it names approved, run it again.
    Promote {
        /// The agent's id.
        id: String,
        #[command(flatten)]
        admin: super::approvals::Admin,
    },
    /// Revoke an agent and every credential derived from it (or one credential, by id).
    Revoke {
        /// The agent's id (or, with --credential, a credential id).
        id: String,
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
        /// ID is a credential id, not an agent id.
        #[arg(long)]
        credential: bool,
        /// The fleet's shared state (as for `serve --state`): the revocation goes there,
        /// and every instance applies it.
        #[arg(long, value_name = "redis://...", env = "WARDEN_STATE")]
        state: Option<String>,
        /// The prefix of the fleet's keys in that Redis.
        #[arg(long, value_name = "PREFIX", env = "WARDEN_STATE_PREFIX", default_value = warden_runtime::runtime::DEFAULT_STATE_PREFIX)]
        state_prefix: String,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Enroll {
            id,
            data,
            manifest,
            ttl_hours,
        } => {
            let manifest = manifest.unwrap_or_else(|| data.join("manifest.yaml"));
            let m = match warden_runtime::bundle::load_manifest(&manifest) {
                Ok(m) => m,
                Err(e) => {
                    super::print_load_error(&e);
                    return Ok(ExitCode::from(super::EXIT_INPUT));
                }
            };
            let ttl = ttl_hours
                .checked_mul(3600)
                .filter(|t| *t > 0)
                .context("--ttl-hours must be positive")?;
            let existing = data.join("agents").join(format!("{id}.credential"));
            let replaced = existing.exists();
            let path =
                warden_runtime::agents::enroll(&data, &m, &id, warden_runtime::now_unix(), ttl)?;
            out!(
                "enrolled `{id}`: credential {} (key beside it), valid {ttl_hours} h",
                path.display()
            );
            if replaced {
                // The old credential is not revoked: whoever holds it can use it until it
                // expires. Saying so beats a silent swap.
                eprintln!(
                    "note: replaced the credential that was in {}; the old one stays valid until \
                     it expires unless you revoke it (warden agents revoke ID --credential)",
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Derive {
            parent,
            name,
            tools,
            trust,
            ttl_hours,
            data,
        } => {
            let ttl = ttl_hours
                .checked_mul(3600)
                .filter(|t| *t > 0)
                .context("--ttl-hours must be positive")?;
            let path = warden_runtime::agents::derive(
                &data,
                &parent,
                &name,
                tools.map(|t| t.into_iter().collect()),
                trust,
                warden_runtime::now_unix(),
                ttl,
            )?;
            out!(
                "derived `{parent}.{name}`: credential {} (key beside it)",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote { id, admin } => {
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
            {
                anyhow::bail!("`{id}` is not an agent id");
            }
            super::approvals::post(&admin, &format!("/admin/v1/agents/{id}/promote"), None)
        }
        Command::Show { id, data } => {
            let path = data.join("agents").join(format!("{id}.credential"));
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("reading `{}`", path.display()))?;
            let cred = warden_identity::Credential::from_token(&token)
                .with_context(|| format!("`{}` is not a credential", path.display()))?;
            out!("{}", serde_json::to_string_pretty(&cred.body)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke {
            id,
            data,
            credential,
            state,
            state_prefix,
        } => {
            let kind = if credential { "credential" } else { "agent" };
            let shared = state.as_deref().map(|url| (url, state_prefix.as_str()));
            warden_runtime::agents::revoke(&data, shared, kind, &id)?;
            out!("revoked {kind} `{id}` (a running gateway applies it on the next request)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
