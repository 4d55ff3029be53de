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
    write_public(data, &all)?;
    write_private(data, &new)?;
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
