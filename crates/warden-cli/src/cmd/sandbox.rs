//! `warden sandbox`: what the sandbox provides on this host (`doctor`), and the helper stages
//! the Executor runs (`exec`, `forward`; not for people).

use std::process::ExitCode;
use warden_sandbox::spec::{summarise, Layer, Spec, Status};
use warden_sandbox::stage::EXIT_REFUSED;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print, for each guarantee (filesystem, egress, privilege, limits, kill), the mechanism
    /// that provides it on this host: enforced, degraded or absent, and why.
    ///
    /// Exit status: 0 when every guarantee is enforced, 1 otherwise.
    Doctor {
        /// Print the layers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// (Internal) Enter the sandbox described by --spec and become its program.
    #[command(hide = true)]
    Exec {
        /// The launch specification (JSON).
        #[arg(long, required_unless_present = "spec_fd")]
        spec: Option<String>,
        /// A descriptor to read the launch specification from (emptied once read).
        #[arg(long, conflicts_with = "spec")]
        spec_fd: Option<i32>,
        /// The inner stage (inside bubblewrap).
        #[arg(long)]
        inner: bool,
    },
    /// (Internal) The egress forwarder inside a sandbox.
    #[command(hide = true)]
    Forward {
        /// Loopback port to listen on.
        #[arg(long)]
        port: u16,
        /// The egress proxy's Unix socket.
        #[arg(long)]
        socket: std::path::PathBuf,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Doctor { json } => doctor(json),
        Command::Exec {
            spec,
            spec_fd,
            inner,
        } => {
            let spec = match (spec, spec_fd) {
                (Some(s), _) => s,
                (None, Some(fd)) => match warden_sandbox::stage::spec_from_fd(fd) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("warden {e}");
                        return Ok(ExitCode::from(EXIT_REFUSED));
                    }
                },
                (None, None) => String::new(),
            };
            Ok(exec(&spec, inner))
        }
        Command::Forward { port, socket } => {
            warden_sandbox::forward::run(port, &socket)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a stage. It returns only when it did not become the program: with the report, or
/// with the reason the launch was refused (exit 126, like a shell's "cannot execute").
fn exec(spec: &str, inner: bool) -> ExitCode {
    let spec: Spec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warden sandbox: the spec is not valid: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let outcome = if inner {
        warden_sandbox::stage::inner(spec)
    } else {
        warden_sandbox::stage::outer(spec)
    };
    match outcome {
        Ok(layers) => match serde_json::to_string(&layers) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warden sandbox: {e}");
                ExitCode::from(EXIT_REFUSED)
            }
        },
        Err(e) => {
            eprintln!("warden {e}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

fn doctor(json: bool) -> anyhow::Result<ExitCode> {
    let host = warden_sandbox::Host::probe(std::env::current_exe()?);
    let layers: Vec<Layer> = warden_sandbox::doctor(&host)?;
    let summary = summarise(&layers);
    if json {
        let out = serde_json::json!({
            "guarantees": summary.iter().map(|(g, s)| (g.name(), s.name())).collect::<std::collections::BTreeMap<_, _>>(),
            "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (g, status) in &summary {
            println!("{:<11} {}", g.name(), status.name().to_uppercase());
            for l in layers.iter().filter(|l| l.guarantee == *g) {
                println!("    {:<9} {}: {}", l.status.name(), l.mechanism, l.detail);
            }
        }
    }
    let all = summary.iter().all(|(_, s)| *s == Status::Enforced);
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
