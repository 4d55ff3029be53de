//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.
//!
//! Leaves are hashed as `SHA-256(0x00 || entry)`, interior nodes as `SHA-256(0x01 || left ||
//! right)`, and a tree of `n` leaves splits at the largest power of two smaller than `n`, exactly
//! as RFC 6962 §2.1 defines `MTH`. Every subtree that the RFC's recursion touches is a sequence of
//! *perfect* subtrees (aligned, power-of-two sized); a store keeps those perfect subtrees' hashes
//! ([`NodeId`]), so the hash of any range, and therefore any proof, needs O(log n) stored nodes.
//!
//! Proof generation is split in two steps so that a database-backed store can fetch every node a
//! proof needs in one round trip: [`ProofPlan`] lists the nodes, the store fetches them, and
//! [`ProofPlan::assemble`] folds them into the proof.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 || entry)`.
#[must_use]
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A perfect subtree: the `2^level` leaves starting at `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = a leaf).
    pub level: u32,
    /// Position among the nodes of that level.
    pub index: u64,
}

impl NodeId {
    /// Where this node sits in a store that appends every completed node in post-order (each leaf
    /// followed by the parents it completes). The first `n` leaves occupy [`nodes_for_size`]`(n)`
    /// slots of that order.
    #[must_use]
    pub fn post_order_position(self) -> u64 {
        // The node is completed by leaf `m - 1`, `m = (index + 1) << level`; that leaf lands at
        // slot `nodes_for_size(m - 1)` and its parents follow it, one level at a time.
        // Saturating: ids outside any storable tree map past every stored node (callers bound
        // them by the tree size first; this only keeps hostile values from panicking).
        let m = self
            .index
            .checked_add(1)
            .filter(|i| self.level < 64 && *i <= (u64::MAX >> self.level))
            .map_or(u64::MAX, |i| i << self.level);
        nodes_for_size(m.saturating_sub(1)).saturating_add(u64::from(self.level))
    }
}

/// How many perfect-subtree nodes a tree of `size` leaves has: `2·size − popcount(size)`.
#[must_use]
pub fn nodes_for_size(size: u64) -> u64 {
    size.saturating_mul(2) - u64::from(size.count_ones())
}

/// The largest power of two strictly smaller than `n` (`n ≥ 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Appends to `out` the perfect subtrees that make up the leaves `[start, start + n)`, largest
/// first. `start` must be a multiple of the largest power of two not exceeding `n`, which holds
/// for every range the RFC 6962 recursion produces.
fn decompose(start: u64, n: u64, out: &mut Vec<NodeId>) {
    let mut start = start;
    let mut n = n;
    while n > 0 {
        let level = 63 - n.leading_zeros();
        let width = 1u64 << level;
        out.push(NodeId {
            level,
            index: start >> level,
        });
        start += width;
        n -= width;
    }
}

/// Folds a range's perfect subtrees (largest first) into the range's `MTH`.
fn fold_range(nodes: &[Hash]) -> Option<Hash> {
    let mut iter = nodes.iter().rev();
    let mut acc = *iter.next()?;
    for left in iter {
        acc = node_hash(left, &acc);
    }
    Some(acc)
}

/// The nodes a root, an inclusion proof or a consistency proof needs, and how to fold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofPlan {
    /// Every node to fetch, in order.
    pub nodes: Vec<NodeId>,
    /// How many consecutive entries of `nodes` fold into each proof element.
    groups: Vec<usize>,
}

impl ProofPlan {
    fn new() -> Self {
        ProofPlan {
            nodes: Vec::new(),
            groups: Vec::new(),
        }
    }

    fn push_range(&mut self, start: u64, n: u64) {
        let before = self.nodes.len();
        decompose(start, n, &mut self.nodes);
        self.groups.push(self.nodes.len() - before);
    }

    /// The plan for `MTH` of the first `size` leaves (one element; empty for size 0).
    #[must_use]
    pub fn root(size: u64) -> Self {
        let mut plan = ProofPlan::new();
        if size > 0 {
            plan.push_range(0, size);
        }
        plan
    }

    /// The plan for RFC 9162 `PATH(index, D[size])`, elements ordered from the leaf upwards.
    /// Empty when `index >= size` (callers check bounds first and report them).
    #[must_use]
    pub fn inclusion(index: u64, size: u64) -> Self {
        let mut plan = ProofPlan::new();
        if index >= size {
            return plan;
        }
        // Walk down from the root, remembering the sibling range at each split; the proof lists
        // them bottom-up.
        let mut siblings = Vec::new();
        let (mut start, mut n, mut m) = (0u64, size, index);
        while n > 1 {
            let k = split_point(n);
            if m < k {
                siblings.push((start + k, n - k));
                n = k;
            } else {
                siblings.push((start, k));
                start += k;
                m -= k;
                n -= k;
            }
        }
        for (s, len) in siblings.into_iter().rev() {
            plan.push_range(s, len);
        }
        plan
    }

    /// The plan for RFC 9162 `PROOF(old, D[new])`. Empty when `old == 0`, `old >= new`
    /// (nothing to prove) or out of order (callers check bounds first).
    #[must_use]
    pub fn consistency(old: u64, new: u64) -> Self {
        let mut plan = ProofPlan::new();
        if old == 0 || old >= new {
            return plan;
        }
        // SUBPROOF(m, D[start .. start+n], b), iteratively: elements found on the way down are
        // emitted in reverse at the end (the RFC appends each after the recursive part).
        let mut tail = Vec::new();
        let (mut start, mut n, mut m, mut b) = (0u64, new, old, true);
        loop {
            if m == n {
                if !b {
                    tail.push((start, n));
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                tail.push((start + k, n - k));
                n = k;
            } else {
                tail.push((start, k));
                start += k;
                m -= k;
                n -= k;
                b = false;
            }
        }
        for (s, len) in tail.into_iter().rev() {
            plan.push_range(s, len);
        }
        plan
    }

    /// Folds fetched node hashes (one per entry of `nodes`, same order) into the proof elements.
    /// `None` if the count does not match.
    #[must_use]
    pub fn assemble(&self, fetched: &[Hash]) -> Option<Vec<Hash>> {
        if fetched.len() != self.nodes.len() {
            return None;
        }
        let mut out = Vec::with_capacity(self.groups.len());
        let mut rest = fetched;
        for &g in &self.groups {
            let (head, tail) = rest.split_at_checked(g)?;
            out.push(fold_range(head)?);
            rest = tail;
        }
        Some(out)
    }
}

/// The right edge of a growing tree: the perfect subtrees that make up its leaves, largest
/// first. Appending a leaf returns the nodes it completes, in post-order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, levels strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The empty tree.
    #[must_use]
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its perfect subtrees (as listed by
    /// [`Frontier::nodes_needed`]). `None` if the count does not match.
    #[must_use]
    pub fn from_nodes(size: u64, hashes: &[Hash]) -> Option<Self> {
        let ids = Frontier::nodes_needed(size);
        if ids.len() != hashes.len() {
            return None;
        }
        Some(Frontier {
            size,
            stack: ids
                .iter()
                .zip(hashes)
                .map(|(id, h)| (id.level, *h))
                .collect(),
        })
    }

    /// The perfect subtrees of a tree of `size` leaves, largest first.
    #[must_use]
    pub fn nodes_needed(size: u64) -> Vec<NodeId> {
        let mut out = Vec::new();
        decompose(0, size, &mut out);
        out
    }

    /// Leaves so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier's hashes, largest subtree first (what [`Frontier::from_nodes`] takes).
    #[must_use]
    pub fn hashes(&self) -> Vec<Hash> {
        self.stack.iter().map(|(_, h)| *h).collect()
    }

    /// Appends a leaf hash; pushes onto `completed` the leaf and every node it completes, in
    /// post-order (leaf first, then parents upwards).
    pub fn push(&mut self, leaf: Hash, completed: &mut Vec<Hash>) {
        completed.push(leaf);
        let mut level = 0u32;
        let mut hash = leaf;
        while let Some(&(top_level, top_hash)) = self.stack.last() {
            if top_level != level {
                break;
            }
            self.stack.pop();
            hash = node_hash(&top_hash, &hash);
            level += 1;
            completed.push(hash);
        }
        self.stack.push((level, hash));
        self.size += 1;
    }

    /// `MTH` of the leaves so far.
    #[must_use]
    pub fn root(&self) -> Hash {
        let hashes: Vec<Hash> = self.hashes();
        fold_range(&hashes).unwrap_or(EMPTY_ROOT)
    }
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index is not inside the tree.
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The sizes are out of order.
    #[error("old size {old} is larger than new size {new}")]
    SizesOutOfOrder {
        /// The first size.
        old: u64,
        /// The second size.
        new: u64,
    },
    /// The proof has the wrong number of elements for these sizes.
    #[error("the proof has the wrong number of hashes ({len}) for this tree shape")]
    WrongLength {
        /// How many hashes it had.
        len: usize,
    },
    /// The recomputed root differs.
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
}

/// RFC 9162 §2.1.3.2: verifies that `leaf` is leaf `index` of the tree of `size` leaves whose
/// root is `root`.
///
/// # Errors
/// [`ProofError`] naming what does not match.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verifies that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root`.
///
/// # Errors
/// [`ProofError`] naming what does not match.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty tree; there is nothing to prove.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength { len: proof.len() })
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength { len: proof.len() });
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// `MTH` computed directly from the RFC's recursive definition, over leaf hashes. Quadratic-free
/// but O(n); used by verifiers that hold every leaf and by tests as the independent reference.
#[must_use]
pub fn root_of_leaves(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => EMPTY_ROOT,
        [one] => *one,
        _ => {
            let k = usize::try_from(split_point(leaves.len() as u64)).unwrap_or(usize::MAX);
            let (left, right) = leaves.split_at(k.min(leaves.len()));
            node_hash(&root_of_leaves(left), &root_of_leaves(right))
        }
    }
}

/// Lowercase hex of a hash.
#[must_use]
pub fn to_hex(hash: &Hash) -> String {
    let mut s = String::with_capacity(64);
    warden_core::canonical::push_hex(&mut s, hash);
    s
}

/// Parses 64 hex digits.
#[must_use]
pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;

    #[test]
    fn post_order_positions_are_dense() {
        // Every node of a 64-leaf tree has a distinct slot below nodes_for_size(64).
        let mut seen = std::collections::BTreeSet::new();
        for level in 0..=6u32 {
            for index in 0..(64u64 >> level) {
                let p = NodeId { level, index }.post_order_position();
                assert!(p < nodes_for_size(64));
                assert!(seen.insert(p));
            }
        }
        assert_eq!(seen.len() as u64, nodes_for_size(64));
    }

    #[test]
    fn frontier_emits_nodes_in_post_order() {
        let mut f = Frontier::new();
        let mut all = Vec::new();
        for i in 0..37u8 {
            f.push(leaf_hash(&[i]), &mut all);
            assert_eq!(all.len() as u64, nodes_for_size(f.size()));
        }
        // Leaf 5 sits where post_order_position says.
        let p = NodeId { level: 0, index: 5 }.post_order_position();
        assert_eq!(all[p as usize], leaf_hash(&[5]));
    }
}
