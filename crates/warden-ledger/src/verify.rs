//! Full verification: of a stored log, and of an export with nothing but the public key.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::merkle::{self, Frontier, Hash, NodeId};
use crate::note::{Checkpoint, NoteVerifier};
use crate::record::Entry;
use crate::store::{LedgerStore, StoreError};

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{what}", index.map(|i| format!("entry {i}: ")).unwrap_or_default())]
pub struct VerifyError {
    /// The first bad entry, when one can be named.
    pub index: Option<u64>,
    /// What is wrong.
    pub what: String,
}

fn at(index: u64, what: impl Into<String>) -> VerifyError {
    VerifyError {
        index: Some(index),
        what: what.into(),
    }
}

fn whole(what: impl Into<String>) -> VerifyError {
    VerifyError {
        index: None,
        what: what.into(),
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Entries checked.
    pub entries: u64,
    /// Whether the log has a signed checkpoint at all (a new ledger stopped before its first
    /// one has none).
    pub signed: bool,
    /// The signed checkpoint's size (0 without one): the entries the signature vouches for.
    pub checkpoint_size: u64,
    /// The signed checkpoint's root, hex (the empty tree's without one).
    pub checkpoint_root: String,
    /// Entries after the signed checkpoint. Their frames and stored tree nodes were checked,
    /// but no signature covers them: they are what a crash leaves before the next checkpoint,
    /// and also what someone able to write the data directory could have appended.
    pub unsigned: u64,
    /// The size of the older checkpoint the log was shown to extend, if one was given.
    pub extends_checkpoint: Option<u64>,
}

/// Recomputes leaves and nodes as entries stream past, comparing against checkpoints.
struct Rebuild<'a> {
    frontier: Frontier,
    completed: Vec<Hash>,
    targets: Vec<(&'a Checkpoint, &'static str)>,
}

impl<'a> Rebuild<'a> {
    fn new(targets: Vec<(&'a Checkpoint, &'static str)>) -> Self {
        Rebuild {
            frontier: Frontier::new(),
            completed: Vec::with_capacity(64),
            targets,
        }
    }

    fn check_targets(&self) -> Result<(), VerifyError> {
        let size = self.frontier.size();
        for (cp, which) in &self.targets {
            if cp.size == size && self.frontier.root() != cp.root {
                return Err(whole(format!(
                    "entries 0..{size} do not hash to the root of the {which} (the log was altered)"
                )));
            }
        }
        Ok(())
    }

    /// Adds a leaf (the nodes it completed are left in `completed`) and checks any checkpoint
    /// that ends here.
    fn push(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        self.completed.clear();
        self.frontier
            .push(merkle::leaf_hash(bytes), &mut self.completed);
        self.check_targets()
    }
}

fn completed_ids(index: u64, count: usize, out: &mut Vec<NodeId>) {
    for level in 0..count {
        let level = u32::try_from(level).unwrap_or(u32::MAX);
        out.push(NodeId {
            level,
            index: index >> level,
        });
    }
}

/// Verifies a stored log: every frame's checksum, every leaf and every stored tree node
/// recomputed, the latest signed checkpoint's signature and root, and (if given) that the log
/// extends an older checkpoint the caller trusts. With `records`, also decodes every entry and
/// checks it is a well-formed record in canonical form (about four times slower: the integrity
/// of the log does not depend on it, the hashes already cover every byte).
///
/// # Errors
/// [`VerifyError`] naming the first bad entry (or the checkpoint) and what is wrong.
pub fn verify_store(
    store: &mut dyn LedgerStore,
    verifier: &NoteVerifier,
    older: Option<&str>,
    records: bool,
) -> Result<Report, VerifyError> {
    let origin = verifier.name().to_owned();
    let note = store
        .latest_checkpoint()
        .map_err(|e| whole(e.to_string()))?;
    let signed = note.is_some();
    // Without a checkpoint, the frames and tree are still checked; the signature vouches for
    // none of the entries (all of them are reported unsigned).
    let cp = match note {
        Some(note) => Checkpoint::open(&note, verifier, &origin)
            .map_err(|e| whole(format!("latest checkpoint: {e}")))?,
        None => Checkpoint {
            origin: origin.clone(),
            size: 0,
            root: merkle::EMPTY_ROOT,
            time: 0,
        },
    };
    let old = older
        .map(|n| Checkpoint::open(n, verifier, &origin))
        .transpose()
        .map_err(|e| whole(format!("the older checkpoint: {e}")))?;
    if let Some(o) = &old {
        if o.size > cp.size {
            return Err(whole(format!(
                "the older checkpoint (size {}) is larger than the latest (size {})",
                o.size, cp.size
            )));
        }
    }
    let size = store.size().map_err(|e| whole(e.to_string()))?;
    if size < cp.size {
        return Err(whole(format!(
            "the checkpoint covers {} entries but the log has {size}",
            cp.size
        )));
    }
    let mut targets = vec![(&cp, "latest signed checkpoint")];
    if let Some(o) = &old {
        targets.push((o, "older checkpoint you trusted"));
    }
    let mut rebuild = Rebuild::new(targets);
    for c in std::iter::once(&cp).chain(old.as_ref()) {
        if c.size == 0 && c.root != merkle::EMPTY_ROOT {
            return Err(whole("a checkpoint of the empty log has a non-empty root"));
        }
    }
    // Stored nodes are compared in chunks, so the store is read sequentially.
    const CHUNK: usize = 8192;
    let mut ids: Vec<NodeId> = Vec::with_capacity(CHUNK * 2 + 64);
    let mut expect: Vec<(u64, Hash)> = Vec::with_capacity(CHUNK * 2 + 64);
    let flush = |store_ids: &mut Vec<NodeId>,
                 expect: &mut Vec<(u64, Hash)>,
                 store: &mut dyn LedgerStore|
     -> Result<(), VerifyError> {
        if store_ids.is_empty() {
            return Ok(());
        }
        let stored = store.nodes(store_ids).map_err(|e| whole(e.to_string()))?;
        for ((id, (index, want)), got) in store_ids.iter().zip(expect.iter()).zip(stored.iter()) {
            if want != got {
                return Err(at(
                    *index,
                    if id.level == 0 {
                        "the entry does not hash to its stored leaf hash (the entry or the tree was altered)".to_owned()
                    } else {
                        format!(
                            "the stored tree node at level {} differs from the recomputed one",
                            id.level
                        )
                    },
                ));
            }
        }
        store_ids.clear();
        expect.clear();
        Ok(())
    };
    let mut pending_err: Option<VerifyError> = None;
    let mut entries_seen = 0u64;
    // Scan in slices so stored nodes can be compared between them.
    let mut from = 0u64;
    while from < size {
        let to = size.min(from + CHUNK as u64);
        let res = store.scan(from, to, &mut |index, bytes| {
            if records {
                if let Err(e) = Entry::from_bytes(bytes) {
                    pending_err = Some(at(index, e.to_string()));
                    return Err(StoreError::Rejected(String::new()));
                }
            }
            if let Err(e) = rebuild.push(bytes) {
                pending_err = Some(e);
                return Err(StoreError::Rejected(String::new()));
            }
            completed_ids(index, rebuild.completed.len(), &mut ids);
            expect.extend(rebuild.completed.iter().map(|h| (index, *h)));
            entries_seen += 1;
            Ok(())
        });
        if let Some(e) = pending_err.take() {
            // Compare what was read so far first: an altered entry is best named by its leaf.
            flush(&mut ids, &mut expect, store)?;
            return Err(e);
        }
        if let Err(e) = res {
            return Err(match e {
                StoreError::Corrupt(what) => {
                    // The store names the entry in its message.
                    whole(what)
                }
                other => whole(other.to_string()),
            });
        }
        flush(&mut ids, &mut expect, store)?;
        from = to;
    }
    if entries_seen != size {
        return Err(whole(format!(
            "the log claims {size} entries but {entries_seen} could be read"
        )));
    }
    Ok(Report {
        entries: size,
        signed,
        checkpoint_size: cp.size,
        checkpoint_root: merkle::to_hex(&cp.root),
        unsigned: size.saturating_sub(cp.size),
        extends_checkpoint: old.map(|o| o.size),
    })
}

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportHeader {
    format: String,
    checkpoint: String,
}

/// One entry line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportLine {
    index: u64,
    leaf_hash: String,
    entry: Value,
}

const EXPORT_FORMAT: &str = "warden-ledger-export/1";

/// Writes the entries covered by the latest checkpoint as JSON Lines: a header carrying the
/// signed checkpoint, then one `{"index", "leaf_hash", "entry"}` line per entry.
///
/// # Errors
/// [`StoreError`] from the store or the writer.
pub fn export(store: &mut dyn LedgerStore, out: &mut dyn Write) -> Result<u64, StoreError> {
    let note = store
        .latest_checkpoint()?
        .ok_or_else(|| StoreError::Rejected("the ledger has no signed checkpoint yet".into()))?;
    let text = note
        .split_once("\n\n")
        .map(|(t, _)| format!("{t}\n"))
        .unwrap_or_default();
    let cp = Checkpoint::parse_text(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let w = |e: std::io::Error| StoreError::Io {
        op: "write export",
        path: "-".into(),
        source: e,
    };
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        checkpoint: note,
    };
    serde_json::to_writer(&mut *out, &header).map_err(|e| w(e.into()))?;
    out.write_all(b"\n").map_err(w)?;
    let mut written = 0u64;
    store.scan(0, cp.size, &mut |index, bytes| {
        written += 1;
        let entry: Value = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Corrupt(format!("entry {index} is not JSON: {e}")))?;
        let line = ExportLine {
            index,
            leaf_hash: merkle::to_hex(&merkle::leaf_hash(bytes)),
            entry,
        };
        serde_json::to_writer(&mut *out, &line).map_err(|e| w(e.into()))?;
        out.write_all(b"\n").map_err(w)
    })?;
    // INVARIANT (no unverifiable export): exactly the entries the checkpoint covers.
    if written != cp.size {
        return Err(StoreError::Corrupt(format!(
            "the checkpoint covers {} entries but only {written} could be exported",
            cp.size
        )));
    }
    Ok(cp.size)
}

/// Verifies an export with nothing but the ledger's public key: the checkpoint's signature,
/// every entry's canonical form and leaf hash, the order, and that the entries hash to the
/// signed root.
///
/// # Errors
/// [`VerifyError`] naming the first bad entry or what else is wrong.
pub fn verify_export(
    input: &mut dyn BufRead,
    verifier: &NoteVerifier,
) -> Result<Report, VerifyError> {
    let mut line = String::new();
    let mut read_line = |line: &mut String, what: &str| -> Result<bool, VerifyError> {
        line.clear();
        let n = std::io::Read::take(&mut *input, 2 * crate::record::MAX_ENTRY_BYTES as u64 + 1)
            .read_line(line)
            .map_err(|e| whole(format!("reading {what}: {e}")))?;
        if n > 2 * crate::record::MAX_ENTRY_BYTES {
            return Err(whole(format!("{what} is longer than any entry can be")));
        }
        Ok(n > 0)
    };
    if !read_line(&mut line, "the header")? {
        return Err(whole("the export is empty"));
    }
    let header: ExportHeader = serde_json::from_str(&line)
        .map_err(|e| whole(format!("the header line is not an export header: {e}")))?;
    if header.format != EXPORT_FORMAT {
        return Err(whole(format!("unknown export format {:?}", header.format)));
    }
    let cp = Checkpoint::open(&header.checkpoint, verifier, verifier.name())
        .map_err(|e| whole(format!("checkpoint: {e}")))?;
    let mut rebuild = Rebuild::new(vec![(&cp, "signed checkpoint")]);
    rebuild.check_targets()?;
    let mut expected = 0u64;
    while read_line(&mut line, "an entry line")? {
        if line.trim().is_empty() {
            continue;
        }
        let item: ExportLine = serde_json::from_str(&line)
            .map_err(|e| at(expected, format!("the line is not an export entry: {e}")))?;
        if item.index != expected {
            return Err(at(
                expected,
                format!("expected entry {expected} but the line says {}", item.index),
            ));
        }
        let bytes = warden_core::canonical::to_canonical_string(&item.entry).into_bytes();
        if let Err(e) = Entry::from_bytes(&bytes) {
            return Err(at(expected, e.to_string()));
        }
        let leaf = merkle::leaf_hash(&bytes);
        if merkle::to_hex(&leaf) != item.leaf_hash {
            return Err(at(
                expected,
                "the entry does not hash to its leaf hash (the entry was altered)",
            ));
        }
        if expected >= cp.size {
            return Err(at(
                expected,
                format!("the checkpoint covers only {} entries", cp.size),
            ));
        }
        rebuild.push(&bytes).map_err(|e| VerifyError {
            index: e.index.or(Some(expected)),
            what: e.what,
        })?;
        expected += 1;
    }
    if expected != cp.size {
        return Err(whole(format!(
            "the export holds {expected} entries but the checkpoint covers {}",
            cp.size
        )));
    }
    Ok(Report {
        entries: expected,
        signed: true,
        checkpoint_size: cp.size,
        checkpoint_root: merkle::to_hex(&cp.root),
        unsigned: 0,
        extends_checkpoint: None,
    })
}
