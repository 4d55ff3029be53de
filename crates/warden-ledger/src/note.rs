//! Ed25519 keys, C2SP signed notes and C2SP `tlog-checkpoint` checkpoints.
//!
//! A checkpoint's note text is
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root hash>\ntime <unix seconds>\n
//! ```
//!
//! (the fourth line is an extension line, which the format allows and tools skip), followed by a
//! blank line and one signature line `— <key name> <base64(key id || signature)>` per signer. The
//! key id of an Ed25519 key is the first four bytes of `SHA-256(name || "\n" || 0x01 || public
//! key)`. Verifier keys are written `<name>+<8 hex key id>+<base64(0x01 || public key)>`, the
//! form transparency-log tooling reads.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

use crate::merkle::Hash;

/// The signature type byte of Ed25519 keys in signed notes.
const ED25519_TYPE: u8 = 0x01;
/// Longest note accepted (the checkpoints here are ~150 bytes).
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// What is wrong with a key, a note or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key string is malformed.
    #[error("malformed key: {0}")]
    Key(String),
    /// The note is not in signed-note form.
    #[error("malformed signed note: {0}")]
    Malformed(String),
    /// No signature line is by the expected key.
    #[error("the note carries no signature by key {name}+{key_id}")]
    NoSignature {
        /// Expected key name.
        name: String,
        /// Expected key id (hex).
        key_id: String,
    },
    /// The signature by the expected key does not verify.
    #[error("the signature by {name} does not verify: the note text was altered or signed by another key")]
    BadSignature {
        /// Key name.
        name: String,
    },
    /// The note text is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    /// The checkpoint names another log.
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    WrongOrigin {
        /// Expected origin.
        expected: String,
        /// Origin found.
        found: String,
    },
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    key_id_of(name, ED25519_TYPE, public)
}

/// A signed-note key id: the first four bytes of `SHA-256(name ‖ "\n" ‖ type ‖ public key)`.
pub(crate) fn key_id_of(name: &str, kind: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([kind]);
    h.update(public);
    let d = h.finalize();
    let mut id = [0u8; 4];
    id.copy_from_slice(d.get(..4).unwrap_or(&[0u8; 4]));
    id
}

/// 32 random bytes for a new key.
pub(crate) fn random_seed() -> Result<Zeroizing<[u8; 32]>, NoteError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice())
        .map_err(|e| NoteError::Key(format!("no randomness available: {e}")))?;
    Ok(seed)
}

/// Reads `PRIVATE+KEY+<name>+<hex id>+<base64(kind || seed)>`: the name (checked), the id as
/// written, and the seed. `not_kind` says what a key of another type is not.
pub(crate) fn parse_private<'a>(
    text: &'a str,
    kind: u8,
    not_kind: &str,
) -> Result<(&'a str, &'a str, Zeroizing<[u8; 32]>), NoteError> {
    let text = text.trim_end_matches(['\n', '\r']);
    let rest = text
        .strip_prefix("PRIVATE+KEY+")
        .ok_or_else(|| NoteError::Key("private key must start with PRIVATE+KEY+".into()))?;
    // The name and id contain no '+'; the base64 key material may.
    let Some((name, (id_hex, b64))) = rest
        .split_once('+')
        .and_then(|(n, r)| Some((n, r.split_once('+')?)))
    else {
        return Err(NoteError::Key(
            "private key must be PRIVATE+KEY+<name>+<id>+<key>".into(),
        ));
    };
    check_name(name)?;
    let raw = Zeroizing::new(
        B64.decode(b64)
            .map_err(|_| NoteError::Key("private key material is not base64".into()))?,
    );
    let Some((&found, seed)) = raw.split_first() else {
        return Err(NoteError::Key(format!("private key is {not_kind}")));
    };
    if found != kind {
        return Err(NoteError::Key(format!("private key is {not_kind}")));
    }
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        seed.try_into()
            .map_err(|_| NoteError::Key("Ed25519 private key must be 32 bytes".into()))?,
    );
    Ok((name, id_hex, seed))
}

/// A private key written as [`parse_private`] reads it.
pub(crate) fn private_string(
    name: &str,
    id: &[u8; 4],
    kind: u8,
    seed: &[u8; 32],
) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(33));
    raw.push(kind);
    raw.extend_from_slice(seed);
    Zeroizing::new(format!(
        "PRIVATE+KEY+{name}+{}+{}",
        hex4(id),
        B64.encode(raw.as_slice())
    ))
}

/// Reads a verifier key, `<name>+<hex id>+<base64(kind || public key)>`: its name, key and id
/// (checked against the key). `not_kind` says what a key of another type is not.
pub(crate) fn parse_vkey(
    text: &str,
    kind: u8,
    not_kind: &str,
) -> Result<(String, VerifyingKey, [u8; 4]), NoteError> {
    let Some((name, (id_hex, b64))) = text
        .split_once('+')
        .and_then(|(n, r)| Some((n, r.split_once('+')?)))
    else {
        return Err(NoteError::Key(
            "verifier key must be <name>+<id>+<key>".into(),
        ));
    };
    check_name(name)?;
    let raw = B64
        .decode(b64)
        .map_err(|_| NoteError::Key("verifier key material is not base64".into()))?;
    let public = match raw.split_first() {
        Some((&found, public)) if found == kind => public,
        _ => return Err(NoteError::Key(format!("verifier key is {not_kind}"))),
    };
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| NoteError::Key("Ed25519 public key must be 32 bytes".into()))?;
    let key = VerifyingKey::from_bytes(&public)
        .map_err(|_| NoteError::Key("not a valid Ed25519 public key".into()))?;
    let id = key_id_of(name, kind, &public);
    if hex4(&id) != id_hex {
        return Err(NoteError::Key(format!(
            "verifier key id {id_hex} does not match the key (expected {})",
            hex4(&id)
        )));
    }
    Ok((name.to_owned(), key, id))
}

/// Refuses a key whose id, as written, is not the one its material gives.
pub(crate) fn check_id(id: &[u8; 4], written: &str) -> Result<(), NoteError> {
    if hex4(id) == written {
        Ok(())
    } else {
        Err(NoteError::Key(format!(
            "private key id {written} does not match the key (expected {})",
            hex4(id)
        )))
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name.contains('+')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(NoteError::Key(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// A private signing key with its name. The key bytes are zeroized when dropped.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // INVARIANT (secrets never logged): the private key is not printed.
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex4(&self.id))
            .finish_non_exhaustive()
    }
}

pub(crate) fn hex4(id: &[u8; 4]) -> String {
    let mut s = String::new();
    warden_core::canonical::push_hex(&mut s, id);
    s
}

impl NoteSigner {
    /// A new random key named `name`.
    ///
    /// # Errors
    /// [`NoteError::Key`] for a bad name or if the system has no randomness.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        let seed = random_seed()?;
        Ok(Self::from_seed(name, &seed))
    }

    /// The key whose 32-byte Ed25519 seed is `seed` (deterministic; for keys derived or stored
    /// elsewhere, and for fixed test keys). The name is not checked: use [`NoteSigner::parse`]
    /// or [`NoteSigner::generate`] for names from outside.
    #[must_use]
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        NoteSigner {
            name: name.to_owned(),
            key,
            id,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    ///
    /// # Errors
    /// [`NoteError::Key`] naming what is wrong (never quoting the key material).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id_hex, seed) = parse_private(text, ED25519_TYPE, "not an Ed25519 key")?;
        let signer = Self::from_seed(name, &seed);
        check_id(&signer.id, id_hex)?;
        Ok(signer)
    }

    /// The private key in the form [`NoteSigner::parse`] reads. Wrapped so it is zeroized.
    #[must_use]
    pub fn to_private_string(&self) -> Zeroizing<String> {
        private_string(&self.name, &self.id, ED25519_TYPE, self.key.as_bytes())
    }

    /// The matching verifier.
    #[must_use]
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            keys: vec![(self.key.verifying_key(), self.id)],
        }
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `text` (which must end in a newline) and returns the whole signed note.
    ///
    /// # Errors
    /// [`NoteError::Malformed`] if the text is not a valid note text.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

pub(crate) fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "note text must end with a newline".into(),
        ));
    }
    if text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::Malformed(
            "note text must not contain blank lines".into(),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed(
            "note text must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// The public keys that verify one signer's notes: the current key and, after rotations, the
/// retired ones (all under the same name), so what an old key signed keeps verifying.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    // INVARIANT (never empty): constructed from at least one key.
    keys: Vec<(VerifyingKey, [u8; 4])>,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for NoteVerifier {
    /// One `<name>+<id>+<key>` line per key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, id)) in self.keys.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            let mut raw = Vec::with_capacity(33);
            raw.push(ED25519_TYPE);
            raw.extend_from_slice(key.as_bytes());
            write!(f, "{}+{}+{}", self.name, hex4(id), B64.encode(raw))?;
        }
        Ok(())
    }
}

impl NoteVerifier {
    fn parse_one(text: &str) -> Result<(String, VerifyingKey, [u8; 4]), NoteError> {
        parse_vkey(text, ED25519_TYPE, "not an Ed25519 key")
    }

    /// Parses one `<name>+<hex id>+<base64(0x01 || public key)>` per line (blank lines
    /// ignored); every line must name the same signer.
    ///
    /// # Errors
    /// [`NoteError::Key`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut name: Option<String> = None;
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (n, key, id) = Self::parse_one(line)?;
            match &name {
                Some(existing) if *existing != n => {
                    return Err(NoteError::Key(format!(
                        "verifier keys name different signers ({existing:?} and {n:?})"
                    )));
                }
                _ => name = Some(n),
            }
            if !keys.iter().any(|(_, i)| *i == id) {
                keys.push((key, id));
            }
        }
        match name {
            Some(name) => Ok(NoteVerifier { name, keys }),
            None => Err(NoteError::Key("no verifier key given".into())),
        }
    }

    /// This verifier and `other`'s keys together (same signer name required).
    ///
    /// # Errors
    /// [`NoteError::Key`] if the names differ.
    pub fn merged(mut self, other: &NoteVerifier) -> Result<Self, NoteError> {
        if other.name != self.name {
            return Err(NoteError::Key(format!(
                "verifier keys name different signers ({:?} and {:?})",
                self.name, other.name
            )));
        }
        for (k, id) in &other.keys {
            if !self.keys.iter().any(|(_, i)| i == id) {
                self.keys.push((*k, *id));
            }
        }
        Ok(self)
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ids (hex), in the order given.
    #[must_use]
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|(_, id)| hex4(id)).collect()
    }

    /// Verifies a signed note and returns its text: some signature line must be by one of
    /// these keys and verify.
    ///
    /// # Errors
    /// [`NoteError`] if the note is malformed or carries no valid signature by these keys.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed(format!(
                "note is {} bytes, over the {MAX_NOTE_BYTES}-byte limit",
                note.len()
            )));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let text = note.get(..=split).unwrap_or_default();
        let sigs = note.get(split + 2..).unwrap_or_default();
        check_text(text)?;
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block must end with a newline".into(),
            ));
        }
        for line in sigs.lines() {
            let rest = line.strip_prefix("\u{2014} ").ok_or_else(|| {
                NoteError::Malformed(format!(
                    "signature line {line:?} must start with an em dash"
                ))
            })?;
            let (name, b64) = rest.split_once(' ').ok_or_else(|| {
                NoteError::Malformed(format!("signature line {line:?} has no signature"))
            })?;
            if name != self.name {
                continue;
            }
            let Ok(blob) = B64.decode(b64) else {
                return Err(NoteError::Malformed(format!(
                    "signature by {name} is not base64"
                )));
            };
            let Some((key, _)) = self
                .keys
                .iter()
                .find(|(_, id)| blob.get(..4) == Some(&id[..]))
            else {
                continue;
            };
            let sig = blob
                .get(4..)
                .and_then(|s| Signature::from_slice(s).ok())
                .ok_or_else(|| NoteError::BadSignature {
                    name: name.to_owned(),
                })?;
            return key
                .verify(text.as_bytes(), &sig)
                .map(|()| text)
                .map_err(|_| NoteError::BadSignature {
                    name: name.to_owned(),
                });
        }
        Err(NoteError::NoSignature {
            name: self.name.clone(),
            key_id: self.key_ids().join(","),
        })
    }
}

/// A tree head: what a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// `MTH` of those leaves.
    pub root: Hash,
    /// When it was signed, Unix seconds.
    pub time: i64,
}

impl Checkpoint {
    /// The note text.
    #[must_use]
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            self.time
        )
    }

    /// Parses a note text (not the signatures; see [`Checkpoint::open`]).
    ///
    /// # Errors
    /// [`NoteError::Checkpoint`] naming the bad line.
    pub fn parse_text(text: &str) -> Result<Self, NoteError> {
        let bad = |m: &str| NoteError::Checkpoint(m.to_owned());
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("line 1 (origin) is empty"))?;
        let size_line = lines
            .next()
            .ok_or_else(|| bad("line 2 (tree size) is missing"))?;
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(bad(
                "line 2 (tree size) must be a decimal number without leading zeros",
            ));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| bad("line 2 (tree size) does not fit in 64 bits"))?;
        let root_line = lines
            .next()
            .ok_or_else(|| bad("line 3 (root hash) is missing"))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("line 3 (root hash) must be 32 bytes of base64"))?;
        let mut time = None;
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if let Some(t) = line.strip_prefix("time ") {
                time = Some(
                    t.parse::<i64>()
                        .map_err(|_| bad("the time line is not a number"))?,
                );
            }
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            time: time.ok_or_else(|| bad("the time extension line is missing"))?,
        })
    }

    /// Signs the checkpoint.
    ///
    /// # Errors
    /// [`NoteError::Malformed`] if the origin cannot appear in a note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        if self.origin.contains('\n') || self.origin.is_empty() {
            return Err(NoteError::Malformed(
                "origin must be one non-empty line".into(),
            ));
        }
        signer.sign(&self.to_text())
    }

    /// Verifies a signed checkpoint note against `verifier` and the expected `origin`.
    ///
    /// # Errors
    /// [`NoteError`] naming what is wrong.
    pub fn open(note: &str, verifier: &NoteVerifier, origin: &str) -> Result<Self, NoteError> {
        let text = verifier.open(note)?;
        let cp = Checkpoint::parse_text(text)?;
        if cp.origin != origin {
            return Err(NoteError::WrongOrigin {
                expected: origin.to_owned(),
                found: cp.origin,
            });
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = NoteSigner::generate("warden.test/log").unwrap();
        let v = s.verifier();
        let cp = Checkpoint {
            origin: "warden.test/log".into(),
            size: 42,
            root: [7u8; 32],
            time: 1_700_000_000,
        };
        let note = cp.sign(&s).unwrap();
        assert_eq!(Checkpoint::open(&note, &v, "warden.test/log").unwrap(), cp);
        let tampered = note.replacen("42", "43", 1);
        assert!(matches!(
            Checkpoint::open(&tampered, &v, "warden.test/log"),
            Err(NoteError::BadSignature { .. })
        ));
        let v2 = NoteVerifier::parse(&v.to_string()).unwrap();
        assert_eq!(v, v2);
        let s2 = NoteSigner::parse(&s.to_private_string()).unwrap();
        assert_eq!(s2.verifier(), v);
        assert!(!format!("{s:?}").contains(&*s.to_private_string()));
    }
}
