//! The starter bundle `warden init` writes: the files under `examples/starter/`, embedded.

use std::path::Path;

/// The starter manifest.
pub const MANIFEST: &str = include_str!("../../../examples/starter/manifest.yaml");
/// The starter Cedar policies.
pub const POLICY_BASE: &str = include_str!("../../../examples/starter/policies/base.cedar");

/// Writes the starter bundle into `dir`; refuses to overwrite an existing manifest.
///
/// # Errors
/// A message naming the file that could not be written or already exists.
pub fn write(dir: &Path) -> Result<std::path::PathBuf, String> {
    let manifest = dir.join("manifest.yaml");
    if manifest.exists() {
        return Err(format!(
            "`{}` already exists; not overwriting it",
            manifest.display()
        ));
    }
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)
        .map_err(|e| format!("cannot create `{}`: {e}", policies.display()))?;
    let base = policies.join("base.cedar");
    if !base.exists() {
        std::fs::write(&base, POLICY_BASE)
            .map_err(|e| format!("cannot write `{}`: {e}", base.display()))?;
    }
    std::fs::write(&manifest, MANIFEST)
        .map_err(|e| format!("cannot write `{}`: {e}", manifest.display()))?;
    Ok(manifest)
}
