//! What the MCP benchmarks share: child processes, ports, and the benchmark's manifest.

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The benchmark's manifest: one agent allowed `everything.echo` on the upstream `everything`,
/// whose connection (`url: ...` or `command: ...`, indented) is `upstream`.
pub fn manifest(upstream: &str) -> String {
    format!(
        r#"version: 1
risk_tiers:
  low: {{ approval: {{ mode: auto }} }}
trust:
  intern: {{ autonomous: [low] }}
  junior: {{ autonomous: [low] }}
  senior: {{ autonomous: [low] }}
  principal: {{ autonomous: [low] }}
tenants: [{{ id: bench }}]
zones: [{{ id: z }}]
agents:
  - {{ id: bench-agent, tenant: bench, owner: bench@example.org, zone: z, trust: senior }}
tools:
  - name: everything.echo
    tier: low
    zones: ["*"]
    arguments:
      type: object
      properties: {{ message: {{ type: string }} }}
      required: [message]
      additionalProperties: false
policies: [policies/base.cedar]
upstreams:
  - name: everything
{upstream}
"#
    )
}
