//! Loading a bundle (manifest plus Cedar policy files) from disk.

use std::path::{Path, PathBuf};
use warden_policy::lines::LineIndex;
use warden_policy::manifest::MAX_MANIFEST_BYTES;
use warden_policy::{
    bundle_hash, parse_manifest, Diagnostic, Governor, LoadError, Manifest, PolicySource,
};

/// Largest policy file Warden reads, in bytes.
pub const MAX_POLICY_BYTES: u64 = 4 << 20;

fn single(file: &Path, line: Option<usize>, path: &str, message: String) -> LoadError {
    LoadError {
        diagnostics: vec![Diagnostic {
            file: file.display().to_string(),
            line,
            path: path.to_string(),
            message,
        }],
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > limit {
        return Err(format!(
            "{} bytes, more than the {limit}-byte limit",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}

/// Reads and validates the manifest at `path` (without its policies).
///
/// # Errors
/// [`LoadError`] naming the file, line and key of every problem.
pub fn load_manifest(path: &Path) -> Result<Manifest, LoadError> {
    let text =
        read_limited(path, MAX_MANIFEST_BYTES as u64).map_err(|e| single(path, None, "", e))?;
    parse_manifest(&path.display().to_string(), &text)
}

/// Reads the policy files a manifest names, resolving one `*` in a file name.
///
/// # Errors
/// [`LoadError`] for a missing file, an unreadable one, or a pattern that matches nothing.
pub fn load_policies(
    manifest_path: &Path,
    manifest: &Manifest,
) -> Result<Vec<PolicySource>, LoadError> {
    let base = manifest_path.parent().unwrap_or(Path::new("."));
    let lines = LineIndex::new(&manifest.text);
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    let file = manifest_path.display().to_string();
    for (i, pattern) in manifest.policies.iter().enumerate() {
        let key = format!("policies[{i}]");
        let mut err = |message: String| {
            diagnostics.push(Diagnostic {
                file: file.clone(),
                line: lines.line_of(&key),
                path: key.clone(),
                message,
            });
        };
        let paths: Vec<(String, PathBuf)> = match pattern
            .rsplit_once('/')
            .map_or(("", pattern.as_str()), |(d, f)| (d, f))
        {
            (dir, name) if name.contains('*') => {
                let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
                let dir_path = base.join(dir);
                let entries = match std::fs::read_dir(&dir_path) {
                    Ok(e) => e,
                    Err(e) => {
                        err(format!(
                            "`{pattern}`: cannot list `{}`: {e}",
                            dir_path.display()
                        ));
                        continue;
                    }
                };
                let mut found: Vec<(String, PathBuf)> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        // Hidden files (editor swap and lock files) never count as policies.
                        (!n.starts_with('.')
                            && n.starts_with(prefix)
                            && n.ends_with(suffix)
                            && n.len() >= prefix.len() + suffix.len())
                        .then(|| {
                            let shown = if dir.is_empty() {
                                n.clone()
                            } else {
                                format!("{dir}/{n}")
                            };
                            (shown, e.path())
                        })
                    })
                    .collect();
                found.sort();
                if found.is_empty() {
                    err(format!("`{pattern}` matches no file"));
                }
                found
            }
            _ => vec![(pattern.clone(), base.join(pattern))],
        };
        for (shown, path) in paths {
            match read_limited(&path, MAX_POLICY_BYTES) {
                Ok(text) => out.push(PolicySource { name: shown, text }),
                Err(e) => err(format!("policy file `{shown}`: {e}")),
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { diagnostics })
    }
}

/// Loads manifest and policies and builds the Governor.
///
/// # Errors
/// [`LoadError`] with every problem found.
pub fn load_governor(manifest_path: &Path) -> Result<Governor, LoadError> {
    let manifest = load_manifest(manifest_path)?;
    let policies = load_policies(manifest_path, &manifest)?;
    Governor::new(manifest, &policies)
}

/// Checks the files the manifest's upstreams name beyond the bundle (each https upstream's
/// `ca_file`), as the gateway will read them: `warden manifest validate` reports them with the
/// manifest's other errors, where `serve` would only keep the upstream down.
///
/// # Errors
/// [`LoadError`] with one diagnostic per file that cannot be used, naming its key and line.
pub fn check_upstream_files(manifest_path: &Path, manifest: &Manifest) -> Result<(), LoadError> {
    let base = manifest_path.parent().unwrap_or(Path::new("."));
    let lines = LineIndex::new(&manifest.text);
    let file = manifest_path.display().to_string();
    let mut diagnostics = Vec::new();
    for (i, u) in manifest.upstreams.iter().enumerate() {
        if let warden_policy::upstream::Transport::Http {
            ca_file: Some(ca), ..
        } = &u.transport
        {
            if let Err(message) = warden_executor::tls::load_ca(&base.join(ca)) {
                let key = format!("upstreams[{i}].ca_file");
                diagnostics.push(Diagnostic {
                    file: file.clone(),
                    line: lines.line_of(&key),
                    path: key,
                    message: message.to_string(),
                });
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(LoadError { diagnostics })
    }
}

/// The bundle hash decisions cite, computed from the files on disk.
///
/// # Errors
/// [`LoadError`] if the manifest or a policy file cannot be read.
pub fn hash_bundle(manifest_path: &Path) -> Result<String, LoadError> {
    let manifest = load_manifest(manifest_path)?;
    let policies = load_policies(manifest_path, &manifest)?;
    Ok(bundle_hash(&manifest.text, &policies))
}
