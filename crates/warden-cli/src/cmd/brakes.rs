//! `warden kill|quarantine|lockdown|resume`: the brakes, through the gateway's admin listener
//! (authenticated with `DATA/keys/admin.token`).

use anyhow::{bail, Context as _};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Data directory (holds the admin token).
    #[arg(long, default_value = ".warden")]
    data: PathBuf,
    /// The gateway's admin listener.
    #[arg(long, default_value = "127.0.0.1:8701")]
    admin: SocketAddr,
    /// Why (recorded in the ledger and shown in every decision the hold causes).
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, clap::Args)]
pub struct Scope {
    /// Only this tenant.
    #[arg(long, conflicts_with = "agent")]
    tenant: Option<String>,
    /// Only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only this session of `--agent` (as the decision that paused it names it; an MCP client
    /// on revision 2026-07-28 has one per credential, `mcp:<credential id>`).
    #[arg(long, requires = "agent")]
    session: Option<String>,
}

impl Scope {
    pub fn json(&self) -> serde_json::Value {
        match (&self.tenant, &self.agent, &self.session) {
            (Some(t), _, _) => serde_json::json!({ "scope": "tenant", "id": t }),
            (_, Some(a), Some(s)) => serde_json::json!({
                "scope": "session",
                "id": warden_policy::decide::session_key(a, s),
            }),
            (_, Some(a), None) => serde_json::json!({ "scope": "agent", "id": a }),
            _ => serde_json::json!({ "scope": "global" }),
        }
    }
}

/// Sends one request to the admin listener with the admin token; the status and body.
pub fn admin_call(
    data: &std::path::Path,
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let token = warden_runtime::operator::read_token(data)?;
    let body = body.unwrap_or("");
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {admin}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    s.write_all(request.as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, answer) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP answer from {admin}"))?;
    Ok((status, answer.trim().to_owned()))
}

/// Sends one hold change; prints the gateway's answer.
pub fn send(t: &Target, action: &str, scope: serde_json::Value) -> anyhow::Result<ExitCode> {
    let body =
        serde_json::json!({ "action": action, "scope": scope, "reason": t.reason }).to_string();
    let (status, answer) = admin_call(&t.data, t.admin, "POST", "/admin/v1/holds", Some(&body))?;
    if status != 200 {
        bail!("the gateway refused: {status} {answer}");
    }
    out!("{answer}");
    // Applied, but the ledger did not record it: the audit trail has a gap the operator must
    // hear of (a lifted kill with no record of who lifted it).
    let recorded = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v.get("recorded").and_then(serde_json::Value::as_bool));
    if recorded == Some(false) {
        eprintln!("warning: `{action}` took effect but the ledger did not record it (see the gateway's log)");
        return Ok(ExitCode::from(NOT_RECORDED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a hold change that took effect but was not recorded.
const NOT_RECORDED: u8 = 3;
