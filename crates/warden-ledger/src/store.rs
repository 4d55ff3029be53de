//! The storage interface both backends implement, and what it can fail with.

use std::path::{Path, PathBuf};

use crate::merkle::{Hash, NodeId};

/// What a durable append produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Index of the batch's first entry.
    pub first: u64,
    /// Tree size after the batch.
    pub size: u64,
    /// Root after the batch.
    pub root: Hash,
}

/// Why storage failed. Every variant means "not recorded": callers must not execute.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored data is damaged or was tampered with.
    #[error("ledger damaged: {0}")]
    Corrupt(String),
    /// An index outside the log.
    #[error("index {index} is outside the log (size {size})")]
    OutOfRange {
        /// Requested index.
        index: u64,
        /// Current size.
        size: u64,
    },
    /// The database failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// An earlier write failed; the store refuses everything until it is reopened.
    // INVARIANT (fail-closed): after a failed write nothing is acknowledged, because the store
    // can no longer tell what is durable.
    #[error("the ledger stopped after a failed write ({0}); reopen it to recover")]
    Failed(String),
    /// Another process holds the ledger.
    #[error("{0}")]
    Locked(String),
    /// The entry cannot be stored.
    #[error("entry rejected: {0}")]
    Rejected(String),
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// What [`LedgerStore::scan`] calls for each entry: `(index, bytes)`.
pub type Visit<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// A place to keep the log: an ordered sequence of entries plus the hashes of every perfect
/// subtree, and the latest signed checkpoint.
///
/// Implementations are driven by one thread at a time (the ledger serializes access).
pub trait LedgerStore: Send {
    /// Appends `entries` (canonical bytes) in order. Returns only once they are durable.
    ///
    /// # Errors
    /// [`StoreError`]: nothing in the batch may be treated as recorded.
    fn append(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError>;

    /// Appends `entries` in order and returns once they are written: readers see them and a
    /// crash of this process keeps them, but a power loss may cut them (with everything written
    /// after them) until [`LedgerStore::sync`] or the next [`LedgerStore::append`] returns,
    /// each of which makes every earlier write durable. A store whose writes are always
    /// durable (the default) makes this an `append`.
    ///
    /// # Errors
    /// [`StoreError`]: nothing in the batch may be treated as recorded.
    fn append_written(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        self.append(entries)
    }

    /// Makes every entry written so far durable.
    ///
    /// # Errors
    /// [`StoreError`]: the written entries may be lost; the store refuses everything after.
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes out what a checkpoint of the entries appended so far needs and the store has
    /// kept in memory until now (the embedded store's derived files), before the checkpoint is
    /// handed to the [`Checkpointer`], which makes it durable. A store that keeps nothing back
    /// (the default) has nothing to do.
    ///
    /// # Errors
    /// [`StoreError`]: no checkpoint may be written; the store refuses everything after.
    fn prepare_checkpoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The number of entries.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be read.
    fn size(&mut self) -> Result<u64, StoreError>;

    /// Calls `visit(index, bytes)` for every entry in `[from, to)`, in order, checking each
    /// entry's checksum; stops at the first error `visit` returns.
    ///
    /// # Errors
    /// [`StoreError`] from storage or from `visit`.
    fn scan(&mut self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), StoreError>;

    /// The stored hashes of these perfect subtrees, in order.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`] for a node the log does not have yet.
    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError>;

    /// A handle that records signed checkpoints from another thread, so that the fsyncs a
    /// checkpoint needs never hold up appends.
    ///
    /// # Errors
    /// [`StoreError`] if the store is read-only or cannot provide one.
    fn checkpointer(&mut self) -> Result<Box<dyn Checkpointer>, StoreError>;

    /// The signed checkpoint of the largest size recorded so far.
    ///
    /// # Errors
    /// [`StoreError`] if it cannot be read.
    fn latest_checkpoint(&mut self) -> Result<Option<String>, StoreError>;

    /// One line saying where the log lives, for messages.
    fn describe(&self) -> String;

    /// Whether a caller may write through this store on its own thread, whatever that thread
    /// is (an async runtime's worker included). A store whose client drives a runtime of its
    /// own (PostgreSQL's) says no: its writes are then led from a thread of the ledger's.
    fn writes_on_any_thread(&self) -> bool {
        true
    }
}

impl<S: LedgerStore + ?Sized> LedgerStore for Box<S> {
    fn append(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        (**self).append(entries)
    }
    fn append_written(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        (**self).append_written(entries)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        (**self).sync()
    }
    fn prepare_checkpoint(&mut self) -> Result<(), StoreError> {
        (**self).prepare_checkpoint()
    }
    fn size(&mut self) -> Result<u64, StoreError> {
        (**self).size()
    }
    fn scan(&mut self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        (**self).scan(from, to, visit)
    }
    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        (**self).nodes(ids)
    }
    fn checkpointer(&mut self) -> Result<Box<dyn Checkpointer>, StoreError> {
        (**self).checkpointer()
    }
    fn latest_checkpoint(&mut self) -> Result<Option<String>, StoreError> {
        (**self).latest_checkpoint()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn writes_on_any_thread(&self) -> bool {
        (**self).writes_on_any_thread()
    }
}

/// Records signed checkpoints (see [`LedgerStore::checkpointer`]).
pub trait Checkpointer: Send {
    /// Makes `note`, a signed checkpoint for the first `size` entries, the latest checkpoint.
    /// The entries must already be durable.
    ///
    /// # Errors
    /// [`StoreError`] if it cannot be made durable.
    fn put(&mut self, size: u64, note: &str) -> Result<(), StoreError>;
}

/// Reads one entry.
///
/// # Errors
/// [`StoreError`] from the store.
pub fn read_entry(store: &mut dyn LedgerStore, index: u64) -> Result<Vec<u8>, StoreError> {
    let mut out = None;
    store.scan(index, index.saturating_add(1), &mut |_, bytes| {
        out = Some(bytes.to_vec());
        Ok(())
    })?;
    match out {
        Some(b) => Ok(b),
        None => Err(StoreError::OutOfRange {
            index,
            size: store.size()?,
        }),
    }
}
