//! Signed requests: HTTP Message Signatures (RFC 9421) with Ed25519, over the method, the path
//! and the body's `Content-Digest` (RFC 9530), with `created` and `nonce` parameters so a request
//! is accepted once and only within a short window.
//!
//! The agent sends:
//!
//! ```text
//! Content-Digest: sha-256=:<base64 SHA-256 of the body>:
//! Signature-Input: sig1=("@method" "@path" "content-digest");created=<unix>;nonce="<random>";keyid="<credential id>";alg="ed25519"
//! Signature: sig1=:<base64 Ed25519 signature of the signature base>:
//! ```
//!
//! and the signature base is, per RFC 9421 §2.5:
//!
//! ```text
//! "@method": POST
//! "@path": /v1/proposals
//! "content-digest": sha-256=:...:
//! "@signature-params": ("@method" "@path" "content-digest");created=...;nonce="...";keyid="...";alg="ed25519"
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::replay::{ReplayError, ReplayGuard};

/// How far `created` may be from the server's clock, seconds.
pub const WINDOW_SECS: i64 = 300;
const COMPONENTS: &str = r#"("@method" "@path" "content-digest")"#;

impl RequestError {
    /// True when the key holder really signed the request (it was refused as stale or replayed):
    /// evidence worth recording against the agent.
    #[must_use]
    pub fn is_authentic(&self) -> bool {
        matches!(self, RequestError::Stale { .. } | RequestError::Replayed)
    }
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A header is missing or malformed.
    #[error("{header}: {what}")]
    Header {
        /// Which header.
        header: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The body does not match `Content-Digest`.
    #[error("content-digest does not match the body")]
    DigestMismatch,
    /// Outside the time window.
    #[error("signature created {skew} s away from now (window {WINDOW_SECS} s)")]
    Stale {
        /// Seconds between `created` and now.
        skew: i64,
    },
    /// `keyid` is not the credential presented.
    #[error("signature keyid does not name the presented credential")]
    WrongKey,
    /// The signature does not verify.
    #[error("request signature does not verify")]
    BadSignature,
    /// The nonce was used before.
    #[error("request replayed (nonce already used)")]
    Replayed,
    /// The replay guard failed; fail closed.
    #[error("replay protection unavailable: {0}")]
    ReplayUnavailable(String),
}

fn header(header: &'static str, what: impl Into<String>) -> RequestError {
    RequestError::Header {
        header,
        what: what.into(),
    }
}

/// `sha-256=:<base64>:` of `body`.
#[must_use]
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", B64.encode(Sha256::digest(body)))
}

fn base(method: &str, path: &str, digest: &str, params: &str) -> String {
    format!(
        "\"@method\": {method}\n\"@path\": {path}\n\"content-digest\": {digest}\n\"@signature-params\": {params}"
    )
}

/// The headers an agent sends: `(content-digest, signature-input, signature)`.
#[must_use]
pub fn sign(
    key: &SigningKey,
    keyid: &str,
    method: &str,
    path: &str,
    body: &[u8],
    created: i64,
    nonce: &str,
) -> (String, String, String) {
    let digest = content_digest(body);
    let params =
        format!(r#"{COMPONENTS};created={created};nonce="{nonce}";keyid="{keyid}";alg="ed25519""#);
    let sig = key.sign(base(method, path, &digest, &params).as_bytes());
    (
        digest,
        format!("sig1={params}"),
        format!("sig1=:{}:", B64.encode(sig.to_bytes())),
    )
}

/// What a verified request established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `created`, Unix seconds.
    pub created: i64,
    /// The nonce.
    pub nonce: String,
}

fn quoted(v: &str, name: &'static str) -> Result<String, RequestError> {
    let inner = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| header("signature-input", format!("{name} must be a quoted string")))?;
    if inner.is_empty() || inner.len() > 256 || inner.contains(['"', '\\']) {
        return Err(header(
            "signature-input",
            format!("{name} is empty, too long or escaped"),
        ));
    }
    Ok(inner.to_owned())
}

/// Verifies a signed request made with the key `subject` for the credential `credential_id`.
///
/// # Errors
/// [`RequestError`] naming the first problem; a request is consumed (its nonce remembered)
/// only once everything else has verified.
#[allow(
    clippy::too_many_arguments,
    reason = "each argument is one part of the request"
)]
pub fn verify(
    subject: &VerifyingKey,
    credential_id: &str,
    method: &str,
    path: &str,
    body: &[u8],
    digest_header: Option<&str>,
    input_header: Option<&str>,
    signature_header: Option<&str>,
    now: i64,
    replay: &dyn ReplayGuard,
) -> Result<Verified, RequestError> {
    let digest = digest_header.ok_or_else(|| header("content-digest", "missing"))?;
    if digest != content_digest(body) {
        return Err(RequestError::DigestMismatch);
    }
    let input = input_header.ok_or_else(|| header("signature-input", "missing"))?;
    let params = input.strip_prefix("sig1=").ok_or_else(|| {
        header(
            "signature-input",
            "must hold exactly one signature, labelled sig1",
        )
    })?;
    let rest = params.strip_prefix(COMPONENTS).ok_or_else(|| {
        header(
            "signature-input",
            format!("must cover exactly {COMPONENTS}"),
        )
    })?;
    let (mut created, mut nonce, mut keyid, mut alg) = (None, None, None, None);
    for item in rest.split(';').skip(1) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| header("signature-input", format!("bad parameter {item:?}")))?;
        match k {
            "created" => {
                created = Some(
                    v.parse::<i64>()
                        .map_err(|_| header("signature-input", "created is not an integer"))?,
                );
            }
            "nonce" => nonce = Some(quoted(v, "nonce")?),
            "keyid" => keyid = Some(quoted(v, "keyid")?),
            "alg" => alg = Some(quoted(v, "alg")?),
            other => {
                return Err(header(
                    "signature-input",
                    format!("unexpected parameter {other:?}"),
                ));
            }
        }
    }
    if !rest.starts_with(';') {
        return Err(header("signature-input", "parameters missing"));
    }
    let created = created.ok_or_else(|| header("signature-input", "created is required"))?;
    let nonce = nonce.ok_or_else(|| header("signature-input", "nonce is required"))?;
    let keyid = keyid.ok_or_else(|| header("signature-input", "keyid is required"))?;
    if alg.as_deref().is_some_and(|a| a != "ed25519") {
        return Err(header("signature-input", "alg must be ed25519"));
    }
    if keyid != credential_id {
        return Err(RequestError::WrongKey);
    }
    let sig_header = signature_header.ok_or_else(|| header("signature", "missing"))?;
    let sig = sig_header
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .and_then(|s| B64.decode(s).ok())
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(|| header("signature", "must be sig1=:<base64 Ed25519 signature>:"))?;
    subject
        .verify(base(method, path, digest, params).as_bytes(), &sig)
        .map_err(|_| RequestError::BadSignature)?;
    // Checked after the signature, so `Stale` and `Replayed` are only ever said of requests the
    // key holder really made (and only those are worth recording).
    let skew = now.saturating_sub(created);
    if skew.saturating_abs() > WINDOW_SECS {
        return Err(RequestError::Stale { skew });
    }
    // Single use: the nonce, scoped to the credential, is remembered past the window.
    let mut h = Sha256::new();
    h.update(keyid.as_bytes());
    h.update([0u8]);
    h.update(nonce.as_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(d.get(..16).unwrap_or(&[0u8; 16]));
    let until_ms = created.saturating_add(WINDOW_SECS + 1).saturating_mul(1000);
    match replay.consume(&id, until_ms, now.saturating_mul(1000)) {
        Ok(()) => Ok(Verified { created, nonce }),
        Err(ReplayError::Seen) => Err(RequestError::Replayed),
        Err(ReplayError::Unavailable(e)) => Err(RequestError::ReplayUnavailable(e)),
    }
}
