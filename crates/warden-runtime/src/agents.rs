//! Agent identity from the data directory: the Governor key, enrolment, revocation.
//!
//! Layout: `DATA/keys/governor.key` (Ed25519 seed, hex, mode 0600, created on first use),
//! `DATA/keys/governor.pub`; `DATA/agents/<id>.credential` (the token) and
//! `DATA/agents/<id>.key` (the agent's private key, 0600) written by `warden agents enroll`;
//! `DATA/revoked` (one `agent <id>` or `credential <id>` per line, appended by
//! `warden agents revoke`, re-read by the gateway when it changes).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::keyfile;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use warden_identity::credential::{encode_key, random_id};
use warden_identity::{Credential, CredentialBody, Revocations, Verifier};
use warden_identity::{Revocation, RevocationError, RevocationStore, RevokedKind};
use warden_policy::Manifest;

/// Why identity material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// A file problem.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The agent is not in the manifest.
    #[error("agent `{0}` is not in the manifest")]
    UnknownAgent(String),
    /// A name that is not an agent id (it also names the agent's files).
    #[error("`{0}` is not an agent name: it {rule}", rule = warden_manifest::manifest::ID_RULE)]
    BadName(String),
    /// Issuing failed.
    #[error("{0}")]
    Credential(#[from] warden_identity::CredentialError),
    /// The revocation store failed, or a revocation is malformed.
    #[error("revocations: {0}")]
    Revocation(#[from] RevocationError),
}

fn file_err(path: &Path, what: impl ToString) -> AgentsError {
    AgentsError::File {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

impl From<crate::keyfile::KeyFileError> for AgentsError {
    fn from(e: crate::keyfile::KeyFileError) -> Self {
        AgentsError::File {
            path: e.path,
            what: e.what,
        }
    }
}

fn read_seed(path: &Path) -> Result<SigningKey, AgentsError> {
    let text = keyfile::read_secret(path)?;
    Ok(SigningKey::from_bytes(&*keyfile::parse_hex32(&text, path)?))
}

fn new_key(for_path: &Path) -> Result<SigningKey, AgentsError> {
    Ok(SigningKey::from_bytes(&*keyfile::random32(for_path)?))
}

fn write_seed(path: &Path, key: &SigningKey) -> Result<(), AgentsError> {
    Ok(keyfile::write_secret(
        path,
        keyfile::hex32(key.as_bytes()).as_bytes(),
    )?)
}

fn write_governor_pub(data: &Path, key: &SigningKey) -> Result<(), AgentsError> {
    let line = format!("{} {}\n", key_id(key), encode_key(&key.verifying_key()));
    Ok(keyfile::write_public(
        &data.join("keys").join("governor.pub"),
        line.as_bytes(),
    )?)
}

/// A fresh request id for records the gateway writes on its own behalf.
#[must_use]
pub fn random_request_id() -> String {
    random_id().unwrap_or_else(|_| format!("t{}", crate::now_unix()))
}

/// A Governor key id: the first 8 hex digits of the SHA-256 of the public key.
#[must_use]
pub fn key_id(key: &SigningKey) -> String {
    let d = Sha256::digest(key.verifying_key().as_bytes());
    let mut s = String::new();
    warden_core::canonical::push_hex(&mut s, d.get(..4).unwrap_or(&[]));
    s
}

/// Loads the Governor key, creating it on first use.
///
/// # Errors
/// [`AgentsError::File`] if it cannot be created or read, or is readable by others.
pub fn governor_key(data: &Path) -> Result<SigningKey, AgentsError> {
    let path = data.join("keys").join("governor.key");
    if !path.exists() {
        let key = new_key(&path)?;
        write_seed(&path, &key)?;
        write_governor_pub(data, &key)?;
        return Ok(key);
    }
    read_seed(&path)
}

/// Rotates the Governor key: the current public key is appended to `keys/governor.retired`
/// (so credentials it signed keep verifying), and a new key replaces it; the old private key is
/// destroyed. Returns `(old key id, new key id)`. A running gateway uses the new key after a
/// restart, and records the rotation in the ledger when it starts.
///
/// # Errors
/// [`AgentsError::File`].
pub fn rotate_governor(data: &Path) -> Result<(String, String), AgentsError> {
    let old = governor_key(data)?;
    let retired = data.join("keys").join("governor.retired");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&retired)
        .map_err(|e| file_err(&retired, e))?;
    writeln!(f, "{} {}", key_id(&old), encode_key(&old.verifying_key()))
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&retired, e))?;
    let path = data.join("keys").join("governor.key");
    let new = new_key(&path)?;
    write_seed(&path, &new)?;
    write_governor_pub(data, &new)?;
    Ok((key_id(&old), key_id(&new)))
}

/// Retired Governor public keys (`key id` → key).
fn retired_governor_keys(
    data: &Path,
) -> Result<Vec<(String, ed25519_dalek::VerifyingKey)>, AgentsError> {
    let path = data.join("keys").join("governor.retired");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_err(&path, e)),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || file_err(&path, format!("bad line {line:?}"));
        let (kid, b64) = line.split_once(' ').ok_or_else(bad)?;
        let bytes: [u8; 32] =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b64)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
        out.push((kid.to_owned(), key));
    }
    Ok(out)
}

/// The ids of the grant MAC keys in `keys/` (`grant-<id>.key`), ascending.
fn grant_key_ids(data: &Path) -> Result<Vec<u32>, AgentsError> {
    let dir = data.join("keys");
    let mut ids = Vec::new();
    let listing = match fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(file_err(&dir, e)),
    };
    for item in listing {
        let name = item.map_err(|e| file_err(&dir, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("grant-")
            .and_then(|r| r.strip_suffix(".key"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The grant MAC key ring (`keys/grant-<id>.key`, 32 random bytes in hex, 0600): the highest id
/// mints, the others still verify. Created (id 1) on first use.
///
/// # Errors
/// [`AgentsError::File`].
pub fn grant_keys(data: &Path) -> Result<warden_identity::GrantKeys, AgentsError> {
    let mut ids = grant_key_ids(data)?;
    if ids.is_empty() {
        let path = data.join("keys").join("grant-1.key");
        keyfile::write_secret(
            &path,
            keyfile::hex32(&*keyfile::random32(&path)?).as_bytes(),
        )?;
        ids.push(1);
    }
    let mut ring = Vec::new();
    for id in &ids {
        let path = data.join("keys").join(format!("grant-{id}.key"));
        ring.push((
            *id,
            keyfile::parse_hex32(&keyfile::read_secret(&path)?, &path)?,
        ));
    }
    let current = ids.last().copied().unwrap_or(1);
    warden_identity::GrantKeys::new(current, ring).map_err(|e| file_err(&data.join("keys"), e))
}

/// Rotates the grant MAC key: a new key mints from the next start; the previous one keeps
/// verifying grants already in flight (they live seconds); older ones are deleted. Returns
/// `(old id, new id)`.
///
/// # Errors
/// [`AgentsError::File`].
pub fn rotate_grant(data: &Path) -> Result<(u32, u32), AgentsError> {
    let _ = grant_keys(data)?; // make sure one exists
    let ids = grant_key_ids(data)?;
    let old = ids.last().copied().unwrap_or(1);
    let new = old.saturating_add(1);
    let path = data.join("keys").join(format!("grant-{new}.key"));
    keyfile::write_secret(
        &path,
        keyfile::hex32(&*keyfile::random32(&path)?).as_bytes(),
    )?;
    for id in ids.iter().filter(|id| **id < old) {
        let path = data.join("keys").join(format!("grant-{id}.key"));
        fs::remove_file(&path).map_err(|e| file_err(&path, e))?;
    }
    Ok((old, new))
}

/// The key ids in use, as recorded: `governor <id>, grant <id>`.
fn key_summary(data: &Path) -> Result<String, AgentsError> {
    let governor = key_id(&governor_key(data)?);
    let _ = grant_keys(data)?;
    let grant = grant_key_ids(data)?.last().copied().unwrap_or(1);
    let ledger = crate::witness::load_or_create_key(data)
        .map_err(|e| file_err(&crate::witness::key_path(data), e))?
        .verifier()
        .key_ids()
        .join(",");
    Ok(format!(
        "governor {governor}, grant {grant}, ledger {ledger}"
    ))
}

/// Key changes not yet recorded in the ledger: compares the keys in use with `keys/recorded`.
///
/// # Errors
/// [`AgentsError::File`].
pub fn unrecorded_key_change(data: &Path) -> Result<Option<(String, String)>, AgentsError> {
    let current = key_summary(data)?;
    let marker = data.join("keys").join("recorded");
    let last = fs::read_to_string(&marker).unwrap_or_default();
    let last = last.trim();
    if last == current {
        return Ok(None);
    }
    let (kind, reason) = if last.is_empty() {
        ("key.created", format!("keys in use: {current}"))
    } else {
        (
            "key.rotated",
            format!("keys rotated from [{last}] to [{current}]; retired keys still verify what they signed"),
        )
    };
    Ok(Some((kind.to_owned(), reason)))
}

/// Records an unrecorded Governor key creation or rotation in the ledger (blocking; call it
/// before serving). The marker is written only once the event is durable.
///
/// # Errors
/// [`AgentsError::File`] if the ledger refuses the event or the marker cannot be written.
pub fn record_key_changes(
    data: &Path,
    ledger: &warden_ledger::Ledger,
    now: i64,
) -> Result<(), AgentsError> {
    let Some((kind, reason)) = unrecorded_key_change(data)? else {
        return Ok(());
    };
    let event = warden_ledger::Entry::Event(warden_ledger::EventRecord {
        kind,
        agent: String::new(),
        tenant: String::new(),
        session: String::new(),
        reason,
        trace_id: String::new(),
        request_id: random_id()?,
        time: now,
    });
    ledger
        .append(&event)
        .map_err(|e| file_err(&data.join("keys").join("recorded"), e))?;
    mark_keys_recorded(data)
}

/// Marks the keys in use as recorded in the ledger.
///
/// # Errors
/// [`AgentsError::File`].
pub fn mark_keys_recorded(data: &Path) -> Result<(), AgentsError> {
    let current = key_summary(data)?;
    let marker = data.join("keys").join("recorded");
    fs::write(&marker, format!("{current}\n")).map_err(|e| file_err(&marker, e))
}

/// Enrols `agent` from the manifest: a new agent key and a Governor-signed credential valid for
/// `ttl_secs`, written to `DATA/agents/`. Returns the credential's path.
///
/// # Errors
/// [`AgentsError`] if the agent is unknown or the files cannot be written.
pub fn enroll(
    data: &Path,
    manifest: &Manifest,
    agent: &str,
    now: i64,
    ttl_secs: i64,
) -> Result<PathBuf, AgentsError> {
    let a = manifest
        .agents
        .get(agent)
        .ok_or_else(|| AgentsError::UnknownAgent(agent.to_owned()))?;
    let governor = governor_key(data)?;
    let agent_key = new_key(&data.join("agents"))?;
    let body = CredentialBody {
        id: random_id()?,
        agent: a.id.clone(),
        tenant: a.tenant.clone(),
        owner: a.owner.clone(),
        zone: a.zone.clone(),
        trust: a.trust.as_str().to_owned(),
        tools: None,
        expires_at: now.saturating_add(ttl_secs),
        manifest_version: manifest.version,
        subject_key: encode_key(&agent_key.verifying_key()),
        issuer: String::new(),
    };
    let cred = Credential::issue(&governor, &key_id(&governor), body)?;
    write_agent(data, agent, &agent_key, &cred)
}

/// Writes an agent's key and credential into `DATA/agents/` (both 0600); returns the
/// credential's path.
fn write_agent(
    data: &Path,
    agent: &str,
    key: &SigningKey,
    cred: &Credential,
) -> Result<PathBuf, AgentsError> {
    let dir = data.join("agents");
    write_seed(&dir.join(format!("{agent}.key")), key)?;
    let path = dir.join(format!("{agent}.credential"));
    keyfile::write_secret(&path, format!("{}\n", cred.to_token()?).as_bytes())?;
    Ok(path)
}

/// Derives a narrower credential for the sub-agent `<parent>.<name>` from the parent's
/// credential and key in `DATA/agents/`, signed with the parent's key. `tools` and `trust`
/// default to the parent's; the expiry is `now + ttl_secs` or the parent's, whichever is sooner.
/// Widening is refused. Returns the new credential's path.
///
/// # Errors
/// [`AgentsError`] if the parent's files cannot be read or the delegation would widen rights.
pub fn derive(
    data: &Path,
    parent: &str,
    name: &str,
    tools: Option<std::collections::BTreeSet<String>>,
    trust: Option<String>,
    now: i64,
    ttl_secs: i64,
) -> Result<PathBuf, AgentsError> {
    // INVARIANT (an agent's files stay in DATA/agents): the names make file names, so each
    // is an id (no `/`): `--name x/../../keys/governor` would have replaced the Governor key.
    let agent = format!("{parent}.{name}");
    for id in [parent, name] {
        if !warden_manifest::manifest::valid_id(id) {
            return Err(AgentsError::BadName(id.to_owned()));
        }
    }
    let dir = data.join("agents");
    let cred_path = dir.join(format!("{parent}.credential"));
    let token = fs::read_to_string(&cred_path).map_err(|e| file_err(&cred_path, e))?;
    let cred = Credential::from_token(&token)?;
    let parent_key = agent_key(&dir.join(format!("{parent}.key")))?;
    let child_key = new_key(&dir)?;
    let body = CredentialBody {
        id: String::new(),
        agent: agent.clone(),
        tools: tools.or_else(|| cred.body.tools.clone()),
        trust: trust.unwrap_or_else(|| cred.body.trust.clone()),
        expires_at: now.saturating_add(ttl_secs).min(cred.body.expires_at),
        subject_key: encode_key(&child_key.verifying_key()),
        issuer: String::new(),
        ..cred.body.clone()
    };
    let child = cred.derive(&parent_key, body)?;
    write_agent(data, &agent, &child_key, &child)
}

/// Loads an agent's private key written by [`enroll`].
///
/// # Errors
/// [`AgentsError::File`].
pub fn agent_key(path: &Path) -> Result<SigningKey, AgentsError> {
    read_seed(path)
}

/// Appends a revocation (`agent <id>` or `credential <id>`) to `DATA/revoked`, or, for a fleet
/// whose state is in Redis (`shared`: its URL and key prefix), to the fleet's list there.
///
/// # Errors
/// [`AgentsError::Revocation`] for an unknown kind, a bad id, or a list that cannot be written.
pub fn revoke(
    data: &Path,
    shared: Option<(&str, &str)>,
    kind: &str,
    id: &str,
) -> Result<(), AgentsError> {
    let kind = RevokedKind::parse(kind)
        .ok_or_else(|| AgentsError::Revocation(RevocationError::BadId(format!("{kind} {id}"))))?;
    revocation_store(data, shared)?.revoke(&Revocation::new(kind, id)?)?;
    Ok(())
}

/// Where revocations are kept: `DATA/revoked`, or the Redis a fleet shares (`shared`: its URL
/// and key prefix).
///
/// # Errors
/// [`AgentsError::Revocation`] for a malformed Redis URL.
pub fn revocation_store(
    data: &Path,
    shared: Option<(&str, &str)>,
) -> Result<Arc<dyn RevocationStore>, AgentsError> {
    Ok(match shared {
        Some((url, prefix)) => Arc::new(warden_identity::RedisRevocations::new(url, prefix)?),
        None => Arc::new(crate::revocations::FileRevocations::new(data)),
    })
}

/// The gateway's identity state: the credential verifier and revocations kept in step with
/// `DATA/revoked`, and the Governor key that signs session lineages.
pub struct IdentityState {
    /// Verifies credentials (cached).
    pub verifier: Verifier,
    /// Signed-request nonces (in process, or shared through Redis by several instances).
    pub nonces: Box<dyn warden_identity::ReplayGuard>,
    /// Verifies session lineages (cached).
    pub lineage: warden_identity::lineage::LineageVerifier,
    /// Mints grants for allowed calls.
    pub grants: warden_identity::GrantKeys,
    governor: SigningKey,
    /// What the verifier consults, kept in step with `store`.
    revocations: Arc<Revocations>,
    /// Where revocations are kept (shared by instances).
    store: Arc<dyn RevocationStore>,
    /// How far into `store` this instance has applied.
    cursor: Mutex<u64>,
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // INVARIANT (keys never logged): only the key id is shown.
        f.debug_struct("IdentityState")
            .field("governor_key_id", &key_id(&self.governor))
            .finish_non_exhaustive()
    }
}

impl IdentityState {
    /// Loads the Governor key (creating it) and the revocation list.
    ///
    /// # Errors
    /// [`AgentsError`] if the key or the list cannot be read.
    pub fn open(data: &Path) -> Result<Self, AgentsError> {
        Self::open_with(
            data,
            Box::new(warden_identity::MemoryReplayGuard::new()),
            Arc::new(crate::revocations::FileRevocations::new(data)),
        )
    }

    /// [`IdentityState::open`] with a given nonce guard (e.g. a
    /// [`warden_identity::RedisReplayGuard`] shared by several instances) and revocation
    /// store.
    ///
    /// # Errors
    /// As [`IdentityState::open`].
    pub fn open_with(
        data: &Path,
        nonces: Box<dyn warden_identity::ReplayGuard>,
        store: Arc<dyn RevocationStore>,
    ) -> Result<Self, AgentsError> {
        let governor = governor_key(data)?;
        let revocations = Arc::new(Revocations::new());
        // Retired keys keep verifying the credentials and lineages they signed.
        let retired = retired_governor_keys(data)?;
        let mut keys: HashMap<String, _> = retired.iter().cloned().collect();
        keys.insert(key_id(&governor), governor.verifying_key());
        let state = IdentityState {
            verifier: Verifier::new(keys, Arc::clone(&revocations)),
            nonces,
            lineage: warden_identity::lineage::LineageVerifier::with_retired(
                governor.verifying_key(),
                retired.iter().map(|(_, k)| *k).collect(),
            ),
            grants: grant_keys(data)?,
            governor,
            revocations,
            store,
            cursor: Mutex::new(0),
        };
        state.refresh()?;
        Ok(state)
    }

    /// Signs the lineage of a new session for a verified identity.
    ///
    /// # Errors
    /// [`AgentsError::Credential`] if it cannot be encoded.
    pub fn open_session(
        &self,
        who: &warden_identity::Identity,
        credential: &str,
        session: &str,
        expires_at: i64,
    ) -> Result<String, AgentsError> {
        let claims = warden_identity::lineage::LineageClaims {
            session: session.to_owned(),
            agent: who.agent.clone(),
            owner: who.owner.clone(),
            chain: who.chain.clone(),
            credential: credential.to_owned(),
            expires_at,
        };
        warden_identity::lineage::issue(&self.governor, &claims).map_err(|e| {
            AgentsError::Credential(warden_identity::CredentialError::Issue(e.to_string()))
        })
    }

    /// Revokes `agent` and the credential it presented, at once (in memory and in the store).
    ///
    /// # Errors
    /// [`AgentsError::File`] if the list cannot be written (the in-memory revocation holds).
    pub fn revoke_now(&self, agent: &str, credential: &str) -> Result<(), AgentsError> {
        self.revocations.revoke_agent(agent);
        self.revocations.revoke_credential(credential);
        self.store
            .revoke(&Revocation::new(RevokedKind::Agent, agent)?)?;
        self.store
            .revoke(&Revocation::new(RevokedKind::Credential, credential)?)?;
        Ok(())
    }

    /// Whether a chain of `credentials` and `agents` (an identity's) is revoked now, as far as
    /// this process knows (call [`IdentityState::refresh`] first to read `DATA/revoked`).
    #[must_use]
    pub fn revoked(&self, credentials: &[String], agents: &[String]) -> bool {
        self.revocations.revokes(credentials, agents)
    }

    /// Applies what was revoked since the last look, by anyone (cheap when nothing was).
    ///
    /// # Errors
    /// [`AgentsError::Revocation`] if the store cannot be read; callers refuse requests then
    /// (fail closed).
    pub fn refresh(&self) -> Result<(), AgentsError> {
        let mut cursor = self.cursor.lock().map_err(|_| {
            AgentsError::Revocation(RevocationError::Store {
                store: "cursor".into(),
                what: "poisoned".into(),
            })
        })?;
        let (new, next) = self.store.since(*cursor)?;
        for r in &new {
            r.apply(&self.revocations);
        }
        *cursor = next;
        Ok(())
    }
}
