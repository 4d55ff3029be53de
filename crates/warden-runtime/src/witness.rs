//! Opening the Witness ledger from the data directory: the ledger key and the store.
//!
//! Layout: `DATA/keys/ledger.key` (private, mode 0600, in a 0700 directory; created on first
//! use), `DATA/keys/ledger.pub` (the verifier key to hand to auditors), `DATA/ledger/` (the
//! embedded store) — or a PostgreSQL URL instead of the embedded store.

use std::fs;

use crate::keyfile;
use std::path::{Path, PathBuf};

use warden_ledger::file::{FileStore, Mode};
use warden_ledger::postgres::PgStore;
use warden_ledger::{Ledger, LedgerConfig, LedgerStore, NoteSigner, NoteVerifier};
use warden_manifest::upstream::SecretSource;

impl From<crate::keyfile::KeyFileError> for WitnessError {
    fn from(e: crate::keyfile::KeyFileError) -> Self {
        WitnessError::Key {
            path: e.path,
            what: e.what,
        }
    }
}

/// Why the ledger could not be opened. The gateway does not start without it (INV-003).
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// A key file problem.
    #[error("ledger key {path}: {what}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The store cannot be opened.
    #[error("ledger store: {0}")]
    Store(#[from] warden_ledger::StoreError),
    /// The ledger does not check out against its checkpoint.
    #[error("ledger: {0}")]
    Ledger(#[from] warden_ledger::LedgerError),
}

/// Where the private key lives.
#[must_use]
pub fn key_path(data: &Path) -> PathBuf {
    data.join("keys").join("ledger.key")
}

/// Where the public (verifier) key lives.
#[must_use]
pub fn pub_path(data: &Path) -> PathBuf {
    data.join("keys").join("ledger.pub")
}

fn key_err(path: &Path, what: impl Into<String>) -> WitnessError {
    WitnessError::Key {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Where the ledger's signing key is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LedgerKey {
    /// `DATA/keys/ledger.key`, made on first use (the embedded default).
    #[default]
    DataDir,
    /// Outside the data directory (`--ledger-key`): an environment variable, a file or the OS
    /// keyring. The gateway never makes or writes it, and refuses to start while a key is also
    /// in `DATA/keys/ledger.key`.
    External(SecretSource),
}

/// Why a `--ledger-key` value is not a key source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySourceError {
    /// Not `env:`, `file:` or `keyring:`.
    #[error(
        "`{0}` is not a key source: write env:VARIABLE, file:/absolute/path or keyring:DESCRIPTION"
    )]
    Form(String),
    /// A file source that is not an absolute path.
    #[error("`{0}`: the key file must be an absolute path")]
    Relative(String),
}

impl std::str::FromStr for LedgerKey {
    type Err = KeySourceError;

    fn from_str(spec: &str) -> Result<LedgerKey, KeySourceError> {
        let (kind, value) = spec
            .split_once(':')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| KeySourceError::Form(spec.to_owned()))?;
        let source = match kind {
            "env" => SecretSource::Env(value.to_owned()),
            "keyring" => SecretSource::Keyring(value.to_owned()),
            "file" if Path::new(value).is_absolute() => SecretSource::File(value.to_owned()),
            "file" => return Err(KeySourceError::Relative(spec.to_owned())),
            _ => return Err(KeySourceError::Form(spec.to_owned())),
        };
        Ok(LedgerKey::External(source))
    }
}

fn describe(source: &SecretSource) -> String {
    match source {
        SecretSource::Env(v) => format!("env:{v}"),
        SecretSource::File(p) => format!("file:{p}"),
        SecretSource::Keyring(d) => format!("keyring:{d}"),
    }
}

/// Loads the ledger's signing key from where `key` says.
///
/// # Errors
/// [`WitnessError::Key`]: the key cannot be read or made, is malformed, is not the one
/// `DATA/keys/ledger.pub` lists, or (kept outside) a copy is also in the data directory.
pub fn load_key(data: &Path, key: &LedgerKey) -> Result<NoteSigner, WitnessError> {
    let source = match key {
        LedgerKey::DataDir => return load_or_create_key(data),
        LedgerKey::External(source) => source,
    };
    let inside = key_path(data);
    // INVARIANT (issue 18): a key kept outside the data directory is the only key: a copy
    // left inside would let whoever can write the data directory sign checkpoints too.
    if inside.exists() {
        return Err(key_err(
            &inside,
            format!(
                "a ledger key is in the data directory although the gateway is told to use {}; move it out (docs/ledger.md, \"The ledger key outside the data directory\")",
                describe(source)
            ),
        ));
    }
    let text = warden_executor::secrets::read_source("ledger key", source, Path::new("/"))
        .map_err(|e| key_err(Path::new(&describe(source)), e.to_string()))?;
    let signer = NoteSigner::parse(text.trim())
        .map_err(|e| key_err(Path::new(&describe(source)), e.to_string()))?;
    let public = pub_path(data);
    if public.exists() {
        let trusted = load_verifier(&public)?;
        let ids = trusted.key_ids();
        if signer.name() != trusted.name()
            || !signer.verifier().key_ids().iter().all(|k| ids.contains(k))
        {
            return Err(key_err(
                &public,
                format!(
                    "does not list the key in {} (key {}): not this log's key",
                    describe(source),
                    signer.verifier().key_ids().join(",")
                ),
            ));
        }
    } else {
        write_public(data, &signer.verifier())?;
    }
    Ok(signer)
}

/// Loads the ledger's signing key, creating it (and its public half) on first use.
///
/// # Errors
/// [`WitnessError::Key`] if the key cannot be created or read, is malformed, or is readable by
/// anyone but its owner.
pub fn load_or_create_key(data: &Path) -> Result<NoteSigner, WitnessError> {
    let path = key_path(data);
    if !path.exists() {
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(|e| key_err(&path, e.to_string()))?;
        let mut name = String::from("warden/ledger-");
        warden_core::canonical::push_hex(&mut name, &suffix);
        let signer = NoteSigner::generate(&name).map_err(|e| key_err(&path, e.to_string()))?;
        write_private(data, &signer)?;
        write_public(data, &signer.verifier())?;
        tracing::info!(key = %pub_path(data).display(), origin = %name, "created the ledger key");
        return Ok(signer);
    }
    let text = keyfile::read_secret(&path)?;
    let signer = NoteSigner::parse(&text).map_err(|e| key_err(&path, e.to_string()))?;
    if !pub_path(data).exists() {
        write_public(data, &signer.verifier())?;
    }
    Ok(signer)
}

fn write_private(data: &Path, signer: &NoteSigner) -> Result<(), WitnessError> {
    let mut text = signer.to_private_string();
    text.push('\n');
    Ok(keyfile::write_secret(&key_path(data), text.as_bytes())?)
}

/// Writes `ledger.pub` (every key of the verifier, one per line), durably.
fn write_public(data: &Path, verifier: &NoteVerifier) -> Result<(), WitnessError> {
    Ok(keyfile::write_public(
        &pub_path(data),
        format!("{verifier}\n").as_bytes(),
    )?)
}

/// Reads a verifier key from a file or, if `spec` is not a file, from the string itself.
///
/// # Errors
/// [`WitnessError::Key`] if neither parses.
pub fn load_verifier(spec: &Path) -> Result<NoteVerifier, WitnessError> {
    // A path that exists must be readable; anything else is taken as the key itself.
    if spec.exists() {
        let text = fs::read_to_string(spec).map_err(|e| key_err(spec, e.to_string()))?;
        return NoteVerifier::parse(text.trim()).map_err(|e| key_err(spec, e.to_string()));
    }
    let text = spec.to_string_lossy();
    NoteVerifier::parse(text.trim()).map_err(|e| {
        // A verifier key is `name+hash+key`: what is neither that nor a file was a path.
        if text.contains('/') || text.ends_with(".pub") || !text.contains('+') {
            key_err(spec, "no such file")
        } else {
            key_err(spec, e.to_string())
        }
    })
}

/// Opens the store: PostgreSQL when `postgres` is given (ledger named after the key's origin),
/// else the embedded store in `DATA/ledger`.
///
/// # Errors
/// [`WitnessError::Store`] if it cannot be opened.
pub fn open_store(
    data: &Path,
    postgres: Option<&str>,
    origin: &str,
    mode: Mode,
) -> Result<Box<dyn LedgerStore>, WitnessError> {
    Ok(match postgres {
        Some(url) => Box::new(PgStore::connect(url, origin)?),
        None => Box::new(FileStore::open(&data.join("ledger"), mode)?),
    })
}

/// Opens the ledger for writing.
///
/// # Errors
/// [`WitnessError`] if the key or the store cannot be used.
pub fn open_ledger(
    data: &Path,
    postgres: Option<&str>,
    key: &LedgerKey,
    receipts: warden_ledger::Receipts,
) -> Result<Ledger, WitnessError> {
    let signer = load_key(data, key)?;
    // Retired keys listed in ledger.pub keep verifying checkpoints signed before a rotation.
    let trusted = load_verifier(&pub_path(data))?;
    let store = open_store(data, postgres, signer.name(), Mode::Write)?;
    let config = LedgerConfig {
        also_trusted: Some(trusted),
        receipts,
        ..LedgerConfig::default()
    };
    Ok(Ledger::open(store, signer, config)?)
}

/// Rotates the ledger key: a new key under the same name (so the log's origin stays), its
/// verifier line appended to `ledger.pub` beside the old ones (which keep verifying old
/// checkpoints). The new private key replaces `DATA/keys/ledger.key`, or, for a key kept
/// outside the data directory, is written to `out` for the operator to install where the key
/// is kept. Returns `(old key id, new key id)`; a running gateway uses the new key after a
/// restart.
///
/// # Errors
/// [`WitnessError::Key`]; a key kept outside without `out`.
pub fn rotate_ledger_key(
    data: &Path,
    key: &LedgerKey,
    out: Option<&Path>,
) -> Result<(String, String), WitnessError> {
    let target = match (key, out) {
        (_, Some(out)) => out.to_path_buf(),
        (LedgerKey::DataDir, None) => key_path(data),
        (LedgerKey::External(source), None) => {
            return Err(key_err(
                Path::new(&describe(source)),
                "the ledger key is kept outside the data directory: name a file for the new key with --out, then install it there",
            ))
        }
    };
    let old = load_key(data, key)?;
    let old_id = old.verifier().key_ids().join(",");
    let trusted = load_verifier(&pub_path(data))?;
    let new =
        NoteSigner::generate(old.name()).map_err(|e| key_err(&key_path(data), e.to_string()))?;
    let new_id = new.verifier().key_ids().join(",");
    let all = trusted
        .merged(&new.verifier())
        .map_err(|e| key_err(&pub_path(data), e.to_string()))?;
    // The public list first, so the new key is trusted before it signs anything.
    write_public(data, &all)?;
    let mut text = new.to_private_string();
    text.push('\n');
    keyfile::write_secret(&target, text.as_bytes())?;
    Ok((old_id, new_id))
}

/// What a security event concerns (the [`warden_ledger::EventRecord`] fields besides its kind,
/// reason and time); empty where it concerns no agent, tenant or session.
#[derive(Debug, Default, Clone, Copy)]
pub struct About<'a> {
    /// The agent.
    pub agent: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// The session.
    pub session: &'a str,
    /// The trace id.
    pub trace_id: &'a str,
    /// The request id; a fresh one if `None`.
    pub request_id: Option<&'a str>,
}

impl<'a> About<'a> {
    /// An event about `agent` of `tenant`.
    #[must_use]
    pub fn agent(agent: &'a str, tenant: &'a str) -> About<'a> {
        About {
            agent,
            tenant,
            ..About::default()
        }
    }

    /// An event about approval request `id`, bound to `binding`'s call.
    #[must_use]
    pub fn approval(binding: &'a warden_identity::approval::Binding, id: &'a str) -> About<'a> {
        About {
            agent: &binding.agent,
            tenant: &binding.tenant,
            session: &binding.session,
            trace_id: "",
            request_id: Some(id),
        }
    }

    /// An event about the manifest itself (governance): agent `(governance)`.
    #[must_use]
    pub fn governance() -> About<'static> {
        About {
            agent: crate::governance::GOVERNANCE,
            ..About::default()
        }
    }
}

/// Records a security event and waits until it is durable; false (and logged) if the ledger
/// did not take it. The one way the Runtime writes an event: decisions go through
/// [`warden_ledger::Ledger::record_decision`], receipts through the Executor.
pub async fn record(ledger: &Ledger, kind: &str, about: About<'_>, reason: String) -> bool {
    let event = warden_ledger::Entry::Event(warden_ledger::EventRecord {
        kind: kind.to_owned(),
        agent: about.agent.to_owned(),
        tenant: about.tenant.to_owned(),
        session: about.session.to_owned(),
        reason,
        trace_id: about.trace_id.to_owned(),
        request_id: about
            .request_id
            .map_or_else(crate::agents::random_request_id, str::to_owned),
        time: crate::now_unix(),
    });
    let recorded = match ledger.submit(&event) {
        Ok(t) => t.recorded().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match recorded {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, kind, "could not record a security event");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outside(dir: &Path, text: &str) -> LedgerKey {
        let path = dir.join("ledger.key");
        keyfile::write_secret(&path, text.as_bytes()).unwrap();
        LedgerKey::External(SecretSource::File(path.display().to_string()))
    }

    #[test]
    fn key_sources_are_parsed_and_bad_ones_named() {
        assert_eq!(
            "env:LEDGER_KEY".parse::<LedgerKey>(),
            Ok(LedgerKey::External(SecretSource::Env("LEDGER_KEY".into())))
        );
        assert_eq!(
            "keyring:warden-ledger".parse::<LedgerKey>(),
            Ok(LedgerKey::External(SecretSource::Keyring(
                "warden-ledger".into()
            )))
        );
        assert_eq!(
            "file:/etc/warden/ledger.key".parse::<LedgerKey>(),
            Ok(LedgerKey::External(SecretSource::File(
                "/etc/warden/ledger.key".into()
            )))
        );
        assert_eq!(
            "file:ledger.key".parse::<LedgerKey>(),
            Err(KeySourceError::Relative("file:ledger.key".into()))
        );
        for bad in ["ledger.key", "vault:x", "env:", ""] {
            assert_eq!(
                bad.parse::<LedgerKey>(),
                Err(KeySourceError::Form(bad.into())),
                "{bad}"
            );
        }
    }

    /// Issue 18: the ledger key can live outside the data directory, so that whoever can
    /// write the data directory cannot sign checkpoints; it is then the only key.
    #[test]
    fn a_ledger_key_kept_outside_signs_and_a_copy_inside_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let vault = tempfile::tempdir().unwrap();
        // A gateway made its key in the data directory; the operator moves it out.
        let made = load_or_create_key(data.path()).unwrap();
        let text = fs::read_to_string(key_path(data.path())).unwrap();
        let key = outside(vault.path(), &text);
        // A copy left inside: refused, and the message says what to do.
        let err = open_ledger(data.path(), None, &key, Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("move it out"), "{err}");
        fs::remove_file(key_path(data.path())).unwrap();

        let ledger = open_ledger(data.path(), None, &key, Default::default()).unwrap();
        ledger
            .append(&warden_ledger::Entry::Event(
                warden_ledger::EventRecord::about_gateway("test.event", "outside".into(), 1),
            ))
            .unwrap();
        let note = ledger.checkpoint().unwrap();
        drop(ledger);
        let trusted = load_verifier(&pub_path(data.path())).unwrap();
        assert!(trusted.open(&note).is_ok(), "{note}");
        assert_eq!(trusted.key_ids(), made.verifier().key_ids());
        // Nothing was written back into the data directory.
        assert!(!key_path(data.path()).exists());

        // Another key (not this log's) is refused against ledger.pub.
        let stranger = NoteSigner::generate(made.name()).unwrap();
        let wrong = outside(vault.path(), &stranger.to_private_string());
        let err = open_ledger(data.path(), None, &wrong, Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not list the key"), "{err}");
    }

    #[test]
    fn a_ledger_key_kept_outside_is_rotated_into_a_file_the_operator_installs() {
        let data = tempfile::tempdir().unwrap();
        let vault = tempfile::tempdir().unwrap();
        load_or_create_key(data.path()).unwrap();
        let text = fs::read_to_string(key_path(data.path())).unwrap();
        fs::remove_file(key_path(data.path())).unwrap();
        let key = outside(vault.path(), &text);
        let err = rotate_ledger_key(data.path(), &key, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--out"), "{err}");
        let new_file = vault.path().join("ledger.key.new");
        let (old, new) = rotate_ledger_key(data.path(), &key, Some(&new_file)).unwrap();
        assert_ne!(old, new);
        assert!(!key_path(data.path()).exists());
        let listed = load_verifier(&pub_path(data.path())).unwrap().key_ids();
        assert_eq!(listed, vec![old, new.clone()]);
        // Installed where --ledger-key points, the new key opens the ledger.
        fs::rename(&new_file, vault.path().join("ledger.key")).unwrap();
        let signer = load_key(data.path(), &key).unwrap();
        assert_eq!(signer.verifier().key_ids(), vec![new]);
    }
}
