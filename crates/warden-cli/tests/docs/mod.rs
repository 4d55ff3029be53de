//! The README's and the docs' command blocks stay true: the README's "Try it" block runs as
//! written against a real `warden serve`, and every `warden` command in any ```` ```sh ````
//! block of the README or `docs/` parses (its subcommand and flags exist). The runbooks
//! (`docs/runbooks/`) are run whole by `tests/runbooks`.

use super::{free_port, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ```` ```sh ```` blocks of a Markdown file, each with `\`-continued lines joined.
fn sh_blocks(md: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut block: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in md.lines() {
        match (&mut block, line.trim()) {
            (None, "```sh") => block = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(block.take()),
            (Some(b), l) => {
                if let Some(head) = l.strip_suffix('\\') {
                    pending.push_str(head);
                    pending.push(' ');
                } else {
                    pending.push_str(l);
                    b.push(std::mem::take(&mut pending));
                }
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The block under `## heading` of `md`.
fn block_under(md: &str, heading: &str) -> Vec<String> {
    let at = md.find(heading).unwrap_or_else(|| panic!("no `{heading}`"));
    sh_blocks(&md[at..]).into_iter().next().unwrap()
}

/// A directory holding `warden` (this build), to put first on `PATH`.
fn bin_dir(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_warden"), bin.join("warden")).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

struct Gateway(std::process::Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's "Try it" block, run as written in a fresh directory beside a `warden serve`
/// on its embedded defaults (`.warden`), with two changes a test must make: `warden` is this
/// build (not a release build and an alias), and the gateway's port is a free one instead of
/// 8700.
#[test]
fn the_readme_try_it_block_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = bin_dir(dir.path());
    let (listen, admin) = (free_port(), free_port());
    let _gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Started (it serves once its upstream is up: under a loaded machine that takes a while),
    // and its start-up entries under a signed checkpoint (nothing in the block adds any:
    // `/v1/decide` is a dry run).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let verified = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["ledger", "verify"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let up = std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok();
        if up && verified.status.code() == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start: {}",
            text(&verified.stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = block_under(&readme, "## Try it");
    let mut script = String::new();
    for line in &block {
        if line.starts_with("cargo build") || line.starts_with("alias warden=") {
            continue;
        }
        script.push_str(&line.replace("localhost:8700", &format!("127.0.0.1:{listen}")));
        script.push('\n');
    }
    assert!(script.contains("warden ledger verify --export"), "{script}");
    let out = Command::new("sh")
        .args(["-eu", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{script}\n---\n{said}");
    // What the block says happens, happens.
    assert!(said.contains("\"decision\": \"allow\""), "{said}");
    assert!(said.contains("\"dry_run\":true"), "{said}");
    assert!(said.contains("tool.unknown"), "{said}");
    assert!(said.contains("note: replaced the credential"), "{said}");
    // The stored ledger and its export both verify.
    assert_eq!(
        said.matches(" entries verified; signed checkpoint").count(),
        2,
        "{said}"
    );
}

/// Markdown files whose `sh` blocks are checked: the README and everything under `docs/`.
fn documents() -> Vec<PathBuf> {
    let mut out = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The `warden ...` commands of one shell line (after pipes, `&&`, `||`, `;`, in `$(...)`),
/// each up to a redirection, a `<placeholder>` or a comment.
fn warden_commands(line: &str) -> Vec<String> {
    let code = line.split(" #").next().unwrap_or("");
    let mut out = Vec::new();
    for part in code.split(['|', ';', '&', '(', ')', '{', '}']) {
        let part = part.trim().trim_start_matches('!').trim();
        let Some(rest) = part.strip_prefix("warden ") else {
            continue;
        };
        // Up to a redirection (or a `<placeholder>`, which only the reader fills in).
        let rest = rest.split(['>', '<']).next().unwrap_or("");
        out.push(format!("warden {}", rest.trim()));
    }
    out
}

/// Every `warden` command in the README and `docs/` names a subcommand and flags that exist:
/// each is run with `--help` appended (clap checks everything before it, then prints help).
#[test]
fn every_documented_warden_command_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = bin_dir(dir.path());
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        let md = std::fs::read_to_string(&doc).unwrap();
        for block in sh_blocks(&md) {
            for line in block {
                for cmd in warden_commands(&line) {
                    let script = format!("{cmd} --help");
                    let out = Command::new("sh")
                        .args(["-c", &script])
                        .current_dir(dir.path())
                        .env("PATH", &path)
                        .env("DATA", "d")
                        .env("MANIFEST", "m.yaml")
                        .env("ADMIN", "127.0.0.1:1")
                        .env("LISTEN", "127.0.0.1:1")
                        .env("AGENT", "coder-1")
                        .env("OLD", "x")
                        .env("NEW_MANIFEST", "n.yaml")
                        .env("APPROVER_1", "a")
                        .env("APPROVER_2", "b")
                        .env("ID", "apr_00")
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    checked += 1;
                    if !out.status.success() {
                        failures.push(format!(
                            "{}: `{cmd}`: {}",
                            doc.strip_prefix(repo()).unwrap_or(&doc).display(),
                            text(&out.stderr).lines().next().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
