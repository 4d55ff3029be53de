//! The runbooks in `docs/runbooks/` run as written: every ```` ```sh ```` block, in order,
//! against a real `warden serve`, then the outcome is checked. `restart_gateway` is the test's
//! stand-in for the operator's restart (it stops and starts the gateway on the same data).

use super::{free_port, text, warden};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

const RESTART: &str = r#"#!/bin/sh
# The test's restart: stop the gateway if it runs, start it again, wait for its admin listener.
if [ -f "$DATA/serve.pid" ]; then
  kill "$(cat "$DATA/serve.pid")" 2>/dev/null || true
  i=0
  while kill -0 "$(cat "$DATA/serve.pid")" 2>/dev/null && [ $i -lt 50 ]; do
    i=$((i+1)); sleep 0.1
  done
fi
nohup warden serve --data "$DATA" --manifest "$MANIFEST" --listen "$LISTEN" --admin-listen "$ADMIN" >>"$DATA/../serve.log" 2>&1 &
echo $! > "$DATA/serve.pid"
i=0
until warden approvals list --data "$DATA" --admin "$ADMIN" >/dev/null 2>&1; do
  i=$((i+1))
  if [ $i -gt 600 ]; then echo "the gateway did not start" >&2; exit 1; fi
  sleep 0.1
done
"#;

const RELOAD: &str = r#"#!/bin/sh
# The test's reload: SIGHUP, then a moment for the swap.
kill -HUP "$(cat "$DATA/serve.pid")"
sleep 1
"#;

struct Site {
    dir: tempfile::TempDir,
    data: PathBuf,
    listen: String,
    admin: String,
    env: Vec<(&'static str, String)>,
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.data.join("serve.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (data, manifest) = (dir.path().join("data"), dir.path().join("manifest.yaml"));
        let out = warden(&[
            "init",
            dir.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_warden"), bin.join("warden")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for (name, script) in [("restart_gateway", RESTART), ("reload_gateway", RELOAD)] {
            std::fs::write(bin.join(name), script).unwrap();
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        // The starter's two approvers (their keys made by `init`), and governance: manifest
        // changes need both.
        let running = std::fs::read_to_string(&manifest).unwrap().replace(
            "\napprovals:\n",
            "\ngovernance: { approvers: 2 }\napprovals:\n",
        );
        assert!(running.contains("id: bob@acme.example"), "{running}");
        std::fs::write(&manifest, &running).unwrap();
        let new_manifest = dir.path().join("manifest-v2.yaml");
        std::fs::write(
            &new_manifest,
            running
                .replace("version: 1", "version: 2")
                .replace("rate: 100/h", "rate: 150/h"),
        )
        .unwrap();
        let (listen, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("PATH", path),
            ("DATA", data.display().to_string()),
            ("MANIFEST", manifest.display().to_string()),
            ("LISTEN", listen.clone()),
            ("ADMIN", admin.clone()),
            ("AGENT", "coder-1".into()),
            ("NEW_MANIFEST", new_manifest.display().to_string()),
            ("APPROVER_1", "alice@acme.example".into()),
            ("APPROVER_2", "bob@acme.example".into()),
        ];
        let site = Site {
            dir,
            data,
            listen,
            admin,
            env,
        };
        site.sh("warden agents enroll \"$AGENT\" --data \"$DATA\" --manifest \"$MANIFEST\" && restart_gateway");
        site
    }

    /// Runs a script with the runbooks' variables; its output (it must succeed).
    fn sh(&self, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-eu")
            .arg("-c")
            .arg(script)
            .current_dir(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "script failed:\n{script}\n---\n{said}\n--- serve.log:\n{}",
            std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
        );
        said
    }

    /// Runs every `sh` block of `docs/runbooks/NAME.md`, in order, as one script.
    fn runbook(&self, name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/runbooks")
            .join(format!("{name}.md"));
        let md = std::fs::read_to_string(path).unwrap();
        let mut script = String::new();
        let mut inside = false;
        for line in md.lines() {
            match (inside, line.trim()) {
                (false, "```sh") => inside = true,
                (true, "```") => inside = false,
                (true, _) => {
                    script.push_str(line);
                    script.push('\n');
                }
                _ => {}
            }
        }
        assert!(!script.is_empty(), "{name} has no sh blocks");
        self.sh(&script)
    }

    /// One HTTP request; the status.
    fn http(&self, addr: &str, head: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "{head}\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, out)
    }

    fn holds(&self) -> String {
        let token = std::fs::read_to_string(self.data.join("keys/admin.token")).unwrap();
        self.http(
            &self.admin,
            &format!(
                "GET /admin/v1/holds HTTP/1.1\r\nauthorization: Bearer {}",
                token.trim()
            ),
            "",
        )
        .1
    }

    /// The MCP endpoint's status for an `initialize` with this credential.
    fn mcp_status(&self, credential: &str) -> u16 {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        self.http(
            &self.listen,
            &format!(
                "POST /mcp HTTP/1.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nauthorization: Bearer {}",
                credential.trim()
            ),
            body,
        )
        .0
    }

    fn credential(&self) -> String {
        std::fs::read_to_string(self.data.join("agents/coder-1.credential")).unwrap()
    }
}

#[test]
fn runbooks_run_as_written() {
    let site = Site::new();
    let first = site.credential();
    assert_eq!(site.mcp_status(&first), 200);

    // Kill switch: on, recorded, off.
    let said = site.runbook("kill-switch");
    assert!(
        said.contains("hold.kill") && said.contains("hold.resume"),
        "{said}"
    );
    assert!(!site.holds().contains("\"kill\""), "{}", site.holds());

    // Quarantine: the agent is frozen and its evidence verifies offline.
    let said = site.runbook("quarantine");
    assert!(
        said.contains("ok: ") && said.contains("of agent `coder-1`"),
        "{said}"
    );
    assert!(site.holds().contains("quarantine"), "{}", site.holds());
    assert!(site.dir.path().join("coder-1-incident.json").exists());

    // Credential rotation: the old credential is refused, the new one works.
    let said = site.runbook("credential-rotation");
    let second = site.credential();
    assert_ne!(first, second);
    assert!(said.contains("old credential: "), "{said}");
    assert_eq!(
        site.mcp_status(&first),
        401,
        "the old credential still opens MCP"
    );
    assert_eq!(site.mcp_status(&second), 200);

    // Key compromise: keys rotated (recorded after the restart), credentials re-issued, the
    // ledger verifies across the rotation, the kill lifted.
    let said = site.runbook("key-compromise");
    assert!(said.contains("key.rotated"), "{said}");
    let third = site.credential();
    assert_ne!(second, third);
    assert_eq!(site.mcp_status(&second), 401);
    assert_eq!(site.mcp_status(&third), 200);
    assert!(!site.holds().contains("\"kill\""), "{}", site.holds());

    // False positive: the quarantine from before is reviewed and lifted.
    assert!(site.holds().contains("quarantine"));
    let said = site.runbook("false-positive");
    assert!(
        said.contains("hold.resume") && said.contains("ok: "),
        "{said}"
    );
    assert!(!site.holds().contains("quarantine"), "{}", site.holds());

    // A governed manifest change: proposed, approved by both approvers, swapped in on SIGHUP.
    let said = site.runbook("manifest-change");
    assert!(
        said.contains("LOOSENED") && said.contains("rate 100/h -> 150/h"),
        "{said}"
    );
    assert!(said.contains("governance.applied"), "{said}");
    assert!(
        said.contains("alice@acme.example, bob@acme.example"),
        "{said}"
    );
}
