//! Incident bundles (issue 7): one agent's decisions, receipts and events (approvals, refusals,
//! tripped breakers, holds) since a time, each with its inclusion proof against one signed
//! checkpoint — verifiable offline with only the ledger's public key.
//!
//! A bundle proves that every entry in it is in the log exactly as shown, at its index. It does
//! not prove that nothing was left out: for that, verify a full export (`warden ledger export`).

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash};
use crate::note::{Checkpoint, NoteVerifier};
use crate::record::Entry;
use crate::store::{LedgerStore, StoreError};

/// The bundle format's name.
pub const FORMAT: &str = "warden-incident-v1";

/// An incident bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The agent.
    pub agent: String,
    /// Entries from this time on, Unix seconds.
    pub since: i64,
    /// The signed checkpoint every proof is against.
    pub checkpoint: String,
    /// The agent's entries, in log order.
    pub entries: Vec<Bundled>,
}

/// One entry and its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundled {
    /// Its index in the log.
    pub index: u64,
    /// The entry exactly as recorded (its bytes are what the leaf hash covers).
    pub entry: String,
    /// The inclusion proof against the checkpoint's root, hex hashes.
    pub proof: Vec<String>,
}

/// What a verified bundle says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The checkpoint's tree size.
    pub size: u64,
    /// The checkpoint's root, hex.
    pub root: String,
    /// How many entries, by kind: decisions, receipts, events.
    pub counts: (usize, usize, usize),
}

/// Why a bundle could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The log has no signed checkpoint yet.
    #[error("the ledger has no signed checkpoint yet")]
    NoCheckpoint,
    /// The checkpoint does not verify under the key.
    #[error("the checkpoint does not verify: {0}")]
    Checkpoint(String),
    /// Not a bundle of this format.
    #[error("not a {FORMAT} bundle: {0}")]
    Format(String),
    /// An entry is not a ledger entry, or belongs to another agent or time.
    #[error("entry {index}: {why}")]
    Entry {
        /// Its index.
        index: u64,
        /// What is wrong.
        why: String,
    },
    /// An entry's proof does not lead to the checkpoint's root.
    #[error("entry {index} is not in the log as shown: {why}")]
    Proof {
        /// Its index.
        index: u64,
        /// What is wrong.
        why: String,
    },
}

/// The agent an entry concerns and its time (Unix seconds).
fn agent_and_time(e: &Entry) -> (&str, i64) {
    match e {
        Entry::Decision(d) => (&d.agent, d.time),
        Entry::Receipt(r) => (&r.agent, r.started_at_ms.div_euclid(1000)),
        Entry::Event(v) => (&v.agent, v.time),
    }
}

/// Bundles `agent`'s entries from `since` on, up to the latest signed checkpoint.
///
/// # Errors
/// [`IncidentError`] if the store cannot be read or has no valid checkpoint.
pub fn build(
    store: &mut dyn LedgerStore,
    verifier: &NoteVerifier,
    agent: &str,
    since: i64,
) -> Result<Bundle, IncidentError> {
    let note = store
        .latest_checkpoint()?
        .ok_or(IncidentError::NoCheckpoint)?;
    let cp = Checkpoint::open(&note, verifier, verifier.name())
        .map_err(|e| IncidentError::Checkpoint(e.to_string()))?;
    let mut picked = Vec::new();
    store.scan(0, cp.size, &mut |index, bytes| {
        // Entries that do not parse are not the agent's (`warden ledger verify` reports them).
        if let Ok(e) = Entry::from_bytes(bytes) {
            let (who, time) = agent_and_time(&e);
            if who == agent && time >= since {
                picked.push((index, String::from_utf8_lossy(bytes).into_owned()));
            }
        }
        Ok(())
    })?;
    let mut entries = Vec::with_capacity(picked.len());
    for (index, entry) in picked {
        let proven = crate::proof::inclusion(store, index, cp.size)?;
        entries.push(Bundled {
            index,
            entry,
            proof: proven.proof,
        });
    }
    Ok(Bundle {
        format: FORMAT.into(),
        agent: agent.to_owned(),
        since,
        checkpoint: note,
        entries,
    })
}

/// Verifies a bundle with only the ledger's public key: the checkpoint's signature, every
/// entry's inclusion proof against it, and that every entry is the named agent's, from `since`
/// on, in log order.
///
/// # Errors
/// [`IncidentError`] naming the first thing that does not verify.
pub fn verify(bundle: &Bundle, verifier: &NoteVerifier) -> Result<Verified, IncidentError> {
    if bundle.format != FORMAT {
        return Err(IncidentError::Format(format!(
            "format is `{}`",
            bundle.format.chars().take(64).collect::<String>()
        )));
    }
    let cp = Checkpoint::open(&bundle.checkpoint, verifier, verifier.name())
        .map_err(|e| IncidentError::Checkpoint(e.to_string()))?;
    let mut counts = (0, 0, 0);
    let mut last = None;
    for b in &bundle.entries {
        let index = b.index;
        let bad = |why: String| IncidentError::Entry { index, why };
        if last.is_some_and(|l| index <= l) {
            return Err(bad("out of log order, or repeated".into()));
        }
        last = Some(index);
        let proof: Vec<Hash> = b
            .proof
            .iter()
            .map(|h| merkle::from_hex(h))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a proof hash is not 64 hex digits".into()))?;
        merkle::verify_inclusion(
            index,
            cp.size,
            &merkle::leaf_hash(b.entry.as_bytes()),
            &proof,
            &cp.root,
        )
        .map_err(|e| IncidentError::Proof {
            index,
            why: e.to_string(),
        })?;
        let e = Entry::from_bytes(b.entry.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let (who, time) = agent_and_time(&e);
        if who != bundle.agent || time < bundle.since {
            return Err(bad(format!(
                "is agent `{who}`'s at {time}, not `{}`'s from {}",
                bundle.agent, bundle.since
            )));
        }
        match e {
            Entry::Decision(_) => counts.0 += 1,
            Entry::Receipt(_) => counts.1 += 1,
            Entry::Event(_) => counts.2 += 1,
        }
    }
    Ok(Verified {
        size: cp.size,
        root: merkle::to_hex(&cp.root),
        counts,
    })
}
