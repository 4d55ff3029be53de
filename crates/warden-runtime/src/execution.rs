//! Wires the Executor: the manifest's upstreams and secrets, the grant keys (verify side), the
//! replay guard for grants, the manifest clock and the ledger for receipts.

use crate::governance::ChangeError;
use std::path::Path;
use std::sync::Arc;
use warden_executor::{Config, Executor, ManifestClock, Secrets};
use warden_ledger::Ledger;
use warden_policy::manifest::Manifest;

/// Why the Executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The grant keys could not be read.
    #[error(transparent)]
    Keys(#[from] crate::agents::AgentsError),
    /// The redaction patterns could not be built.
    #[error(transparent)]
    Redact(#[from] warden_executor::redact::RedactError),
}

/// Builds the Executor for `manifest` (read from `manifest_path`). Secrets that do not load
/// are logged by name; the upstreams that need them stay down (fail closed), the rest run. An
/// upstream whose program is `warden` runs `helper` (this Warden's own binary).
///
/// # Errors
/// [`ExecutionError`].
#[expect(
    clippy::too_many_arguments,
    reason = "the composition root hands the Executor each of its dependencies by name"
)]
pub(crate) fn build(
    data: &Path,
    helper: &Path,
    manifest_path: &Path,
    manifest: &Manifest,
    ledger: Arc<Ledger>,
    replay: Box<dyn warden_identity::ReplayGuard>,
    clock: Arc<ManifestClock>,
    holds: Arc<dyn warden_core::state::StateStore>,
    sandbox: Option<warden_executor::SandboxConfig>,
) -> Result<Executor, ExecutionError> {
    let dir = manifest_path.parent().unwrap_or_else(|| Path::new("."));
    for u in &manifest.upstreams {
        if let Some(why) = &u.unsandboxed {
            tracing::warn!(
                upstream = %u.name,
                reason = %why,
                "runs unsandboxed, as the manifest says: it can reach whatever Warden's user can (docs/sandbox.md)"
            );
        }
    }
    let (secrets, errors) = Secrets::load(&manifest.secrets, dir);
    for e in errors {
        tracing::error!(error = %e, "secret not loaded; upstreams that need it will not start");
    }
    Ok(Executor::new(Config {
        upstreams: manifest
            .upstreams
            .iter()
            .map(|u| with_helper(u.clone().with_paths_under(dir), helper))
            .collect(),
        secrets,
        grants: crate::agents::grant_keys(data)?,
        replay,
        manifest: clock,
        ledger,
        holds: Some(holds),
        sandbox,
    })?)
}

/// `u`, with the program `warden` (Warden's own servers: `demo-server`, `process-server`) made
/// the helper binary's path.
fn with_helper(
    mut u: warden_policy::upstream::Upstream,
    helper: &Path,
) -> warden_policy::upstream::Upstream {
    if let warden_policy::upstream::Transport::Stdio { program, .. } = &mut u.transport {
        if program == "warden" {
            *program = helper.display().to_string();
        }
    }
    u
}

/// How this Warden sandboxes: probed only when some upstream asks for a sandbox. `helper` is
/// the `warden` binary (it runs `warden sandbox exec`); workspaces live under `DATA/sandbox`.
#[must_use]
pub fn sandbox_config(
    data: &Path,
    manifest: &Manifest,
    helper: std::path::PathBuf,
) -> Option<warden_executor::SandboxConfig> {
    if manifest.upstreams.iter().all(|u| u.sandbox.is_none()) {
        return None;
    }
    let host = warden_sandbox::Host::probe(helper);
    tracing::info!(
        isolation = ?host.isolation,
        cgroups = ?host.layout,
        "sandbox probed (`warden sandbox doctor` shows each guarantee)"
    );
    // A gateway killed with `kill -9` never removed its tasks' cgroups (issue 18).
    if let Some(layout) = &host.layout {
        let r = warden_sandbox::cgroup::reclaim(layout);
        if !r.removed.is_empty() {
            tracing::info!(
                cgroups = r.removed.len(),
                "reclaimed the sandbox cgroups of Warden processes no longer running"
            );
        }
        if !r.failed.is_empty() {
            tracing::warn!(cgroups = ?r.failed, "could not reclaim left-over sandbox cgroups");
        }
    }
    Some(warden_executor::SandboxConfig {
        host: Arc::new(host),
        // Absolute: the view mounts it at the same path (the README's `.warden` is relative).
        dir: std::path::absolute(data.join("sandbox")).unwrap_or_else(|_| data.join("sandbox")),
    })
}

/// The pins of one upstream, as `warden upstreams pin` writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamPins {
    /// Upstream name.
    pub name: String,
    /// Executable hash.
    pub executable: Option<String>,
    /// Other files' hashes, by path.
    pub files: std::collections::BTreeMap<String, String>,
    /// Tool pins, by upstream tool name.
    pub tools: std::collections::BTreeMap<String, String>,
}

/// The `pins:` block for these upstreams, as YAML.
#[must_use]
pub fn pins_yaml(pins: &[UpstreamPins]) -> String {
    // JSON strings are YAML strings: names and paths are quoted that way.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    if pins.is_empty() {
        return "pins: {}\n".into();
    }
    let mut out = String::from("pins:\n");
    for p in pins {
        out.push_str(&format!("  {}:\n", q(&p.name)));
        if let Some(e) = &p.executable {
            out.push_str(&format!("    executable: {e}\n"));
        }
        if !p.files.is_empty() {
            out.push_str("    files:\n");
            for (f, h) in &p.files {
                out.push_str(&format!("      {}: {h}\n", q(f)));
            }
        }
        if p.tools.is_empty() {
            out.push_str("    tools: {}\n");
        } else {
            out.push_str("    tools:\n");
            for (t, h) in &p.tools {
                out.push_str(&format!("      {}: {h}\n", q(t)));
            }
        }
    }
    out
}

/// Why a manifest's text could not be given a new version (to pin upstreams, or to promote).
#[derive(Debug, thiserror::Error)]
pub enum VersionLineError {
    /// Its `version` line holds something else than a number.
    #[error("`{0}`: the version is not a number")]
    NotANumber(String),
    /// It has no `version` line.
    #[error("the manifest has no top-level `version: N` line to raise")]
    Missing,
}

/// `line` with its version raised by one, if it is the manifest's top-level `version:` line.
///
/// # Errors
/// [`VersionLineError::NotANumber`] for a `version:` line that holds no number.
pub(crate) fn raise_version(line: &str) -> Result<Option<String>, VersionLineError> {
    let Some(rest) = line.strip_prefix("version:") else {
        return Ok(None);
    };
    let n: u64 = rest
        .split('#')
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|_| VersionLineError::NotANumber(line.to_owned()))?;
    Ok(Some(format!("version: {}", n.saturating_add(1))))
}

/// `text` with its top-level `pins:` block replaced by `block` (or `block` appended) and its
/// `version` raised by one, so that a running gateway takes the new pins on reload.
///
/// # Errors
/// [`VersionLineError`] if the manifest has no top-level `version: N` line.
pub fn write_pins(text: &str, block: &str) -> Result<String, VersionLineError> {
    let lines: Vec<&str> = text.lines().collect();
    let top_level = |l: &str| !l.is_empty() && !l.starts_with([' ', '\t']);
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 8);
    let mut version_seen = false;
    let mut replaced = false;
    let mut i = 0;
    while let Some(line) = lines.get(i) {
        if let Some(raised) = raise_version(line)? {
            out.push(raised);
            version_seen = true;
            i += 1;
            continue;
        }
        if line.starts_with("pins:") {
            // Drop the old block: this line and every following one that is not top level.
            i += 1;
            while lines.get(i).is_some_and(|l| !top_level(l)) {
                i += 1;
            }
            out.extend(block.lines().map(str::to_owned));
            replaced = true;
            continue;
        }
        out.push((*line).to_owned());
        i += 1;
    }
    if !version_seen {
        return Err(VersionLineError::Missing);
    }
    if !replaced {
        if out.last().is_some_and(|l| !l.is_empty()) {
            out.push(String::new());
        }
        out.push("# Written by `warden upstreams pin`.".into());
        out.extend(block.lines().map(str::to_owned));
    }
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

/// Reloads the manifest at `path` into `current` (see [`crate::current::CurrentGovernor`]) and
/// moves the Executor's manifest clock with it.
///
/// INVARIANT (fail-closed): the running Executor keeps the upstreams, pins and secrets it was
/// started with, so a manifest that changes any of them is refused here (restart to apply it)
/// rather than swapped in half-applied. The clock moves before the swap: in between, grants of
/// the old version are refused (and re-decided), never honored under the new one.
///
/// INVARIANT (INV-020): when the running manifest has `governance`, the new bundle must carry
/// an approval for exactly its hash replacing this version ([`crate::governance::admit`]); it is
/// used once — unless `admitted` says its fleet already serves exactly this version and bundle
/// (the instance that published it redeemed the approval); `admitted` refuses the reload of an
/// instance its fleet has moved past for any other bundle. Returns the new version and that
/// approval.
///
/// # Errors
/// Why the new manifest was not swapped in.
pub fn reload(
    current: &crate::current::CurrentGovernor,
    clock: &ManifestClock,
    path: &Path,
    book: &dyn warden_identity::approval::ApprovalStore,
    admitted: &dyn Fn(u64, &str) -> Result<bool, ChangeError>,
) -> Result<(u64, Option<warden_identity::approval::Request>), ChangeError> {
    let new = crate::bundle::load_governor(path)?;
    let old = current.get();
    let (o, n) = (&old.manifest().raw, &new.manifest().raw);
    if o.upstreams != n.upstreams || o.pins != n.pins || o.secrets != n.secrets {
        return Err(ChangeError::NeedsRestart);
    }
    let (from, to) = (old.manifest().version, new.manifest().version);
    if to <= from {
        return Err(ChangeError::NotNewer {
            running: from,
            new: to,
        });
    }
    // A bundle its fleet already serves was admitted by the instance that published it.
    let approval = if admitted(to, new.policy_hash())? {
        None
    } else {
        crate::governance::admit(book, &old, &new)?
    };
    clock.set(to);
    let version = current.swap(new).inspect_err(|_| clock.set(from))?;
    Ok((version, approval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_appended_then_replaced_and_the_version_raised() {
        let text = "version: 4 # bump me\nupstreams:\n  - name: t\n    command: [x]\n";
        let block = pins_yaml(&[UpstreamPins {
            name: "t".into(),
            executable: Some(format!("sha256:{}", "a".repeat(64))),
            files: Default::default(),
            tools: [("get".to_owned(), format!("sha256:{}", "b".repeat(64)))].into(),
        }]);
        let once = write_pins(text, &block).unwrap();
        assert!(once.starts_with("version: 5\n"), "{once}");
        assert!(
            once.contains("pins:\n  \"t\":\n    executable: sha256:aaaa"),
            "{once}"
        );
        let again = write_pins(&format!("{once}policies: [p.cedar]\n"), &pins_yaml(&[])).unwrap();
        assert!(again.starts_with("version: 6\n"), "{again}");
        assert!(!again.contains("executable"), "{again}");
        assert!(again.contains("pins: {}\npolicies: [p.cedar]\n"), "{again}");
        assert!(write_pins("upstreams: []\n", &block).is_err());
    }
}
