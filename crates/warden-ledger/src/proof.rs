//! Roots and proofs computed from any store, in O(log n) node reads.

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash, ProofPlan};
use crate::store::{read_entry, LedgerStore, StoreError};

fn run_plan(store: &mut dyn LedgerStore, plan: &ProofPlan) -> Result<Vec<Hash>, StoreError> {
    let fetched = store.nodes(&plan.nodes)?;
    plan.assemble(&fetched)
        .ok_or_else(|| StoreError::Corrupt("the store returned the wrong number of nodes".into()))
}

fn check_size(store: &mut dyn LedgerStore, size: u64) -> Result<(), StoreError> {
    let have = store.size()?;
    if size > have {
        return Err(StoreError::OutOfRange {
            index: size,
            size: have,
        });
    }
    Ok(())
}

/// `MTH` of the first `size` entries.
///
/// # Errors
/// [`StoreError::OutOfRange`] if the log is shorter.
pub fn root(store: &mut dyn LedgerStore, size: u64) -> Result<Hash, StoreError> {
    check_size(store, size)?;
    Ok(run_plan(store, &ProofPlan::root(size))?
        .first()
        .copied()
        .unwrap_or(merkle::EMPTY_ROOT))
}

/// An inclusion proof, with everything needed to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proven {
    /// The entry's index.
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// `SHA-256(0x00 || entry)`, hex.
    pub leaf_hash: String,
    /// The audit path, leaf upwards, hex.
    pub proof: Vec<String>,
    /// The root at `size`, hex.
    pub root: String,
}

/// A consistency proof between two sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistent {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// Root at `old_size`, hex.
    pub old_root: String,
    /// Root at `new_size`, hex.
    pub new_root: String,
    /// The proof, hex.
    pub proof: Vec<String>,
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(merkle::to_hex).collect()
}

/// Proves that entry `index` is in the tree of `size` entries.
///
/// # Errors
/// [`StoreError::OutOfRange`] if `index >= size` or the log is shorter than `size`.
pub fn inclusion(store: &mut dyn LedgerStore, index: u64, size: u64) -> Result<Proven, StoreError> {
    check_size(store, size)?;
    if index >= size {
        return Err(StoreError::OutOfRange { index, size });
    }
    let plan = ProofPlan::inclusion(index, size);
    let mut ids = plan.nodes.clone();
    ids.push(merkle::NodeId { level: 0, index });
    let root_plan = ProofPlan::root(size);
    ids.extend_from_slice(&root_plan.nodes);
    let fetched = store.nodes(&ids)?;
    let bad = || StoreError::Corrupt("the store returned the wrong number of nodes".into());
    let (path_nodes, rest) = fetched.split_at_checked(plan.nodes.len()).ok_or_else(bad)?;
    let (leaf, root_nodes) = rest.split_first().ok_or_else(bad)?;
    let path = plan.assemble(path_nodes).ok_or_else(bad)?;
    let root = root_plan
        .assemble(root_nodes)
        .and_then(|r| r.first().copied())
        .ok_or_else(bad)?;
    Ok(Proven {
        index,
        size,
        leaf_hash: merkle::to_hex(leaf),
        proof: hexes(&path),
        root: merkle::to_hex(&root),
    })
}

/// Proves that the tree of `old` entries is a prefix of the tree of `new` entries.
///
/// # Errors
/// [`StoreError::OutOfRange`] if `old > new` or the log is shorter than `new`.
pub fn consistency(
    store: &mut dyn LedgerStore,
    old: u64,
    new: u64,
) -> Result<Consistent, StoreError> {
    check_size(store, new)?;
    if old > new {
        return Err(StoreError::OutOfRange {
            index: old,
            size: new,
        });
    }
    let path = run_plan(store, &ProofPlan::consistency(old, new))?;
    Ok(Consistent {
        old_size: old,
        new_size: new,
        old_root: merkle::to_hex(&root(store, old)?),
        new_root: merkle::to_hex(&root(store, new)?),
        proof: hexes(&path),
    })
}

/// Why a proof document does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ProofDocError {
    /// A hash is not 64 hex digits.
    #[error("{0} is not a 64-digit hex hash")]
    BadHex(String),
    /// The proof is wrong.
    #[error("{0}")]
    Proof(#[from] merkle::ProofError),
}

fn parse_hashes(v: &[String]) -> Result<Vec<Hash>, ProofDocError> {
    v.iter()
        .map(|s| merkle::from_hex(s).ok_or_else(|| ProofDocError::BadHex(s.clone())))
        .collect()
}

fn parse_hash(s: &str) -> Result<Hash, ProofDocError> {
    merkle::from_hex(s).ok_or_else(|| ProofDocError::BadHex(s.to_owned()))
}

impl Proven {
    /// Checks the proof against its own root (compare that root with a signed checkpoint).
    ///
    /// # Errors
    /// [`ProofDocError`] naming what does not match.
    pub fn verify(&self) -> Result<(), ProofDocError> {
        merkle::verify_inclusion(
            self.index,
            self.size,
            &parse_hash(&self.leaf_hash)?,
            &parse_hashes(&self.proof)?,
            &parse_hash(&self.root)?,
        )?;
        Ok(())
    }
}

impl Consistent {
    /// Checks the proof against its own roots.
    ///
    /// # Errors
    /// [`ProofDocError`] naming what does not match.
    pub fn verify(&self) -> Result<(), ProofDocError> {
        merkle::verify_consistency(
            self.old_size,
            self.new_size,
            &parse_hash(&self.old_root)?,
            &parse_hash(&self.new_root)?,
            &parse_hashes(&self.proof)?,
        )?;
        Ok(())
    }
}

/// Reads entry `index` and checks that it hashes to the stored leaf.
///
/// # Errors
/// [`StoreError`] if it cannot be read or does not match.
pub fn entry_checked(store: &mut dyn LedgerStore, index: u64) -> Result<Vec<u8>, StoreError> {
    let bytes = read_entry(store, index)?;
    let stored = store.nodes(&[merkle::NodeId { level: 0, index }])?;
    if stored.first() != Some(&merkle::leaf_hash(&bytes)) {
        return Err(StoreError::Corrupt(format!(
            "entry {index} does not hash to its stored leaf hash"
        )));
    }
    Ok(bytes)
}
