//! The starter bundle `warden init` and a first `warden serve` write: the files under
//! `examples/starter/`, embedded, with approvers whose keys are made for the data directory.

use std::path::{Path, PathBuf};

/// The starter manifest.
pub const MANIFEST: &str = include_str!("../../../examples/starter/manifest.yaml");
/// The starter Cedar policies.
pub const POLICY_BASE: &str = include_str!("../../../examples/starter/policies/base.cedar");

/// Why the starter bundle was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StarterError {
    /// A manifest is already there.
    #[error("`{}` already exists; not overwriting it", .0.display())]
    Exists(PathBuf),
    /// A file or directory could not be written.
    #[error("cannot write `{}`: {error}", path.display())]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// A starter approver's key could not be made or read.
    #[error("approver `{id}`'s key: {error}")]
    Key {
        /// The approver.
        id: &'static str,
        /// Why.
        #[source]
        error: crate::keyfile::KeyFileError,
    },
}

/// `std::fs::write`, its error naming the file.
fn write_file(path: &Path, text: &str) -> Result<(), StarterError> {
    std::fs::write(path, text).map_err(|error| StarterError::Write {
        path: path.to_owned(),
        error,
    })
}

/// Writes the starter bundle into `dir`; refuses to overwrite an existing manifest.
///
/// # Errors
/// [`StarterError`] naming the file that could not be written or already exists.
pub fn write(dir: &Path) -> Result<PathBuf, StarterError> {
    let manifest = dir.join("manifest.yaml");
    if manifest.exists() {
        return Err(StarterError::Exists(manifest));
    }
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).map_err(|error| StarterError::Write {
        path: policies.clone(),
        error,
    })?;
    let base = policies.join("base.cedar");
    if !base.exists() {
        write_file(&base, POLICY_BASE)?;
    }
    write_file(&manifest, MANIFEST)?;
    Ok(manifest)
}

/// The starter agents' owners, who approve their calls (bob also holds the `planner` role the
/// high tier asks for).
const STARTER_APPROVERS: [(&str, &str); 2] = [
    ("alice@acme.example", "[]"),
    ("bob@acme.example", "[planner]"),
];

/// Writes the starter bundle into `dir` (see [`write`]) with an `approvers` block: the starter
/// agents' owners, each with a key made in `data` (`DATA/keys/approvers/<id>.key`, 0600), so
/// that every flow the starter shows works, approvals included (`warden approvals approve ID
/// --approver alice@acme.example`). A key already there is kept and named.
///
/// # Errors
/// [`StarterError`] naming the file that could not be written or already exists, or the key
/// that could not be made or read.
pub fn write_with_approvers(dir: &Path, data: &Path) -> Result<PathBuf, StarterError> {
    let manifest = dir.join("manifest.yaml");
    if manifest.exists() {
        return Err(StarterError::Exists(manifest));
    }
    let mut block = String::from(
        "\n# The starter agents' owners, who approve their calls: each signs with a key made for\n\
         # this data directory (DATA/keys/approvers/<id>.key), e.g.\n\
         #   warden approvals approve <approval id> --approver alice@acme.example\n\
         approvers:\n",
    );
    for (id, roles) in STARTER_APPROVERS {
        let path = crate::approvals::approver_key_path(data, id);
        let public = if path.exists() {
            crate::approvals::load_approver_key(&path)
                .map(|k| crate::approvals::public_key_text(&k))
        } else {
            crate::approvals::create_approver_key(data, id, false)
        }
        .map_err(|error| StarterError::Key { id, error })?;
        block.push_str(&format!(
            "  - {{ id: {id}, roles: {roles}, key: \"{public}\" }}\n"
        ));
    }
    let manifest = write(dir)?;
    write_file(&manifest, &(MANIFEST.to_owned() + &block))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_with_approvers_loads_and_names_keys_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let m = write_with_approvers(dir.path(), &data).unwrap();
        let manifest = crate::bundle::load_manifest(&m).unwrap();
        for (id, _) in STARTER_APPROVERS {
            let a = manifest.approvers.get(id).unwrap();
            let key = crate::approvals::load_approver_key(&crate::approvals::approver_key_path(
                &data, id,
            ))
            .unwrap();
            assert_eq!(a.key, key.verifying_key().to_bytes(), "{id}");
        }
        assert!(manifest.approvers["bob@acme.example"]
            .roles
            .contains("planner"));
        // Written again (the manifest removed): the same keys, not new ones.
        std::fs::remove_file(&m).unwrap();
        let again = write_with_approvers(dir.path(), &data).unwrap();
        let again = crate::bundle::load_manifest(&again).unwrap();
        assert_eq!(
            again.approvers["alice@acme.example"].key,
            manifest.approvers["alice@acme.example"].key
        );
    }
}
