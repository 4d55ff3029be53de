//! A witness (C2SP `tlog-witness`): a party outside the log's data directory that remembers the
//! newest checkpoint it cosigned for each log it serves, and cosigns a new one only if it extends
//! that one (a verified consistency proof). A log rolled back or forked is then caught: the
//! witness refuses it, and an auditor who asks the witness for its latest cosigned checkpoint
//! finds a log that no longer extends it (`warden ledger verify --witness`).
//!
//! `POST <prefix>/add-checkpoint`, body: `old <size>`, the consistency proof from `old` to the
//! checkpoint's size (one base64 hash a line, at most 63), an empty line, the signed checkpoint.
//! Answers: 200 with the cosignature line; 400 a malformed request or `old` past the checkpoint;
//! 403 no valid signature by the log's key; 404 a log this witness does not serve; 409 `old` is
//! not the size it last cosigned (the body says that size); 422 the proof does not verify, or the
//! same size with another root. The check of `old` and the saving of the new checkpoint are one
//! step under a lock, and the state is on disk (written, synced, renamed) before the answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cosign::Cosigner;
use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, NoteError, NoteVerifier};

/// Most consistency-proof lines a request may carry.
pub const MAX_PROOF: usize = 63;

/// Largest request body read.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Why a witness refused a checkpoint, with the HTTP status the protocol gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the request is malformed, or `old` is past the checkpoint's size.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 403: no valid signature by the log's key.
    #[error("the checkpoint is not signed by the log's key: {0}")]
    Unsigned(String),
    /// 404: not a log this witness serves.
    #[error("unknown log `{0}`")]
    UnknownLog(String),
    /// 409: `old` is not the size the witness last cosigned, which is this.
    #[error("the witness last cosigned size {0}")]
    Conflict(u64),
    /// 422: the checkpoint does not extend what the witness cosigned before.
    #[error("the checkpoint is not consistent with the one cosigned before: {0}")]
    Inconsistent(String),
    /// 500: the witness could not save its state (nothing was cosigned).
    #[error("the witness cannot save its state: {0}")]
    Storage(String),
}

impl Refusal {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unsigned(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict(_) => 409,
            Refusal::Inconsistent(_) => 422,
            Refusal::Storage(_) => 500,
        }
    }

    /// The response body (for 409 the size and a newline, as the protocol says).
    #[must_use]
    pub fn body(&self) -> String {
        match self {
            Refusal::Conflict(size) => format!("{size}\n"),
            other => format!("{other}\n"),
        }
    }
}

/// An `add-checkpoint` request body.
#[must_use]
pub fn request_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for h in proof {
        body.push_str(&B64.encode(h));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Reads an `add-checkpoint` request body: `(old, proof, signed checkpoint)`.
///
/// # Errors
/// [`Refusal::BadRequest`] naming what is wrong.
pub fn parse_request(body: &str) -> Result<(u64, Vec<Hash>, &str), Refusal> {
    let bad = |m: &str| Refusal::BadRequest(m.to_owned());
    if body.len() > MAX_REQUEST_BYTES {
        return Err(bad("the request is too large"));
    }
    let (first, mut rest) = body
        .split_once('\n')
        .ok_or_else(|| bad("the first line must be `old <size>`"))?;
    let old = first
        .strip_prefix("old ")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| n.len() == 1 || !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| bad("the first line must be `old <size>` (decimal, no leading zeros)"))?;
    let mut proof = Vec::new();
    loop {
        let (line, after) = rest
            .split_once('\n')
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        rest = after;
        if line.is_empty() {
            break;
        }
        if proof.len() == MAX_PROOF {
            return Err(bad("more than 63 proof lines"));
        }
        let hash: Hash = B64
            .decode(line)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))?;
        proof.push(hash);
    }
    Ok((old, proof, rest))
}

/// The lowercase hex SHA-256 of a log's origin: where its latest cosigned checkpoint is served.
#[must_use]
pub fn origin_hash(origin: &str) -> String {
    let mut s = String::with_capacity(64);
    warden_core::canonical::push_hex(&mut s, &Sha256::digest(origin.as_bytes()));
    s
}

/// What the witness remembers of one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seen {
    size: u64,
    /// Base64, as in the checkpoint.
    root: String,
    /// The latest checkpoint it cosigned, with its cosignature.
    note: String,
}

/// Why a witness could not open.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// Its state file cannot be read or is damaged.
    #[error("witness state {}: {why}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// A witness: its key, the logs it serves (by origin), and what it has cosigned.
pub struct Witness {
    signer: Cosigner,
    logs: BTreeMap<String, NoteVerifier>,
    path: PathBuf,
    state: Mutex<BTreeMap<String, Seen>>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("name", &self.signer.name())
            .field("logs", &self.logs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn state_err(path: &Path, why: impl std::fmt::Display) -> WitnessError {
    WitnessError::State {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

impl Witness {
    /// Opens the witness whose state is `dir/witness-state.json` (made on first use), serving
    /// the logs whose keys are `logs` (each log's origin is its key's name).
    ///
    /// # Errors
    /// [`WitnessError`] when the state cannot be read.
    pub fn open(
        dir: &Path,
        signer: Cosigner,
        logs: Vec<NoteVerifier>,
    ) -> Result<Self, WitnessError> {
        let path = dir.join("witness-state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| state_err(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(state_err(&path, e)),
        };
        Ok(Witness {
            signer,
            logs: logs.into_iter().map(|v| (v.name().to_owned(), v)).collect(),
            path,
            state: Mutex::new(state),
        })
    }

    /// The latest checkpoint cosigned for the log whose origin hashes to `origin_hash`.
    #[must_use]
    pub fn latest(&self, origin_hash_hex: &str) -> Option<String> {
        let state = self.state.lock().ok()?;
        state
            .iter()
            .find(|(origin, _)| origin_hash(origin) == origin_hash_hex)
            .map(|(_, seen)| seen.note.clone())
    }

    /// Handles an `add-checkpoint` request at `now` (Unix seconds): the cosignature line, or
    /// why not.
    ///
    /// # Errors
    /// [`Refusal`], with its HTTP status.
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Result<String, Refusal> {
        let (old, proof, note) = parse_request(body)?;
        let origin = note.split('\n').next().unwrap_or_default();
        let log = self
            .logs
            .get(origin)
            .ok_or_else(|| Refusal::UnknownLog(origin.to_owned()))?;
        let cp = Checkpoint::open(note, log, origin).map_err(|e| match e {
            NoteError::NoSignature { .. } | NoteError::BadSignature { .. } => {
                Refusal::Unsigned(e.to_string())
            }
            other => Refusal::BadRequest(other.to_string()),
        })?;
        if old > cp.size {
            return Err(Refusal::BadRequest(format!(
                "old size {old} is past the checkpoint's size {}",
                cp.size
            )));
        }
        // INVARIANT (append-only, C2SP tlog-witness): checking `old` against what was cosigned
        // and saving the new checkpoint are one step: two requests cannot both extend one size.
        let mut state = self
            .state
            .lock()
            .map_err(|_| Refusal::Storage("the state lock is poisoned".into()))?;
        let seen = state.get(origin);
        let (seen_size, seen_root) = match seen {
            Some(s) => (s.size, decode_root(&s.root)?),
            None => (0, merkle::EMPTY_ROOT),
        };
        if old != seen_size {
            return Err(Refusal::Conflict(seen_size));
        }
        check_extends(old, &seen_root, &cp, &proof)?;
        let text = note
            .get(..=note.rfind("\n\n").unwrap_or(0))
            .unwrap_or_default();
        let line = self
            .signer
            .cosign(text, now)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let mut next = state.clone();
        next.insert(
            origin.to_owned(),
            Seen {
                size: cp.size,
                root: B64.encode(cp.root),
                note: format!("{note}{line}"),
            },
        );
        save(&self.path, &next).map_err(|e| Refusal::Storage(e.to_string()))?;
        *state = next;
        Ok(line)
    }
}

fn decode_root(b64: &str) -> Result<Hash, Refusal> {
    B64.decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Refusal::Storage("a stored root is not a hash".into()))
}

/// Whether `cp` extends the tree of `old` leaves with root `old_root` by `proof`.
fn check_extends(
    old: u64,
    old_root: &Hash,
    cp: &Checkpoint,
    proof: &[Hash],
) -> Result<(), Refusal> {
    if old == 0 {
        if !proof.is_empty() {
            return Err(Refusal::Inconsistent(
                "a proof from size 0 must be empty".into(),
            ));
        }
        if cp.size == 0 && cp.root != merkle::EMPTY_ROOT {
            return Err(Refusal::Inconsistent(
                "an empty tree must have the empty root".into(),
            ));
        }
        return Ok(());
    }
    merkle::verify_consistency(old, cp.size, old_root, &cp.root, proof)
        .map_err(|e| Refusal::Inconsistent(e.to_string()))
}

/// Writes the state durably: a temporary file, synced, renamed over the old one, the directory
/// synced.
fn save(path: &Path, state: &BTreeMap<String, Seen>) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;
    use crate::merkle::{leaf_hash, root_of_leaves, ProofPlan};
    use crate::note::NoteSigner;

    /// A log of `n` leaves: its signed checkpoint and its leaves.
    fn signed(log: &NoteSigner, leaves: &[Hash], time: i64) -> String {
        Checkpoint {
            origin: log.name().to_owned(),
            size: leaves.len() as u64,
            root: root_of_leaves(leaves),
            time,
        }
        .sign(log)
        .unwrap()
    }

    /// The consistency proof from `old` to all of `leaves`, computed from the leaves.
    fn proof(leaves: &[Hash], old: u64) -> Vec<Hash> {
        let plan = ProofPlan::consistency(old, leaves.len() as u64);
        let fetched: Vec<Hash> = plan
            .nodes
            .iter()
            .map(|n| {
                let width = 1u64 << n.level;
                let start = (n.index * width) as usize;
                let end = ((n.index + 1) * width).min(leaves.len() as u64) as usize;
                root_of_leaves(&leaves[start..end])
            })
            .collect();
        plan.assemble(&fetched).unwrap()
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn the_witness_cosigns_only_extensions_of_what_it_cosigned() {
        let dir = tempfile::tempdir().unwrap();
        let log = NoteSigner::generate("warden/ledger-test").unwrap();
        let w = Cosigner::generate("witness.test").unwrap();
        let wv = w.verifier();
        let witness = Witness::open(dir.path(), w, vec![log.verifier()]).unwrap();
        let all = leaves(13);

        // First contact: old 0, no proof.
        let n5 = signed(&log, &all[..5], 1);
        let line = witness
            .add_checkpoint(&request_body(0, &[], &n5), 100)
            .unwrap();
        assert_eq!(wv.verify(&format!("{n5}{line}")).unwrap(), 100);
        // A client that does not know the size is told it.
        let n13 = signed(&log, &all, 2);
        assert_eq!(
            witness.add_checkpoint(&request_body(0, &[], &n13), 101),
            Err(Refusal::Conflict(5))
        );
        // From 5 to 13 with the right proof: cosigned.
        let body = request_body(5, &proof(&all, 5), &n13);
        assert!(witness.add_checkpoint(&body, 102).is_ok());
        // A fork: 13 leaves with another last leaf, proved from 13 (same size, other root).
        let mut forked = all.clone();
        forked[12] = leaf_hash(b"forged");
        let f13 = signed(&log, &forked, 3);
        assert!(matches!(
            witness.add_checkpoint(&request_body(13, &[], &f13), 103),
            Err(Refusal::Inconsistent(_))
        ));
        // A rollback to 5 is refused (old past the checkpoint), and so is a longer fork whose
        // proof from 13 cannot verify.
        assert!(matches!(
            witness.add_checkpoint(&request_body(13, &[], &n5), 104),
            Err(Refusal::BadRequest(_))
        ));
        let mut longer = forked.clone();
        longer.push(leaf_hash(b"more"));
        let f14 = signed(&log, &longer, 4);
        let wrong = request_body(13, &proof(&longer, 13), &f14);
        assert!(matches!(
            witness.add_checkpoint(&wrong, 105),
            Err(Refusal::Inconsistent(_))
        ));
        // Another log, and a checkpoint signed by another key.
        let stranger = NoteSigner::generate("warden/ledger-other").unwrap();
        assert!(matches!(
            witness.add_checkpoint(&request_body(0, &[], &signed(&stranger, &all, 5)), 106),
            Err(Refusal::UnknownLog(_))
        ));
        let impostor = NoteSigner::generate("warden/ledger-test").unwrap();
        let r = witness.add_checkpoint(&request_body(13, &[], &signed(&impostor, &all, 6)), 107);
        assert!(matches!(r, Err(Refusal::Unsigned(_))), "{r:?}");
        assert_eq!(r.unwrap_err().status(), 403);

        // What it cosigned survives a restart, and is served by the origin's hash.
        drop(witness);
        let again = Witness::open(
            dir.path(),
            Cosigner::generate("witness.test").unwrap(),
            vec![log.verifier()],
        )
        .unwrap();
        let latest = again.latest(&origin_hash("warden/ledger-test")).unwrap();
        assert!(latest.starts_with(&n13));
        assert!(wv.verify(&latest).is_ok());
        assert_eq!(
            again.add_checkpoint(&request_body(5, &[], &n13), 108),
            Err(Refusal::Conflict(13))
        );
    }

    #[test]
    fn malformed_requests_are_named() {
        for (body, says) in [
            ("", "old <size>"),
            ("old 01\n\n", "leading zeros"),
            ("old x\n\n", "old <size>"),
            ("old 1\nnot-base64!\n\n", "base64"),
            ("old 1\n", "empty line"),
        ] {
            match parse_request(body) {
                Err(Refusal::BadRequest(m)) => assert!(m.contains(says), "{body:?}: {m}"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
        let many = format!(
            "old 1\n{}\n",
            format!("{}\n", B64.encode([0u8; 32])).repeat(64)
        );
        assert!(matches!(parse_request(&many), Err(Refusal::BadRequest(_))));
    }
}
