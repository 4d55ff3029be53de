//! Witness cosignatures (C2SP `tlog-cosignature/v1`): a witness's statement that, as of a time,
//! a checkpoint is the largest tree consistent with everything it has seen of that log.
//!
//! The signed message is `cosignature/v1\n`, `time <t>\n`, then the checkpoint's note text. The
//! signature line is an ordinary signed-note line: `— <witness name> base64(key id ‖ t as 8
//! big-endian bytes ‖ Ed25519 signature)`, the key id the first four bytes of
//! `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)`. So a cosignature can be appended to the log's
//! signed checkpoint, and log verifiers that do not know the witness skip it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use std::fmt;
use zeroize::Zeroizing;

use crate::note::{
    check_id, check_name, check_text, hex4, key_id_of, parse_private, parse_vkey, private_string,
    random_seed, NoteError,
};

/// The signed-note key type of a timestamped Ed25519 cosignature.
pub const COSIGNATURE_TYPE: u8 = 0x04;

/// Bytes of a cosignature after its key id: the time and the signature.
const STAMPED: usize = 8 + 64;

/// The message a cosignature signs.
fn message(text: &str, time: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {time}\n").into_bytes();
    m.extend_from_slice(text.as_bytes());
    m
}

/// Splits a signed note into its text and its signature lines.
fn split(note: &str) -> Result<(&str, &str), NoteError> {
    let at = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
    let text = note.get(..=at).unwrap_or_default();
    let sigs = note.get(at + 2..).unwrap_or_default();
    check_text(text)?;
    Ok((text, sigs))
}

/// A witness's private key. Zeroized when dropped.
pub struct Cosigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // INVARIANT (secrets never logged): the private key is not printed.
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .field("key_id", &hex4(&self.id))
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A new random key named `name`.
    ///
    /// # Errors
    /// [`NoteError::Key`] for a bad name or if the system has no randomness.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        let seed = random_seed()?;
        Ok(Self::from_seed(name, &seed))
    }

    /// The key whose 32-byte Ed25519 seed is `seed` (deterministic: fixed test and fuzz keys).
    /// The name is not checked.
    #[must_use]
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = key_id_of(name, COSIGNATURE_TYPE, key.verifying_key().as_bytes());
        Cosigner {
            name: name.to_owned(),
            key,
            id,
        }
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || seed)>`.
    ///
    /// # Errors
    /// [`NoteError::Key`] naming what is wrong (never quoting the key material).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id_hex, seed) =
            parse_private(text, COSIGNATURE_TYPE, "not a witness (cosignature) key")?;
        let signer = Self::from_seed(name, &seed);
        check_id(&signer.id, id_hex)?;
        Ok(signer)
    }

    /// The private key in the form [`Cosigner::parse`] reads.
    #[must_use]
    pub fn to_private_string(&self) -> Zeroizing<String> {
        private_string(&self.name, &self.id, COSIGNATURE_TYPE, self.key.as_bytes())
    }

    /// The matching verifier key.
    #[must_use]
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    /// The witness's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cosigns the checkpoint whose note text is `text` at `time` (Unix seconds); returns the
    /// signature line, newline included, to append to the signed checkpoint.
    ///
    /// # Errors
    /// [`NoteError::Malformed`] if `text` is not a note text.
    pub fn cosign(&self, text: &str, time: u64) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(&message(text, time));
        let mut blob = Vec::with_capacity(4 + STAMPED);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!("\u{2014} {} {}\n", self.name, B64.encode(blob)))
    }
}

/// A witness's public key: `<name>+<hex id>+<base64(0x04 || public key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key: VerifyingKey,
    id: [u8; 4],
}

impl fmt::Debug for CosignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for CosignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(COSIGNATURE_TYPE);
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.name, hex4(&self.id), B64.encode(raw))
    }
}

impl std::str::FromStr for CosignatureVerifier {
    type Err = NoteError;

    fn from_str(text: &str) -> Result<Self, NoteError> {
        let (name, key, id) = parse_vkey(
            text.trim(),
            COSIGNATURE_TYPE,
            "not a witness key (its type byte must be 0x04, a timestamped Ed25519 cosignature)",
        )?;
        Ok(CosignatureVerifier { name, key, id })
    }
}

impl CosignatureVerifier {
    /// The witness's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Finds this witness's cosignature among `note`'s signature lines and verifies it over the
    /// note's text; returns the time it was made.
    ///
    /// # Errors
    /// [`NoteError::NoSignature`] when the witness did not cosign the note,
    /// [`NoteError::BadSignature`] when its line does not verify, [`NoteError::Malformed`].
    pub fn verify(&self, note: &str) -> Result<u64, NoteError> {
        let (text, sigs) = split(note)?;
        for line in sigs.lines() {
            let Some((name, b64)) = line
                .strip_prefix("\u{2014} ")
                .and_then(|rest| rest.split_once(' '))
            else {
                continue;
            };
            if name != self.name {
                continue;
            }
            let Ok(blob) = B64.decode(b64) else { continue };
            if blob.get(..4) != Some(&self.id[..]) {
                continue;
            }
            let bad = || NoteError::BadSignature {
                name: name.to_owned(),
            };
            let stamped = blob
                .get(4..)
                .filter(|s| s.len() == STAMPED)
                .ok_or_else(bad)?;
            let (time, sig) = stamped.split_at(8);
            let time = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
            let sig = Signature::from_slice(sig).map_err(|_| bad())?;
            return self
                .key
                .verify(&message(text, time), &sig)
                .map(|()| time)
                .map_err(|_| bad());
        }
        Err(NoteError::NoSignature {
            name: self.name.clone(),
            key_id: hex4(&self.id),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::note::{Checkpoint, NoteSigner};

    fn checkpoint() -> (NoteSigner, String) {
        let log = NoteSigner::generate("warden.test/log").unwrap();
        let cp = Checkpoint {
            origin: "warden.test/log".into(),
            size: 9,
            root: [3u8; 32],
            time: 1_700_000_000,
        };
        let note = cp.sign(&log).unwrap();
        (log, note)
    }

    #[test]
    fn a_cosignature_verifies_and_the_log_signature_still_does() {
        let (log, note) = checkpoint();
        let w = Cosigner::generate("witness.test/w1").unwrap();
        let text = note.get(..=note.rfind("\n\n").unwrap()).unwrap();
        let cosigned = format!("{note}{}", w.cosign(text, 1_700_000_100).unwrap());
        let v: CosignatureVerifier = w.verifier().to_string().parse().unwrap();
        assert_eq!(v.verify(&cosigned).unwrap(), 1_700_000_100);
        // The log's own verifier skips the witness's line.
        assert!(log.verifier().open(&cosigned).is_ok());
        // Another witness did not cosign it.
        let other = Cosigner::generate("witness.test/w2").unwrap().verifier();
        assert!(matches!(
            other.verify(&cosigned),
            Err(NoteError::NoSignature { .. })
        ));
        // A changed size, or a changed time, breaks it.
        let tampered = cosigned.replacen("\n9\n", "\n10\n", 1);
        assert!(matches!(
            v.verify(&tampered),
            Err(NoteError::BadSignature { .. })
        ));
        // The private key reads back as the same key.
        let again = Cosigner::parse(&w.to_private_string()).unwrap();
        assert_eq!(again.verifier(), w.verifier());
    }

    #[test]
    fn a_log_key_is_not_a_witness_key() {
        let (log, _) = checkpoint();
        let err = log
            .verifier()
            .to_string()
            .parse::<CosignatureVerifier>()
            .unwrap_err();
        assert!(err.to_string().contains("0x04"), "{err}");
    }
}
