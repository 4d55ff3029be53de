//! `warden approvals list|show|approve|deny` (through the admin listener; votes signed with the
//! approver's own key) and `warden approvers keygen ID`.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::process::ExitCode;
use warden_identity::approval::{Request, Verdict};

#[derive(Debug, clap::Args)]
pub struct Admin {
    /// Data directory (holds the admin token).
    #[arg(long, default_value = ".warden")]
    pub(super) data: PathBuf,
    /// The gateway's admin listener.
    #[arg(long, default_value = "127.0.0.1:8701")]
    pub(super) admin: std::net::SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct Signer {
    /// Who approves (an approver id from the manifest).
    #[arg(long)]
    approver: String,
    /// The approver's private key (default `DATA/keys/approvers/<approver>.key`).
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List approval requests, newest first.
    List {
        #[command(flatten)]
        admin: Admin,
    },
    /// Show one request: the exact call, what it needs, the preview, the votes.
    Show {
        /// Approval id (`apr_...`).
        id: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Approve a request, signed with the approver's key.
    Approve {
        /// Approval id.
        id: String,
        #[command(flatten)]
        signer: Signer,
        #[command(flatten)]
        admin: Admin,
    },
    /// Deny a request (final), signed with the approver's key.
    Deny {
        /// Approval id.
        id: String,
        #[command(flatten)]
        signer: Signer,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum Approvers {
    /// Create an approver's Ed25519 key (0600) and print the manifest entry with its public key.
    Keygen {
        /// Approver id (an agent's `owner` names the approver with the same id).
        id: String,
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
        /// Replace an existing key (the old one is kept as `<id>.key.old`); put the new public
        /// key in the manifest and reload it.
        #[arg(long)]
        rotate: bool,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::List { admin } => {
            let body = get(&admin, "/admin/v1/approvals")?;
            out!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, admin } => {
            let body = get(&admin, &format!("/admin/v1/approvals/{}", path_id(&id)?))?;
            out!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { id, signer, admin } => vote(&admin, &signer, &id, Verdict::Approve),
        Command::Deny { id, signer, admin } => vote(&admin, &signer, &id, Verdict::Deny),
    }
}

pub fn run_approvers(c: Approvers) -> anyhow::Result<ExitCode> {
    match c {
        Approvers::Keygen { id, data, rotate } => {
            let public = warden_runtime::approvals::create_approver_key(&data, &id, rotate)?;
            eprintln!(
                "approver key written to {} (0600); add this entry to the manifest's `approvers`:",
                warden_runtime::approvals::approver_key_path(&data, &id).display()
            );
            out!("  - {{ id: {id}, roles: [], key: \"{public}\" }}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An id safe to put in a URL path.
fn path_id(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("`{id}` is not an approval id (apr_ and hex digits)");
    }
    Ok(id)
}

/// POSTs `body` to the admin listener and prints its answer: exit 0 on 200, else 1 with the
/// refusal on stderr.
pub(super) fn post(admin: &Admin, path: &str, body: Option<&str>) -> anyhow::Result<ExitCode> {
    let (status, answer) = super::brakes::admin_call(&admin.data, admin.admin, "POST", path, body)?;
    if status != 200 {
        eprintln!("refused ({status}): {answer}");
        return Ok(ExitCode::from(1));
    }
    out!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn get(admin: &Admin, path: &str) -> anyhow::Result<String> {
    let (status, body) = super::brakes::admin_call(&admin.data, admin.admin, "GET", path, None)?;
    if status != 200 {
        bail!("the gateway refused ({status}): {body}");
    }
    Ok(body)
}

/// Fetches the request, shows what is being signed, signs the vote with the approver's key and
/// sends it.
fn vote(admin: &Admin, signer: &Signer, id: &str, verdict: Verdict) -> anyhow::Result<ExitCode> {
    let path = format!("/admin/v1/approvals/{}", path_id(id)?);
    let request: Request = serde_json::from_str(&get(admin, &path)?)
        .context("the gateway's answer is not an approval request")?;
    let key_path = signer.key.clone().unwrap_or_else(|| {
        warden_runtime::approvals::approver_key_path(&admin.data, &signer.approver)
    });
    let key = warden_runtime::approvals::load_approver_key(&key_path)?;
    let b = &request.binding;
    eprintln!(
        "{} {id}: agent `{}` (owner {}, tenant {}) calls `{}` in session `{}`, arguments {}, manifest version {}",
        verdict.as_str(),
        b.agent,
        b.owner,
        b.tenant,
        b.tool,
        b.session,
        b.arguments_hash,
        b.manifest_version
    );
    if !request.preview.is_null() {
        eprintln!("preview: {}", request.preview);
    }
    let signed = warden_identity::approval::sign(
        &key,
        &request,
        verdict,
        &signer.approver,
        warden_runtime::now_unix_ms(),
    )?;
    let body = serde_json::to_string(&signed)?;
    post(admin, &format!("{path}/votes"), Some(&body))
}
