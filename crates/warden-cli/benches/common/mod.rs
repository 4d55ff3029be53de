//! What the MCP benchmarks share: child processes, ports, and the benchmark's manifest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub use warden_testkit::free_port;

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

/// The benchmark's working directory (`WARDEN_BENCH_DATA`, or a temporary one, returned to be
/// kept alive) with the allow-all policy the manifest names.
pub fn bench_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = std::env::var("WARDEN_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/base.cedar"),
        "@id(\"all\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    (tmp, dir)
}

/// `server-everything` in its Streamable HTTP mode, and its port.
pub fn everything_http(everything: &Path) -> (Proc, u16) {
    let port = free_port();
    let upstream = Proc(
        Command::new(everything)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    (upstream, port)
}

/// Writes into `dir` the benchmark's manifest named `name`, its upstream `server-everything`
/// over HTTP on `up_port`; returns its path.
pub fn http_manifest(dir: &Path, name: &str, up_port: u16) -> PathBuf {
    let m = dir.join(name);
    std::fs::write(
        &m,
        manifest(&format!("    url: \"http://127.0.0.1:{up_port}/mcp\"")),
    )
    .unwrap();
    m
}

/// Enrolls `bench-agent` in `data`; returns its credential file.
pub fn enroll(data: &Path, manifest: &Path) -> PathBuf {
    enroll_as(data, manifest, "bench-agent")
}

/// Enrolls `agent` in `data` with `warden agents enroll` (which makes the gateway's keys if
/// there are none yet); returns its credential file.
pub fn enroll_as(data: &Path, manifest: &Path, agent: &str) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["agents", "enroll", agent, "--data"])
        .arg(data)
        .arg("--manifest")
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    data.join(format!("agents/{agent}.credential"))
}

/// `warden serve` on `data` and `manifest` (with `extra` arguments), and its port.
pub fn serve(data: &Path, manifest: &Path, extra: &[&str]) -> (Proc, u16) {
    serve_with(data, manifest, extra, &[])
}

/// [`serve`], with the environment variables `vars` as well.
pub fn serve_with(
    data: &Path,
    manifest: &Path,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> (Proc, u16) {
    let (port, admin) = (free_port(), free_port());
    let gateway = Proc(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["serve", "--data"])
            .arg(data)
            .arg("--manifest")
            .arg(manifest)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    (gateway, port)
}
