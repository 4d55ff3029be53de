//! Secret values: read once from where the manifest says, held zeroized, injected into an
//! upstream's environment or headers, and never handed to the front-end (INV-009).

use std::collections::BTreeMap;
use std::path::Path;
use warden_manifest::upstream::{Part, SecretSource, Template};
use zeroize::Zeroizing;

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 8;

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Why a secret has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not UTF-8).
    #[error("secret `{name}`: environment variable `{var}` is not set")]
    EnvMissing {
        /// Secret name.
        name: String,
        /// Variable.
        var: String,
    },
    /// The file cannot be read.
    #[error("secret `{name}`: cannot read `{path}`: {why}")]
    File {
        /// Secret name.
        name: String,
        /// Path.
        path: String,
        /// Why.
        why: String,
    },
    /// The OS keyring has no readable key of that description.
    #[error("secret `{name}`: no key `{description}` in the OS keyring: {why}")]
    Keyring {
        /// Secret name.
        name: String,
        /// The key's description.
        description: String,
        /// Why.
        why: String,
    },
    /// A value is shorter than [`MIN_SECRET_LEN`]: it could not be redacted without also
    /// mangling ordinary text, so it is refused (the upstreams that need it stay down).
    #[error(
        "secret `{name}` is shorter than {MIN_SECRET_LEN} characters, too short to redact reliably"
    )]
    TooShort {
        /// Secret name.
        name: String,
    },
    /// A template names a secret that did not load.
    #[error("secret `{0}` is not available")]
    Unavailable(String),
}

/// The secrets that loaded, by name.
#[derive(Default)]
pub struct Secrets {
    values: BTreeMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // INVARIANT (secrets never logged): only the names are shown.
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// Reads every secret; those that fail are returned beside the ones that loaded, so the
    /// upstreams that need them stay down and the others run.
    #[must_use]
    pub fn load(
        sources: &BTreeMap<String, SecretSource>,
        manifest_dir: &Path,
    ) -> (Self, Vec<SecretError>) {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, source) in sources {
            match read(name, source, manifest_dir) {
                Ok(v) => {
                    values.insert(name.clone(), v);
                }
                Err(e) => errors.push(e),
            }
        }
        (Secrets { values }, errors)
    }

    /// Secrets given directly (tests, embedding).
    #[must_use]
    pub fn from_values(values: BTreeMap<String, Zeroizing<String>>) -> Self {
        Secrets { values }
    }

    /// Fills in a template.
    ///
    /// # Errors
    /// [`SecretError::Unavailable`] if it names a secret that did not load.
    pub fn expand(&self, t: &Template) -> Result<Zeroizing<String>, SecretError> {
        let mut out = Zeroizing::new(String::new());
        for p in &t.0 {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Secret(n) => out.push_str(
                    self.values
                        .get(n)
                        .ok_or_else(|| SecretError::Unavailable(n.clone()))?,
                ),
            }
        }
        Ok(out)
    }

    /// One secret's value, if it loaded.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Zeroizing<String>> {
        self.values.get(name).cloned()
    }

    /// Every value (what the redactor must never let through).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.values().map(|v| v.as_str())
    }
}

/// The OS keyring.
#[cfg(target_os = "linux")]
mod keyring {
    use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
    use zeroize::Zeroizing;

    /// Reads the `user` key `description` from the user keyring of Warden's uid (and the
    /// keyrings linked into it). Not the session keyring: a session keyring can be inherited
    /// from, and written by, another user (`sudo -u` without pam_keyinit), who could then
    /// choose the secret's value. One trailing newline is dropped, as for files (`keyctl padd`
    /// from a file keeps it).
    pub(super) fn read(description: &str) -> Result<Zeroizing<String>, String> {
        let bytes = KeyRing::from_special_id(KeyRingIdentifier::User, false)
            .and_then(|ring| ring.search(description))
            .and_then(|key| key.read_to_vec())
            .map(Zeroizing::new)
            .map_err(|e| match e {
                KeyError::KeyDoesNotExist => {
                    "not found in the user keyring of Warden's user".to_string()
                }
                // EPERM: what a seccomp filter such as Docker's default answers to keyctl.
                KeyError::PermissionDenied => {
                    "permission denied (a seccomp filter, such as Docker's default, refuses keyctl)"
                        .into()
                }
                // EACCES: the key exists but Warden's user may not read it.
                KeyError::AccessDenied => "the key is not readable by Warden's user".into(),
                KeyError::OperationNotSupported | KeyError::Unknown(_) => {
                    "the kernel keyring is not available here".into()
                }
                other => format!("{other:?}"),
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| "not UTF-8".to_string())?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        Ok(Zeroizing::new(text.to_owned()))
    }
}

/// The OS keyring (only Linux's kernel keyring is supported).
#[cfg(not(target_os = "linux"))]
mod keyring {
    use zeroize::Zeroizing;

    pub(super) fn read(_description: &str) -> Result<Zeroizing<String>, String> {
        Err("keyring secrets are supported on Linux only".into())
    }
}

/// Reads one secret `name` from `source` (a relative file path is taken from `base`): what the
/// manifest's secrets and the ledger key kept outside the data directory are read with.
///
/// # Errors
/// [`SecretError`]: missing, unreadable, or too short to redact.
pub fn read_source(
    name: &str,
    source: &SecretSource,
    base: &Path,
) -> Result<Zeroizing<String>, SecretError> {
    read(name, source, base)
}

fn read(
    name: &str,
    source: &SecretSource,
    manifest_dir: &Path,
) -> Result<Zeroizing<String>, SecretError> {
    let value = match source {
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) => Zeroizing::new(v),
            Err(_) => {
                return Err(SecretError::EnvMissing {
                    name: name.to_owned(),
                    var: var.clone(),
                })
            }
        },
        SecretSource::File(p) => {
            let path = manifest_dir.join(p);
            let err = |why: String| SecretError::File {
                name: name.to_owned(),
                path: path.display().to_string(),
                why,
            };
            let meta = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?;
            if meta.len() > MAX_SECRET_BYTES {
                return Err(err(format!("larger than {MAX_SECRET_BYTES} bytes")));
            }
            let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| err(e.to_string()))?);
            let text = std::str::from_utf8(&bytes).map_err(|_| err("not UTF-8".into()))?;
            let text = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(text);
            Zeroizing::new(text.to_owned())
        }
        SecretSource::Keyring(description) => {
            keyring::read(description).map_err(|why| SecretError::Keyring {
                name: name.to_owned(),
                description: description.clone(),
                why,
            })?
        }
    };
    // INVARIANT (INV-010): every secret that loads can be redacted.
    if value.chars().count() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort {
            name: name.to_owned(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secrets_drop_one_newline_and_missing_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "s3cret-value\n").unwrap();
        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        let mut sources = BTreeMap::new();
        sources.insert("TOK".to_owned(), SecretSource::File("tok".into()));
        sources.insert("SHORT".to_owned(), SecretSource::File("short".into()));
        sources.insert(
            "GONE".to_owned(),
            SecretSource::Env("WARDEN_TEST_UNSET_VARIABLE_XYZ".into()),
        );
        let (s, errors) = Secrets::load(&sources, dir.path());
        assert_eq!(s.values().collect::<Vec<_>>(), vec!["s3cret-value"]);
        assert_eq!(errors.len(), 2);
        assert!(errors[0]
            .to_string()
            .contains("WARDEN_TEST_UNSET_VARIABLE_XYZ"));
        assert!(errors[1].to_string().contains("too short"), "{}", errors[1]);
        let t = warden_manifest::upstream::parse_template("Bearer ${secret:TOK}").unwrap();
        assert_eq!(s.expand(&t).unwrap().as_str(), "Bearer s3cret-value");
        let t = warden_manifest::upstream::parse_template("${secret:GONE}").unwrap();
        assert_eq!(
            s.expand(&t).unwrap_err(),
            SecretError::Unavailable("GONE".into())
        );
        // Debug output names secrets, never values.
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn keyring_secrets_are_read_from_the_user_keyring() {
        use linux_keyutils::{KeyRing, KeyRingIdentifier};
        // A container whose seccomp profile refuses keyctl (Docker's default) has no keyring.
        let Ok(ring) = KeyRing::from_special_id(KeyRingIdentifier::User, true) else {
            eprintln!("notice: the kernel keyring is not available here; skipping");
            return;
        };
        let id = std::process::id();
        let (present, short) = (
            format!("warden-unit:{id}:present"),
            format!("warden-unit:{id}:short"),
        );
        // Stored with a trailing newline (as `keyctl padd` from a file does): dropped on read.
        let k1 = ring.add_key(&present, "keyring-value-123\n").unwrap();
        let k2 = ring.add_key(&short, "abc").unwrap();
        let mut sources = BTreeMap::new();
        sources.insert("TOK".to_owned(), SecretSource::Keyring(present.clone()));
        sources.insert("SHORT".to_owned(), SecretSource::Keyring(short.clone()));
        let absent = format!("warden-unit:{id}:absent");
        sources.insert("GONE".to_owned(), SecretSource::Keyring(absent.clone()));
        // A key only in the session keyring is not used (another user may own that keyring).
        // `false`: use the one the process has (its user's session keyring if none), never a
        // new one, which would stop the process possessing its user keyring's keys.
        let session_only = format!("warden-unit:{id}:session-only");
        let k3 = KeyRing::from_special_id(KeyRingIdentifier::Session, false)
            .and_then(|s| s.add_key(&session_only, "session-value-123"))
            .ok();
        sources.insert(
            "PLANTED".to_owned(),
            SecretSource::Keyring(session_only.clone()),
        );
        let (s, errors) = Secrets::load(&sources, Path::new("/"));
        let _ = (k1.invalidate(), k2.invalidate(), k3.map(|k| k.invalidate()));
        assert_eq!(s.values().collect::<Vec<_>>(), vec!["keyring-value-123"]);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        // Sorted by name: GONE, PLANTED, SHORT.
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].contains(&absent) && text[0].contains("not found"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains(&session_only) && text[1].contains("not found"),
            "{}",
            text[1]
        );
        assert!(text[2].contains("too short"), "{}", text[2]);
    }
}
