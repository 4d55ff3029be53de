//! Session lineage: the Governor's signed statement that a session belongs to one agent, reached
//! through one delegation chain from one owner (seed 000 §1). Every signed proposal carries it;
//! a proposal whose lineage does not match is denied and gets the agent revoked (seed 000
//! "Global Revocation").
//!
//! Token: `base64url(JSON claims) "." base64url(Ed25519 signature)`, the signature over
//! `"warden-lineage-v1\n" || canonical JSON of the claims`. Verified tokens are cached by their
//! SHA-256, so the per-call cost after the first is a hash and a lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

const DOMAIN: &[u8] = b"warden-lineage-v1\n";
/// Longest lineage token accepted.
pub const MAX_LINEAGE_LEN: usize = 8 * 1024;

/// What a lineage binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageClaims {
    /// The session.
    pub session: String,
    /// The agent the session belongs to.
    pub agent: String,
    /// The human at the root.
    pub owner: String,
    /// The delegation chain, root agent first.
    pub chain: Vec<String>,
    /// The credential the session was opened with.
    pub credential: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

impl LineageClaims {
    /// The lineage hash: SHA-256 (hex) of the canonical claims — what records can cite.
    ///
    /// # Errors
    /// [`LineageError::Malformed`] if the claims cannot be encoded.
    pub fn hash(&self) -> Result<String, LineageError> {
        let bytes = canonical(self)?;
        let mut s = String::from("sha256:");
        warden_core::canonical::push_hex(&mut s, &Sha256::digest(bytes));
        Ok(s)
    }
}

/// Why a lineage token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineageError {
    /// Not a lineage token.
    #[error("malformed lineage: {0}")]
    Malformed(String),
    /// Not signed by the Governor (forged or altered).
    #[error("lineage does not verify: forged or altered")]
    BadSignature,
    /// Expired.
    #[error("lineage expired")]
    Expired,
}

fn canonical(claims: &LineageClaims) -> Result<Vec<u8>, LineageError> {
    let v = serde_json::to_value(claims).map_err(|e| LineageError::Malformed(e.to_string()))?;
    Ok(warden_core::canonical::to_canonical_string(&v).into_bytes())
}

/// Signs a lineage.
///
/// # Errors
/// [`LineageError::Malformed`] if the claims cannot be encoded.
pub fn issue(governor: &SigningKey, claims: &LineageClaims) -> Result<String, LineageError> {
    let body = canonical(claims)?;
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&body);
    let sig = governor.sign(&msg);
    Ok(format!(
        "{}.{}",
        B64.encode(&body),
        B64.encode(sig.to_bytes())
    ))
}

/// Verifies lineage tokens (cached).
#[derive(Debug)]
pub struct LineageVerifier {
    keys: Vec<VerifyingKey>,
    cache: Mutex<HashMap<[u8; 32], LineageClaims>>,
}

impl LineageVerifier {
    /// A verifier for the Governor key `key` (and, after rotations, the retired keys in
    /// `retired`, so open sessions survive a rotation).
    #[must_use]
    pub fn new(key: VerifyingKey) -> Self {
        Self::with_retired(key, Vec::new())
    }

    /// See [`LineageVerifier::new`].
    #[must_use]
    pub fn with_retired(key: VerifyingKey, retired: Vec<VerifyingKey>) -> Self {
        let mut keys = vec![key];
        keys.extend(retired);
        LineageVerifier {
            keys,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `token` at `now` (Unix seconds).
    ///
    /// # Errors
    /// [`LineageError`].
    pub fn verify(&self, token: &str, now: i64) -> Result<LineageClaims, LineageError> {
        if token.len() > MAX_LINEAGE_LEN {
            return Err(LineageError::Malformed("too long".into()));
        }
        let k: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.cache.lock().ok().and_then(|c| c.get(&k).cloned());
        let claims = match cached {
            Some(c) => c,
            None => {
                let (body_b64, sig_b64) = token
                    .split_once('.')
                    .ok_or_else(|| LineageError::Malformed("no signature part".into()))?;
                let body = B64
                    .decode(body_b64)
                    .map_err(|_| LineageError::Malformed("claims are not base64url".into()))?;
                let sig = B64
                    .decode(sig_b64)
                    .ok()
                    .and_then(|b| Signature::from_slice(&b).ok())
                    .ok_or_else(|| LineageError::Malformed("bad signature encoding".into()))?;
                let mut msg = DOMAIN.to_vec();
                msg.extend_from_slice(&body);
                // INVARIANT (fail-closed): claims are parsed only after the signature verifies.
                if !self.keys.iter().any(|k| k.verify(&msg, &sig).is_ok()) {
                    return Err(LineageError::BadSignature);
                }
                let claims: LineageClaims = serde_json::from_slice(&body)
                    .map_err(|e| LineageError::Malformed(e.to_string()))?;
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() > 100_000 {
                        c.clear();
                    }
                    c.insert(k, claims.clone());
                }
                claims
            }
        };
        if now >= claims.expires_at {
            return Err(LineageError::Expired);
        }
        Ok(claims)
    }
}
