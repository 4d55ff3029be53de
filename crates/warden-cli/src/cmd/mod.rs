//! Subcommands.

/// `println!` that does not panic when stdout is closed early (`warden check ... | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod agents;
mod approvals;
mod brakes;
mod bridge;
mod bridge_notices;
mod check;
mod incident;
mod init;
mod keys;
mod ledger;
mod manifest;
mod replay;
mod sandbox;
mod serve;
mod upstreams;
mod witness;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit code for a usage or input error (also clap's).
pub const EXIT_INPUT: u8 = 2;

/// Warden: a governance gateway for AI agents.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a working starter manifest and Cedar policy into DIR.
    Init(init::Args),
    /// Run the gateway (HTTP API, MCP at /mcp) on its embedded defaults.
    Serve(serve::Args),
    /// Serve one agent over MCP stdio (for desktop clients that launch their servers).
    Stdio(serve::StdioArgs),
    /// Run the built-in demo MCP server on stdio (the starter manifest's upstream).
    DemoServer,
    /// (Internal) The MCP server behind a manifest's `process` tools, run in their sandbox.
    #[command(hide = true)]
    ProcessServer {
        /// The tools (JSON, as the manifest's validation writes it).
        #[arg(long)]
        tools: String,
    },
    /// Pin upstream executables and tool descriptions (INV-023).
    #[command(subcommand)]
    Upstreams(upstreams::Command),
    /// Decide one proposal offline and print the decision as JSON.
    ///
    /// Exit status: 0 allow, 1 deny, 3 escalate, 2 usage or input error.
    Check(check::Args),
    /// Decide recorded sessions again under a manifest: each trace (JSON lines: id, task,
    /// steps with tool, arguments and output) as a fresh session, one decision per step as a
    /// JSON line (`trace`, `step`, `tool`, `decision`, `rules`, `reason`).
    Replay(replay::Args),
    /// Validate, hash, compare and describe manifests.
    #[command(subcommand)]
    Manifest(manifest::Command),
    /// Read, prove and verify the Witness ledger (verify, tail, show, export, prove,
    /// consistency, checkpoint).
    Ledger(ledger::Args),
    /// Enrol and revoke agents (credentials for the signed-proposal API).
    #[command(subcommand)]
    Agents(agents::Command),
    /// Approval requests of escalated calls: list, show, approve, deny (signed by the approver).
    #[command(subcommand)]
    Approvals(approvals::Command),
    /// Approvers' keys.
    #[command(subcommand)]
    Approvers(approvals::Approvers),
    /// Incident bundles: an agent's decisions, receipts and events with their ledger proofs
    /// (export, verify offline).
    Incident(incident::Args),
    /// Manage keys (rotation).
    #[command(subcommand)]
    Keys(keys::Command),
    /// The sandbox of everything the Executor runs: `doctor` says what this host enforces.
    #[command(subcommand)]
    Sandbox(sandbox::Command),
    /// A witness for Warden ledgers, run outside the gateway's data directory: it cosigns
    /// checkpoints only while each extends the last (rollbacks and forks are caught).
    #[command(subcommand)]
    Witness(witness::Command),
    /// Kill switch: stop every new call (or a tenant's, or an agent's) at once.
    Kill {
        #[command(flatten)]
        scope: brakes::Scope,
        #[command(flatten)]
        target: brakes::Target,
    },
    /// Freeze an agent's sessions for inspection.
    Quarantine {
        /// The agent.
        agent: String,
        #[command(flatten)]
        target: brakes::Target,
    },
    /// Freeze a whole tenant.
    Lockdown {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        target: brakes::Target,
    },
    /// Lift the holds on a scope (global without --tenant/--agent; a paused session with
    /// --agent and --session).
    Resume {
        #[command(flatten)]
        scope: brakes::Scope,
        #[command(flatten)]
        target: brakes::Target,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Stdio(a) => serve::stdio(a),
        Command::Upstreams(c) => upstreams::run(c),
        Command::DemoServer => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(warden_upstreams::demo::serve_stdio())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ProcessServer { tools } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(warden_upstreams::process::serve_stdio(&tools))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => check::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Manifest(c) => manifest::run(c),
        Command::Ledger(a) => ledger::run(a),
        Command::Agents(c) => agents::run(c),
        Command::Approvals(c) => approvals::run(c),
        Command::Approvers(c) => approvals::run_approvers(c),
        Command::Incident(a) => incident::run(a),
        Command::Keys(c) => keys::run(c),
        Command::Sandbox(c) => sandbox::run(c),
        Command::Witness(c) => witness::run(c),
        Command::Kill { scope, target } => brakes::send(&target, "kill", scope_json(&scope)),
        Command::Quarantine { agent, target } => brakes::send(
            &target,
            "quarantine",
            serde_json::json!({ "scope": "agent", "id": agent }),
        ),
        Command::Lockdown { tenant, target } => brakes::send(
            &target,
            "lockdown",
            serde_json::json!({ "scope": "tenant", "id": tenant }),
        ),
        Command::Resume { scope, target } => brakes::send(&target, "resume", scope_json(&scope)),
    }
}

fn scope_json(s: &brakes::Scope) -> serde_json::Value {
    s.json()
}

/// Prints every diagnostic of a load error to stderr.
pub fn print_load_error(e: &warden_policy::LoadError) {
    for d in &e.diagnostics {
        eprintln!("error: {d}");
    }
}
