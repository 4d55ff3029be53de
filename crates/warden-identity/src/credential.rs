//! Agent credentials and delegation chains.
//!
//! The Governor signs a credential for an agent: agent id, tenant, owner (the human at the root
//! of its lineage), zone, trust level, optional tool list, expiry, manifest version, and the
//! agent's own Ed25519 public key. An agent may derive a narrower credential for a sub-agent,
//! signed with its own key: same tenant, owner and zone, no more tools, no higher trust, no later
//! expiry. Verification walks the chain to a Governor key, checks every link's signature and
//! narrowing, every expiry and every revocation, so revoking an agent (or one credential)
//! revokes everything derived from it, and every call traces back to one human (seed 000 §1).
//!
//! Token: `base64url(JSON)` of `{"body": {...}, "sig": "<base64url>", "parent": <credential or
//! null>}`; the signature covers `"warden-credential-v1\n" || canonical JSON of the body`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

const DOMAIN: &[u8] = b"warden-credential-v1\n";
/// Longest credential token accepted.
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;
/// Longest delegation chain accepted.
pub const MAX_DEPTH: usize = 8;

/// Trust levels, lowest first (the manifest's `trust` keys).
pub const TRUST_LEVELS: [&str; 4] = ["intern", "junior", "senior", "principal"];

/// The rank of a trust level (0 = `intern`), `None` for an unknown level.
#[must_use]
pub fn trust_rank(level: &str) -> Option<usize> {
    TRUST_LEVELS.iter().position(|l| *l == level)
}

/// What a credential asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    /// Unique id (hex), what revocation of one credential names.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// Its tenant.
    pub tenant: String,
    /// The human it is paired with: the lineage root.
    pub owner: String,
    /// Its zone.
    pub zone: String,
    /// Trust level (`intern` < `junior` < `senior` < `principal`).
    pub trust: String,
    /// The tools it may call; absent: whatever the manifest lets it call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeSet<String>>,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// The manifest version it was issued under.
    pub manifest_version: u64,
    /// The agent's Ed25519 public key (base64url), which signs its requests and delegations.
    pub subject_key: String,
    /// Who signed: `governor:<key id>` for a root credential, else the parent credential's id.
    pub issuer: String,
}

/// A credential and, for a delegated one, the chain above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The assertions.
    pub body: CredentialBody,
    /// Signature (base64url) by the issuer.
    pub sig: String,
    /// The credential that delegated this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<Credential>>,
}

/// Why a credential is refused (or cannot be issued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not a credential.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("credential {id}: signature does not verify (forged or altered)")]
    BadSignature {
        /// Which link.
        id: String,
    },
    /// Signed by a Governor key this instance does not know.
    #[error("credential {id}: issued by unknown key {issuer}")]
    UnknownIssuer {
        /// Which link.
        id: String,
        /// Its issuer field.
        issuer: String,
    },
    /// Expired.
    #[error("credential {id} expired")]
    Expired {
        /// Which link.
        id: String,
    },
    /// Revoked (itself, its agent, or an ancestor).
    #[error("credential {id} is revoked ({why})")]
    Revoked {
        /// Which link.
        id: String,
        /// Credential or agent.
        why: String,
    },
    /// A delegation tries to widen rights.
    #[error("delegation {id} widens its parent's rights: {what}")]
    Widens {
        /// Which link.
        id: String,
        /// What it widens.
        what: String,
    },
    /// Chain too long.
    #[error("delegation chain longer than {MAX_DEPTH}")]
    TooDeep,
    /// Cannot issue.
    #[error("cannot issue a credential: {0}")]
    Issue(String),
}

fn signing_bytes(body: &CredentialBody) -> Result<Vec<u8>, CredentialError> {
    let value = serde_json::to_value(body).map_err(|e| CredentialError::Issue(e.to_string()))?;
    let mut out = DOMAIN.to_vec();
    out.extend_from_slice(warden_core::canonical::to_canonical_string(&value).as_bytes());
    Ok(out)
}

/// A fresh random id (hex).
///
/// # Errors
/// [`CredentialError::Issue`] without system randomness.
pub fn random_id() -> Result<String, CredentialError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| CredentialError::Issue("no randomness".into()))?;
    let mut s = String::with_capacity(32);
    warden_core::canonical::push_hex(&mut s, &b);
    Ok(s)
}

/// The base64url form of a public key, as `subject_key` holds it.
#[must_use]
pub fn encode_key(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

fn decode_key(s: &str, id: &str) -> Result<VerifyingKey, CredentialError> {
    let bytes: [u8; 32] = B64
        .decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CredentialError::Malformed(format!("credential {id}: bad subject key")))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| CredentialError::Malformed(format!("credential {id}: bad subject key")))
}

impl Credential {
    /// Issues a root credential signed by the Governor key `key_id`.
    ///
    /// # Errors
    /// [`CredentialError::Issue`] if the body is not a valid root body.
    pub fn issue(
        governor: &SigningKey,
        key_id: &str,
        mut body: CredentialBody,
    ) -> Result<Self, CredentialError> {
        if trust_rank(&body.trust).is_none() {
            return Err(CredentialError::Issue(format!(
                "unknown trust level {:?}",
                body.trust
            )));
        }
        body.issuer = format!("governor:{key_id}");
        let sig = governor.sign(&signing_bytes(&body)?);
        Ok(Credential {
            body,
            sig: B64.encode(sig.to_bytes()),
            parent: None,
        })
    }

    /// Derives a narrower credential for a sub-agent, signed with this credential's subject key
    /// (`own_key`). Refuses anything that would widen rights.
    ///
    /// # Errors
    /// [`CredentialError::Widens`] or [`CredentialError::Issue`].
    pub fn derive(
        &self,
        own_key: &SigningKey,
        mut child: CredentialBody,
    ) -> Result<Self, CredentialError> {
        if encode_key(&own_key.verifying_key()) != self.body.subject_key {
            return Err(CredentialError::Issue(
                "the signing key is not this credential's subject key".into(),
            ));
        }
        child.issuer = self.body.id.clone();
        child.id = derived_id(&self.body.id, &child.agent, &child.subject_key);
        check_narrowing(&self.body, &child)?;
        let sig = own_key.sign(&signing_bytes(&child)?);
        let out = Credential {
            body: child,
            sig: B64.encode(sig.to_bytes()),
            parent: Some(Box::new(self.clone())),
        };
        if out.depth() > MAX_DEPTH {
            return Err(CredentialError::TooDeep);
        }
        Ok(out)
    }

    fn depth(&self) -> usize {
        let mut n = 1;
        let mut p = self.parent.as_deref();
        while let Some(c) = p {
            n += 1;
            p = c.parent.as_deref();
        }
        n
    }

    /// The token form.
    ///
    /// # Errors
    /// [`CredentialError::Issue`] if it cannot be encoded.
    pub fn to_token(&self) -> Result<String, CredentialError> {
        let json = serde_json::to_vec(self).map_err(|e| CredentialError::Issue(e.to_string()))?;
        Ok(B64.encode(json))
    }

    /// Parses a token (no verification: see [`Verifier::verify`]).
    ///
    /// # Errors
    /// [`CredentialError::Malformed`].
    pub fn from_token(token: &str) -> Result<Self, CredentialError> {
        let token = token.trim();
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(CredentialError::Malformed("token too long".into()));
        }
        let json = B64
            .decode(token)
            .map_err(|_| CredentialError::Malformed("not base64url".into()))?;
        serde_json::from_slice(&json).map_err(|e| CredentialError::Malformed(e.to_string()))
    }
}

fn check_narrowing(parent: &CredentialBody, child: &CredentialBody) -> Result<(), CredentialError> {
    let widen = |what: String| CredentialError::Widens {
        id: child.id.clone(),
        what,
    };
    for (field, p, c) in [
        ("tenant", &parent.tenant, &child.tenant),
        ("owner", &parent.owner, &child.owner),
        ("zone", &parent.zone, &child.zone),
    ] {
        if p != c {
            return Err(widen(format!("{field} differs from the parent's")));
        }
    }
    match (trust_rank(&parent.trust), trust_rank(&child.trust)) {
        (Some(p), Some(c)) if c <= p => {}
        _ => {
            return Err(widen(format!(
                "trust {:?} is above the parent's {:?}",
                child.trust, parent.trust
            )))
        }
    }
    if child.expires_at > parent.expires_at {
        return Err(widen("expires after its parent".into()));
    }
    if let Some(allowed) = &parent.tools {
        match &child.tools {
            None => return Err(widen("claims every tool; the parent is limited".into())),
            Some(tools) => {
                if let Some(extra) = tools.iter().find(|t| !allowed.contains(*t)) {
                    return Err(widen(format!("tool `{extra}` is not the parent's")));
                }
            }
        }
    }
    // INVARIANT (no impersonation): a sub-agent lives in its parent's namespace, so a
    // delegation can never name an agent the parent does not own (the gateway also requires the
    // name in the manifest with the same tenant, owner and zone).
    let prefix = format!("{}.", parent.agent);
    if !child.agent.starts_with(&prefix)
        || child.agent.len() == prefix.len()
        || child
            .agent
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(widen(format!(
            "a sub-agent must be named `{}<name>`, not {:?}",
            prefix, child.agent
        )));
    }
    // INVARIANT (revocation by id hits only what it names): a delegated credential's id is
    // derived from its parent, its agent and its key, never chosen by the delegating agent.
    if child.id != derived_id(&parent.id, &child.agent, &child.subject_key) {
        return Err(widen(
            "its id is not derived from its parent, agent and key".into(),
        ));
    }
    Ok(())
}

/// The id of a delegated credential: the first 16 bytes (hex) of
/// `SHA-256(parent id "\n" agent "\n" subject key)`.
#[must_use]
pub fn derived_id(parent: &str, agent: &str, subject_key: &str) -> String {
    let mut h = Sha256::new();
    for part in [parent, "\n", agent, "\n", subject_key] {
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut s = String::with_capacity(32);
    warden_core::canonical::push_hex(&mut s, d.get(..16).unwrap_or(&[]));
    s
}

/// Who is calling, established by a verified credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The calling agent.
    pub agent: String,
    /// The id of the credential presented (the leaf of the chain).
    pub credential: String,
    /// Tenant.
    pub tenant: String,
    /// The human at the root.
    pub owner: String,
    /// Zone.
    pub zone: String,
    /// Trust level.
    pub trust: String,
    /// Tool limit, if any.
    pub tools: Option<BTreeSet<String>>,
    /// The chain, root first: `agent` ids from the owner's agent down to the caller.
    pub chain: Vec<String>,
    /// The ids of the credentials on the chain, root first (the last is `credential`).
    pub credentials: Vec<String>,
    /// Earliest expiry on the chain.
    pub expires_at: i64,
    /// The agent's public key (for request signatures).
    pub subject_key: VerifyingKey,
}

/// Revoked credentials and agents. Revoking bumps an epoch, which invalidates cached
/// verifications.
#[derive(Debug, Default)]
pub struct Revocations {
    inner: RwLock<(HashSet<String>, HashSet<String>)>,
    epoch: AtomicU64,
}

impl Revocations {
    /// Nothing revoked.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes an agent and everything derived from any of its credentials.
    pub fn revoke_agent(&self, agent: &str) {
        if let Ok(mut g) = self.inner.write() {
            g.1.insert(agent.to_owned());
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Revokes one credential and everything derived from it.
    pub fn revoke_credential(&self, id: &str) {
        if let Ok(mut g) = self.inner.write() {
            g.0.insert(id.to_owned());
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether anything on a chain is revoked now: one of its `credentials` or one of its
    /// `agents` (an [`Identity`]'s `credentials` and `chain`). A poisoned list counts as
    /// revoked.
    #[must_use]
    pub fn revokes(&self, credentials: &[String], agents: &[String]) -> bool {
        let Ok(g) = self.inner.read() else {
            return true;
        };
        credentials.iter().any(|c| g.0.contains(c)) || agents.iter().any(|a| g.1.contains(a))
    }

    fn check(&self, body: &CredentialBody) -> Result<(), CredentialError> {
        // INVARIANT (fail-closed): a poisoned lock revokes rather than forgets.
        let g = self.inner.read().map_err(|_| CredentialError::Revoked {
            id: body.id.clone(),
            why: "revocation list unavailable".into(),
        })?;
        if g.0.contains(&body.id) {
            return Err(CredentialError::Revoked {
                id: body.id.clone(),
                why: "credential revoked".into(),
            });
        }
        if g.1.contains(&body.agent) {
            return Err(CredentialError::Revoked {
                id: body.id.clone(),
                why: format!("agent `{}` revoked", body.agent),
            });
        }
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

/// Verifies credentials against the Governor's keys and the revocation list, caching results
/// per token so the per-call cost after the first call is a hash and a lookup.
#[derive(Debug)]
pub struct Verifier {
    governor_keys: HashMap<String, VerifyingKey>,
    revocations: std::sync::Arc<Revocations>,
    cache: Mutex<HashMap<[u8; 32], (Identity, u64)>>,
}

impl Verifier {
    /// A verifier trusting these Governor keys (`key id` → key; old keys stay to verify what
    /// they signed before a rotation).
    #[must_use]
    pub fn new(
        governor_keys: HashMap<String, VerifyingKey>,
        revocations: std::sync::Arc<Revocations>,
    ) -> Self {
        Verifier {
            governor_keys,
            revocations,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies a token at time `now` (Unix seconds), from cache when possible.
    ///
    /// # Errors
    /// [`CredentialError`] naming the first failing link.
    pub fn verify_token(&self, token: &str, now: i64) -> Result<Identity, CredentialError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let epoch = self.revocations.epoch();
        if let Ok(cache) = self.cache.lock() {
            if let Some((id, at)) = cache.get(&key) {
                // INVARIANT (revocation is immediate): a revocation bumps the epoch, so a
                // cached result from before it is never used.
                if *at == epoch && now < id.expires_at {
                    return Ok(id.clone());
                }
            }
        }
        let identity = self.verify(&Credential::from_token(token)?, now)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(key, (identity.clone(), epoch));
        }
        Ok(identity)
    }

    /// Verifies a credential and its whole chain at time `now`.
    ///
    /// # Errors
    /// [`CredentialError`] naming the first failing link.
    pub fn verify(&self, cred: &Credential, now: i64) -> Result<Identity, CredentialError> {
        // Collect the chain, root first.
        let mut chain: Vec<&Credential> = Vec::new();
        let mut cur = Some(cred);
        while let Some(c) = cur {
            if chain.len() >= MAX_DEPTH {
                return Err(CredentialError::TooDeep);
            }
            chain.push(c);
            cur = c.parent.as_deref();
        }
        chain.reverse();
        let mut parent: Option<&CredentialBody> = None;
        let mut expires_at = i64::MAX;
        for link in &chain {
            let body = &link.body;
            let key = match parent {
                None => {
                    let kid = body.issuer.strip_prefix("governor:").ok_or_else(|| {
                        CredentialError::UnknownIssuer {
                            id: body.id.clone(),
                            issuer: body.issuer.clone(),
                        }
                    })?;
                    *self
                        .governor_keys
                        .get(kid)
                        .ok_or_else(|| CredentialError::UnknownIssuer {
                            id: body.id.clone(),
                            issuer: body.issuer.clone(),
                        })?
                }
                Some(p) => {
                    if body.issuer != p.id {
                        return Err(CredentialError::Malformed(format!(
                            "credential {} names issuer {} but its parent is {}",
                            body.id, body.issuer, p.id
                        )));
                    }
                    check_narrowing(p, body)?;
                    decode_key(&p.subject_key, &p.id)?
                }
            };
            let sig = B64
                .decode(&link.sig)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .ok_or_else(|| CredentialError::BadSignature {
                    id: body.id.clone(),
                })?;
            key.verify(&signing_bytes(body)?, &sig)
                .map_err(|_| CredentialError::BadSignature {
                    id: body.id.clone(),
                })?;
            if trust_rank(&body.trust).is_none() {
                return Err(CredentialError::Malformed(format!(
                    "credential {}: unknown trust level",
                    body.id
                )));
            }
            if now >= body.expires_at {
                return Err(CredentialError::Expired {
                    id: body.id.clone(),
                });
            }
            self.revocations.check(body)?;
            expires_at = expires_at.min(body.expires_at);
            parent = Some(body);
        }
        let leaf = &cred.body;
        Ok(Identity {
            agent: leaf.agent.clone(),
            credential: leaf.id.clone(),
            tenant: leaf.tenant.clone(),
            owner: leaf.owner.clone(),
            zone: leaf.zone.clone(),
            trust: leaf.trust.clone(),
            tools: leaf.tools.clone(),
            chain: chain.iter().map(|c| c.body.agent.clone()).collect(),
            credentials: chain.iter().map(|c| c.body.id.clone()).collect(),
            expires_at,
            subject_key: decode_key(&leaf.subject_key, &leaf.id)?,
        })
    }
}
