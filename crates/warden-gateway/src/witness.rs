//! Opening the Witness ledger from the data directory: the ledger key and the store.
//!
//! Layout: `DATA/keys/ledger.key` (private, mode 0600, in a 0700 directory; created on first
//! use), `DATA/keys/ledger.pub` (the verifier key to hand to auditors), `DATA/ledger/` (the
//! embedded store) — or a PostgreSQL URL instead of the embedded store.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use warden_ledger::file::{FileStore, Mode};
use warden_ledger::postgres::PgStore;
use warden_ledger::{Ledger, LedgerConfig, LedgerStore, NoteSigner, NoteVerifier};

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

/// Loads the ledger's signing key, creating it (and its public half) on first use.
///
/// # Errors
/// [`WitnessError::Key`] if the key cannot be created or read, is malformed, or is readable by
/// anyone but its owner.
pub fn load_or_create_key(data: &Path) -> Result<NoteSigner, WitnessError> {
    let path = key_path(data);
    let dir = data.join("keys");
    if !path.exists() {
        fs::create_dir_all(&dir).map_err(|e| key_err(&dir, e.to_string()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| key_err(&dir, e.to_string()))?;
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(|e| key_err(&path, e.to_string()))?;
        let mut name = String::from("warden/ledger-");
        warden_core::canonical::push_hex(&mut name, &suffix);
        let signer = NoteSigner::generate(&name).map_err(|e| key_err(&path, e.to_string()))?;
        // INVARIANT (keys never exposed): created 0600 in one step, never world-readable.
        // Written beside and renamed into place, so a crash never leaves an empty key file.
        let tmp = dir.join("ledger.key.tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| key_err(&tmp, e.to_string()))?;
        f.write_all(signer.to_private_string().as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| key_err(&tmp, e.to_string()))?;
        fs::rename(&tmp, &path).map_err(|e| key_err(&path, e.to_string()))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| key_err(&dir, e.to_string()))?;
        let public = write_public(data, &signer)?;
        tracing::info!(key = %public.display(), origin = %name, "created the ledger key");
        return Ok(signer);
    }
    let meta = fs::metadata(&path).map_err(|e| key_err(&path, e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(key_err(
            &path,
            format!(
                "is readable by others (mode {:o}); run `chmod 600` on it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(&path).map_err(|e| key_err(&path, e.to_string()))?,
    );
    let signer = NoteSigner::parse(&text).map_err(|e| key_err(&path, e.to_string()))?;
    if !pub_path(data).exists() {
        write_public(data, &signer)?;
    }
    Ok(signer)
}

/// Writes (or rewrites) `ledger.pub` from the private key, durably.
fn write_public(data: &Path, signer: &NoteSigner) -> Result<PathBuf, WitnessError> {
    let public = pub_path(data);
    let tmp = data.join("keys").join("ledger.pub.tmp");
    fs::write(&tmp, format!("{}\n", signer.verifier()))
        .and_then(|()| fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, &public))
        .map_err(|e| key_err(&public, e.to_string()))?;
    Ok(public)
}

/// Reads a verifier key from a file or, if `spec` is not a file, from the string itself.
///
/// # Errors
/// [`WitnessError::Key`] if neither parses.
pub fn load_verifier(spec: &Path) -> Result<NoteVerifier, WitnessError> {
    // A path that exists must be readable; anything else is taken as the key itself.
    let text = if spec.exists() {
        fs::read_to_string(spec).map_err(|e| key_err(spec, e.to_string()))?
    } else {
        spec.to_string_lossy().into_owned()
    };
    NoteVerifier::parse(text.trim()).map_err(|e| key_err(spec, e.to_string()))
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
pub fn open_ledger(data: &Path, postgres: Option<&str>) -> Result<Ledger, WitnessError> {
    let signer = load_or_create_key(data)?;
    // Retired keys listed in ledger.pub keep verifying checkpoints signed before a rotation.
    let trusted = load_verifier(&pub_path(data))?;
    let store = open_store(data, postgres, signer.name(), Mode::Write)?;
    let config = LedgerConfig {
        also_trusted: Some(trusted),
        ..LedgerConfig::default()
    };
    Ok(Ledger::open(store, signer, config)?)
}

/// Rotates the ledger key: a new key under the same name (so the log's origin stays), its
/// verifier line appended to `ledger.pub` beside the old ones (which keep verifying old
/// checkpoints), the old private key destroyed. Returns `(old key id, new key id)`; a running
/// gateway uses the new key after a restart.
///
/// # Errors
/// [`WitnessError::Key`].
pub fn rotate_ledger_key(data: &Path) -> Result<(String, String), WitnessError> {
    let old = load_or_create_key(data)?;
    let old_id = old.verifier().key_ids().join(",");
    let trusted = load_verifier(&pub_path(data))?;
    let new =
        NoteSigner::generate(old.name()).map_err(|e| key_err(&key_path(data), e.to_string()))?;
    let new_id = new.verifier().key_ids().join(",");
    let all = trusted
        .merged(&new.verifier())
        .map_err(|e| key_err(&pub_path(data), e.to_string()))?;
    // The public list first, so the new key is trusted before it signs anything.
    let public = pub_path(data);
    let tmp = data.join("keys").join("ledger.pub.tmp");
    fs::write(&tmp, format!("{all}\n"))
        .and_then(|()| fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, &public))
        .map_err(|e| key_err(&public, e.to_string()))?;
    let path = key_path(data);
    let tmp = data.join("keys").join("ledger.key.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| key_err(&tmp, e.to_string()))?;
    f.write_all(new.to_private_string().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| key_err(&tmp, e.to_string()))?;
    fs::rename(&tmp, &path).map_err(|e| key_err(&path, e.to_string()))?;
    Ok((old_id, new_id))
}
