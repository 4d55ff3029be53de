//! Grants: the Governor's single-use permission for one exact call.
//!
//! A grant binds session, agent, tool, the SHA-256 of the canonical arguments and the manifest
//! version, and expires (30 s by default). It is authenticated with HMAC-SHA256 under a key the
//! Governor and the Executor share, not signed with Ed25519: both ends are Warden, so nobody else
//! needs to verify a grant, and a MAC costs well under a microsecond where an Ed25519 verify costs
//! about 65 µs on this hardware (the reasoning is in `docs/grants.md`).
//!
//! Token: `base64url(payload || mac)`, where `payload` is
//! `0x01 | key_id u32 | grant_id [16] | expires_ms i64 | manifest_version u64 |` then four
//! length-prefixed (`u16`) UTF-8 fields: session, agent, tool, arguments hash; all integers
//! little-endian; `mac = HMAC-SHA256(key, "warden-grant-v1" || payload)`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use std::collections::HashMap;
use zeroize::Zeroizing;

use crate::replay::{ReplayError, ReplayGuard};
use warden_ledger::Recorded;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"warden-grant-v1";
const MAC_LEN: usize = 32;
/// Longest token accepted (fields are ids of at most 256 bytes and a hash).
pub const MAX_TOKEN_LEN: usize = 2048;
/// Default lifetime of a grant.
pub const DEFAULT_TTL_MS: i64 = 30_000;

/// The call a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    /// Session.
    pub session: &'a str,
    /// Agent.
    pub agent: &'a str,
    /// Tool.
    pub tool: &'a str,
    /// SHA-256 of the canonical arguments (`sha256:<hex>`).
    pub arguments_hash: &'a str,
}

/// What a verified grant says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantClaims {
    /// Which key made it.
    pub key_id: u32,
    /// Unique id (what replay protection remembers).
    pub id: [u8; 16],
    /// Expiry, Unix milliseconds.
    pub expires_ms: i64,
    /// The manifest version it was decided under.
    pub manifest_version: u64,
    /// Session.
    pub session: String,
    /// Agent.
    pub agent: String,
    /// Tool.
    pub tool: String,
    /// Arguments hash.
    pub arguments_hash: String,
}

impl GrantClaims {
    /// The grant id in hex (for receipts and logs).
    #[must_use]
    pub fn id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        warden_core::canonical::push_hex(&mut s, &self.id);
        s
    }
}

/// Why a grant was refused. The Executor runs nothing on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not a grant token at all.
    #[error("malformed grant: {0}")]
    Malformed(&'static str),
    /// Made with a key this Executor does not hold.
    #[error("grant made with unknown key {0}")]
    UnknownKey(u32),
    /// The MAC does not verify: forged or altered.
    #[error("grant does not verify: forged or altered")]
    BadMac,
    /// Past its expiry.
    #[error("grant expired {late_ms} ms ago")]
    Expired {
        /// How long ago.
        late_ms: i64,
    },
    /// Made for another call.
    #[error("grant is for another call: its {field} does not match")]
    WrongCall {
        /// Which field differs (never the values: they may be sensitive).
        field: &'static str,
    },
    /// The manifest moved on since the grant was made: the Governor must decide again.
    #[error("grant was made under manifest version {granted}, current is {current}: decide again")]
    ManifestChanged {
        /// Version in the grant.
        granted: u64,
        /// Current version.
        current: u64,
    },
    /// Already used.
    #[error("grant already used (replay)")]
    Replayed,
    /// The replay store failed; fail closed.
    #[error("replay protection unavailable: {0}")]
    ReplayUnavailable(String),
    /// Cannot mint.
    #[error("cannot mint a grant: {0}")]
    Mint(&'static str),
}

/// The shared MAC keys: one current key that mints, older ones that still verify.
pub struct GrantKeys {
    current: u32,
    keys: HashMap<u32, HmacSha256>,
    // Kept only so the raw bytes are zeroized on drop; the MAC states are derived from them.
    _raw: Vec<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for GrantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // INVARIANT (secrets never logged): key bytes are not printed.
        f.debug_struct("GrantKeys")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl GrantKeys {
    /// Keys `(id, bytes)`; the one with id `current` mints.
    ///
    /// # Errors
    /// [`GrantError::Mint`] if `current` is not among them.
    pub fn new(current: u32, keys: Vec<(u32, Zeroizing<[u8; 32]>)>) -> Result<Self, GrantError> {
        let mut map = HashMap::new();
        let mut raw = Vec::new();
        for (id, k) in keys {
            let mac = HmacSha256::new_from_slice(k.as_slice())
                .map_err(|_| GrantError::Mint("bad key length"))?;
            map.insert(id, mac);
            raw.push(k);
        }
        if !map.contains_key(&current) {
            return Err(GrantError::Mint("the current key is not in the key ring"));
        }
        Ok(GrantKeys {
            current,
            keys: map,
            _raw: raw,
        })
    }

    /// A fresh random key ring of one key (id 1).
    ///
    /// # Errors
    /// [`GrantError::Mint`] without system randomness.
    pub fn generate() -> Result<Self, GrantError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut_slice()).map_err(|_| GrantError::Mint("no randomness"))?;
        Self::new(1, vec![(1, k)])
    }

    fn mac(&self, key_id: u32, payload: &[u8]) -> Result<HmacSha256, GrantError> {
        let mut mac = self
            .keys
            .get(&key_id)
            .ok_or(GrantError::UnknownKey(key_id))?
            .clone();
        mac.update(DOMAIN);
        mac.update(payload);
        Ok(mac)
    }

    /// Mints a grant for the call `recorded` allowed, under the manifest version it was decided
    /// under, valid until `now_ms + ttl_ms`. Only the ledger makes a [`Recorded`]: a grant
    /// cannot be minted for a decision that is not in the log.
    ///
    /// # Errors
    /// [`GrantError::Mint`] if the recorded decision is not an allow, a field is too long or
    /// there is no randomness.
    pub fn mint(
        &self,
        recorded: &Recorded,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<String, GrantError> {
        let d = recorded.decision();
        // INVARIANT (INV-003): only an allow the ledger recorded becomes a grant, for exactly
        // the call it decided.
        if !d.is_allow() {
            return Err(GrantError::Mint("the recorded decision is not an allow"));
        }
        let call = Call {
            session: &d.session,
            agent: &d.agent,
            tool: &d.tool,
            arguments_hash: &d.arguments_hash,
        };
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|_| GrantError::Mint("no randomness"))?;
        self.mint_with_id(&call, d.manifest_version, now_ms.saturating_add(ttl_ms), id)
    }

    fn mint_with_id(
        &self,
        call: &Call<'_>,
        manifest_version: u64,
        expires_ms: i64,
        id: [u8; 16],
    ) -> Result<String, GrantError> {
        let mut payload = Vec::with_capacity(
            37 + 8 + call.session.len() + call.agent.len() + call.tool.len() + 71,
        );
        payload.push(VERSION);
        payload.extend_from_slice(&self.current.to_le_bytes());
        payload.extend_from_slice(&id);
        payload.extend_from_slice(&expires_ms.to_le_bytes());
        payload.extend_from_slice(&manifest_version.to_le_bytes());
        for field in [call.session, call.agent, call.tool, call.arguments_hash] {
            let len = u16::try_from(field.len()).map_err(|_| GrantError::Mint("field too long"))?;
            payload.extend_from_slice(&len.to_le_bytes());
            payload.extend_from_slice(field.as_bytes());
        }
        let tag = self.mac(self.current, &payload)?.finalize().into_bytes();
        payload.extend_from_slice(&tag);
        Ok(B64.encode(payload))
    }

    /// Checks a grant's MAC and decodes it, without checking what it is for. Use
    /// [`GrantKeys::redeem`] to run a call.
    ///
    /// # Errors
    /// [`GrantError`] if it is malformed or forged.
    pub fn open(&self, token: &str) -> Result<GrantClaims, GrantError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(GrantError::Malformed("too long"));
        }
        let raw = B64
            .decode(token)
            .map_err(|_| GrantError::Malformed("not base64url"))?;
        let split = raw
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(GrantError::Malformed("too short"))?;
        let (payload, tag) = raw.split_at(split);
        let mut r = Reader(payload);
        if r.take::<1>()? != [VERSION] {
            return Err(GrantError::Malformed("unknown version"));
        }
        let key_id = u32::from_le_bytes(r.take()?);
        // INVARIANT (fail-closed): nothing in the payload is believed before the MAC verifies.
        self.mac(key_id, payload)?
            .verify_slice(tag)
            .map_err(|_| GrantError::BadMac)?;
        let id = r.take::<16>()?;
        let expires_ms = i64::from_le_bytes(r.take()?);
        let manifest_version = u64::from_le_bytes(r.take()?);
        let session = r.string()?;
        let agent = r.string()?;
        let tool = r.string()?;
        let arguments_hash = r.string()?;
        if !r.0.is_empty() {
            return Err(GrantError::Malformed("trailing bytes"));
        }
        Ok(GrantClaims {
            key_id,
            id,
            expires_ms,
            manifest_version,
            session,
            agent,
            tool,
            arguments_hash,
        })
    }

    /// What the Executor does before running `call`: the grant must verify, be unexpired, be for
    /// exactly this call, be made under the current manifest version, and be unused — in that
    /// order, so a forged or stale grant never touches the replay store. On success the grant is
    /// consumed.
    ///
    /// # Errors
    /// [`GrantError`] naming the first check that failed.
    pub fn redeem(
        &self,
        token: &str,
        call: &Call<'_>,
        current_manifest: u64,
        now_ms: i64,
        replay: &dyn ReplayGuard,
    ) -> Result<GrantClaims, GrantError> {
        let claims = self.open(token)?;
        if now_ms >= claims.expires_ms {
            return Err(GrantError::Expired {
                late_ms: now_ms.saturating_sub(claims.expires_ms),
            });
        }
        for (field, granted, asked) in [
            ("session", claims.session.as_str(), call.session),
            ("agent", claims.agent.as_str(), call.agent),
            ("tool", claims.tool.as_str(), call.tool),
            (
                "arguments",
                claims.arguments_hash.as_str(),
                call.arguments_hash,
            ),
        ] {
            if granted != asked {
                return Err(GrantError::WrongCall { field });
            }
        }
        if claims.manifest_version != current_manifest {
            return Err(GrantError::ManifestChanged {
                granted: claims.manifest_version,
                current: current_manifest,
            });
        }
        match replay.consume(&claims.id, claims.expires_ms, now_ms) {
            Ok(()) => Ok(claims),
            Err(ReplayError::Seen) => Err(GrantError::Replayed),
            Err(ReplayError::Unavailable(e)) => Err(GrantError::ReplayUnavailable(e)),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], GrantError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(GrantError::Malformed("cut short"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn string(&mut self) -> Result<String, GrantError> {
        let len = usize::from(u16::from_le_bytes(self.take()?));
        let (s, rest) = self
            .0
            .split_at_checked(len)
            .ok_or(GrantError::Malformed("cut short"))?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| GrantError::Malformed("field is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn token_round_trips() {
        let k = GrantKeys::generate().unwrap();
        let call = Call {
            session: "s",
            agent: "a",
            tool: "t",
            arguments_hash: "sha256:00",
        };
        let t = k.mint_with_id(&call, 7, 1000, [9; 16]).unwrap();
        let c = k.open(&t).unwrap();
        assert_eq!(c.id, [9; 16]);
        assert_eq!(c.manifest_version, 7);
        assert_eq!(c.expires_ms, 1000);
        assert_eq!(c.tool, "t");
    }
}
