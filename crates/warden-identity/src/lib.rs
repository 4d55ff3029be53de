//! Identity primitives for the governed path.
//!
//! - [`grant`]: single-use grants the Governor mints for one exact allowed call and the Executor
//!   redeems before running it (HMAC-SHA256; see `docs/grants.md` for why not Ed25519).
//! - [`replay`]: remembers used ids so a grant is accepted once.
//! - [`credential`]: agent credentials signed by the Governor, delegation to narrower
//!   sub-agent credentials, revocation that reaches everything derived, cached verification.
//! - [`lineage`]: the Governor-signed binding of a session to its agent, chain and owner.
//! - [`request`]: RFC 9421 HTTP message signatures (Ed25519) over method, path and body digest,
//!   with a time window and single-use nonces.
//!
//! - [`approval`]: approval requests bound to one exact call, votes signed by approvers'
//!   Ed25519 keys, single use.
//!
//! No I/O: keys are handed in by the composition root.

pub mod approval;
pub mod credential;
pub mod grant;
mod kept_connection;
pub mod lineage;
pub mod replay;
pub mod request;
pub mod revocation;

pub use credential::{
    Credential, CredentialBody, CredentialError, Identity, Revocations, Verifier,
};
pub use grant::{Call, GrantClaims, GrantError, GrantKeys};
pub use replay::{MemoryReplayGuard, RedisReplayGuard, ReplayError, ReplayGuard};
pub use revocation::{
    MemoryRevocations, RedisRevocations, Revocation, RevocationError, RevocationStore, RevokedKind,
};

/// Entry points for fuzz targets: never panic, whatever the input.
pub mod fuzz {
    /// Verifies arbitrary text as a session lineage token, and as signed-request headers
    /// (`Signature-Input` / `Signature`, split at the first newline).
    pub fn lineage_and_request(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let _ = crate::lineage::LineageVerifier::new(key).verify(text, 1_795_341_600);
        let (input, sig) = text.split_once('\n').unwrap_or((text, ""));
        let guard = crate::MemoryReplayGuard::new();
        let body = b"{}";
        let _ = crate::request::verify(
            &key,
            "cred",
            "POST",
            "/v1/proposals",
            body,
            Some(&crate::request::content_digest(body)),
            Some(input),
            Some(sig),
            1_795_341_600,
            &guard,
        );
    }

    /// Parses and verifies arbitrary text as a credential token.
    pub fn credential(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let keys = std::iter::once(("g1".to_owned(), key)).collect();
        let v = crate::Verifier::new(keys, std::sync::Arc::new(crate::Revocations::new()));
        let _ = v.verify_token(text, 1_795_341_600);
    }

    /// Opens arbitrary text as a grant token under a fixed key.
    pub fn grant(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let key = zeroize::Zeroizing::new([7u8; 32]);
        if let Ok(keys) = crate::GrantKeys::new(1, vec![(1, key)]) {
            let _ = keys.open(text);
        }
    }
}
