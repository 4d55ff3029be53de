//! The ledger: one writer thread that batches appends (group commit) and signs checkpoints.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::merkle::Hash;
use crate::note::{Checkpoint, NoteError, NoteSigner, NoteVerifier};
use crate::proof::{self, Proven};
use crate::record::{Entry, RecordError};
use crate::store::{Checkpointer, LedgerStore, StoreError};

/// Tuning.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Most entries per group commit.
    pub max_batch: usize,
    /// A checkpoint is signed once this much time passed since the last one (and the log
    /// grew), and whenever the log falls idle for this long.
    pub checkpoint_interval: Duration,
    /// Retired keys of the same signer, trusted for checkpoints signed before a rotation.
    pub also_trusted: Option<NoteVerifier>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            max_batch: 16_384,
            checkpoint_interval: Duration::from_secs(1),
            also_trusted: None,
        }
    }
}

/// Why the ledger refused. Whatever the variant, the entry is not recorded: do not execute.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Storage failed.
    #[error("ledger unavailable, nothing was recorded (do not execute): {0}")]
    Store(#[from] StoreError),
    /// The entry cannot be encoded.
    #[error("entry cannot be recorded: {0}")]
    Record(#[from] RecordError),
    /// A checkpoint does not verify.
    #[error("checkpoint: {0}")]
    Note(#[from] NoteError),
    /// The stored log does not match its own signed checkpoint.
    #[error("the stored log does not match its signed checkpoint at size {size}")]
    CheckpointMismatch {
        /// Checkpoint size.
        size: u64,
    },
    /// The writer thread is gone (shut down or crashed).
    #[error("ledger unavailable, nothing was recorded (do not execute): the writer has stopped")]
    Stopped,
    /// An append failed in the writer.
    #[error("ledger unavailable, nothing was recorded (do not execute): {0}")]
    AppendFailed(String),
}

/// What went wrong, without the "ledger unavailable" preamble an error that wraps it adds again.
fn cause(e: &LedgerError) -> String {
    match e {
        LedgerError::Store(e) => e.to_string(),
        LedgerError::AppendFailed(what) => what.clone(),
        other => other.to_string(),
    }
}

type Reply = oneshot::Sender<Result<u64, LedgerError>>;

enum Cmd {
    Append(Vec<u8>, Reply),
    Checkpoint(oneshot::Sender<Result<String, LedgerError>>),
}

struct Shared {
    store: Mutex<Box<dyn LedgerStore>>,
    verifier: NoteVerifier,
    origin: String,
}

impl Shared {
    fn store(&self) -> Result<MutexGuard<'_, Box<dyn LedgerStore>>, LedgerError> {
        // INVARIANT (fail-closed): a poisoned lock means a writer died mid-append.
        self.store
            .lock()
            .map_err(|_| LedgerError::AppendFailed("ledger store lock poisoned".into()))
    }
}

type NoteReply = oneshot::Sender<Result<String, LedgerError>>;

/// A request to the checkpoint thread: sign and store a checkpoint of this tree head.
struct Sign {
    size: u64,
    root: Hash,
    reply: Option<NoteReply>,
}

/// The checkpoint thread: signs tree heads the writer hands it and stores them, off the append
/// path (a checkpoint costs a signature and several fsyncs).
fn checkpoint_loop(
    signer: &NoteSigner,
    mut sink: Box<dyn Checkpointer>,
    rx: &mpsc::Receiver<Sign>,
) {
    let mut last_size = None;
    while let Ok(first) = rx.recv() {
        // Only the newest head matters; everyone waiting gets its note.
        let mut head = (first.size, first.root);
        let mut waiters: Vec<NoteReply> = first.reply.into_iter().collect();
        while let Ok(more) = rx.try_recv() {
            if more.size >= head.0 {
                head = (more.size, more.root);
            }
            waiters.extend(more.reply);
        }
        let result = (|| {
            let cp = Checkpoint {
                origin: signer.name().to_owned(),
                size: head.0,
                root: head.1,
                time: now_unix(),
            };
            let note = cp.sign(signer)?;
            if last_size != Some(head.0) {
                sink.put(head.0, &note)?;
            }
            Ok::<_, LedgerError>(note)
        })();
        if result.is_ok() {
            last_size = Some(head.0);
        }
        for w in waiters {
            let _ = w.send(match &result {
                Ok(n) => Ok(n.clone()),
                Err(e) => Err(LedgerError::AppendFailed(format!(
                    "checkpoint: {}",
                    cause(e)
                ))),
            });
        }
    }
}

/// A pending append; resolves once the entry is durable.
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Result<u64, LedgerError>>);

impl Ticket {
    /// Blocks until the entry is durable (or refused). Not for use inside an async runtime.
    ///
    /// # Errors
    /// [`LedgerError`]: the entry is not recorded.
    pub fn wait(self) -> Result<u64, LedgerError> {
        self.0.blocking_recv().map_err(|_| LedgerError::Stopped)?
    }

    /// Awaits durability.
    ///
    /// # Errors
    /// [`LedgerError`]: the entry is not recorded.
    pub async fn recorded(self) -> Result<u64, LedgerError> {
        self.0.await.map_err(|_| LedgerError::Stopped)?
    }
}

/// The Witness ledger. Cheap to share behind an `Arc`; dropping it stops the writer after a final
/// checkpoint.
pub struct Ledger {
    shared: Arc<Shared>,
    /// Entries found at open after the latest signed checkpoint (or all, without one).
    unsigned_at_open: u64,
    tx: Option<mpsc::Sender<Cmd>>,
    writer: Option<JoinHandle<()>>,
    signer_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Ledger {
    /// Opens the ledger over `store`, checking the stored log against its latest checkpoint,
    /// and starts the writer.
    ///
    /// # Errors
    /// [`LedgerError`] if the latest checkpoint is not signed by `signer`'s key for this origin,
    /// or the stored log does not hash to it.
    pub fn open(
        mut store: Box<dyn LedgerStore>,
        signer: NoteSigner,
        config: LedgerConfig,
    ) -> Result<Self, LedgerError> {
        let verifier = match &config.also_trusted {
            Some(old) => signer.verifier().merged(old)?,
            None => signer.verifier(),
        };
        let mut signed_size = None;
        if let Some(note) = store.latest_checkpoint()? {
            let cp = Checkpoint::open(&note, &verifier, signer.name())?;
            if proof::root(&mut *store, cp.size)? != cp.root {
                return Err(LedgerError::CheckpointMismatch { size: cp.size });
            }
            signed_size = Some(cp.size);
        }
        let size = store.size()?;
        // Entries recovered after a crash that no checkpoint covers yet get one promptly.
        let dirty = signed_size != Some(size) && size > 0;
        let head = (size, proof::root(&mut *store, size)?);
        let sink = store.checkpointer()?;
        let origin = signer.name().to_owned();
        let (sign_tx, sign_rx) = mpsc::channel::<Sign>();
        let signer_thread = std::thread::Builder::new()
            .name("warden-ledger-checkpoint".into())
            .spawn(move || checkpoint_loop(&signer, sink, &sign_rx))
            .map_err(|e| {
                LedgerError::AppendFailed(format!("cannot start the ledger checkpointer: {e}"))
            })?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            verifier,
            origin,
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("warden-ledger".into())
            .spawn(move || writer_loop(&writer_shared, &rx, &sign_tx, head, dirty, &config))
            .map_err(|e| {
                LedgerError::AppendFailed(format!("cannot start the ledger writer: {e}"))
            })?;
        Ok(Ledger {
            shared,
            unsigned_at_open: size.saturating_sub(signed_size.unwrap_or(0)),
            tx: Some(tx),
            writer: Some(writer),
            signer_thread: Some(signer_thread),
        })
    }

    /// How many entries the store held at open beyond its latest signed checkpoint: what a
    /// writer that stopped before its next checkpoint left (a crash), and also what someone able
    /// to write the store could have appended. They are checkpointed (signed) promptly after
    /// open, so the caller should record that it adopted them.
    #[must_use]
    pub fn unsigned_at_open(&self) -> u64 {
        self.unsigned_at_open
    }

    /// The key that verifies this ledger's checkpoints.
    #[must_use]
    pub fn verifier(&self) -> NoteVerifier {
        self.shared.verifier.clone()
    }

    /// The log's origin (its checkpoints' first line).
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// Queues an entry; the ticket resolves once it is durable.
    ///
    /// # Errors
    /// [`LedgerError::Record`] if the entry cannot be encoded.
    pub fn submit(&self, entry: &Entry) -> Result<Ticket, LedgerError> {
        let bytes = entry.to_bytes()?;
        Ok(self.submit_bytes(bytes))
    }

    /// Queues canonical entry bytes (the caller vouches they are canonical).
    #[must_use]
    pub fn submit_bytes(&self, bytes: Vec<u8>) -> Ticket {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the writer is gone, `reply` is dropped and the ticket reports `Stopped`.
            let _ = tx.send(Cmd::Append(bytes, reply));
        }
        Ticket(rx)
    }

    /// Appends and blocks until durable. Returns the entry's index.
    ///
    /// # Errors
    /// [`LedgerError`]: not recorded; the caller must not execute.
    pub fn append(&self, entry: &Entry) -> Result<u64, LedgerError> {
        self.submit(entry)?.wait()
    }

    /// Signs and stores a checkpoint covering every append acknowledged before this call;
    /// returns the signed note. Blocks: from async code, call it in `spawn_blocking` (like
    /// [`Ticket::wait`], it panics if called on an async runtime thread).
    ///
    /// # Errors
    /// [`LedgerError`] if it cannot be stored.
    pub fn checkpoint(&self) -> Result<String, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(LedgerError::Stopped)?
            .send(Cmd::Checkpoint(reply))
            .map_err(|_| LedgerError::Stopped)?;
        rx.blocking_recv().map_err(|_| LedgerError::Stopped)?
    }

    /// Runs `f` with the store (for proofs and reads).
    ///
    /// # Errors
    /// [`LedgerError`] from `f` or if the store is unusable.
    pub fn with_store<T>(
        &self,
        f: impl FnOnce(&mut dyn LedgerStore) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut guard = self.shared.store()?;
        f(&mut **guard)
    }

    /// An inclusion proof for `index` in the tree of `size` entries.
    ///
    /// # Errors
    /// [`LedgerError`] for an index or size outside the log.
    pub fn prove(&self, index: u64, size: u64) -> Result<Proven, LedgerError> {
        self.with_store(|s| Ok(proof::inclusion(s, index, size)?))
    }

    /// The root of the first `size` entries.
    ///
    /// # Errors
    /// [`LedgerError`] for a size beyond the log.
    pub fn root(&self, size: u64) -> Result<Hash, LedgerError> {
        self.with_store(|s| Ok(proof::root(s, size)?))
    }

    /// Current size.
    ///
    /// # Errors
    /// [`LedgerError`] if the store is unusable.
    pub fn size(&self) -> Result<u64, LedgerError> {
        self.with_store(|s| Ok(s.size()?))
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Closing the channel makes the writer drain, checkpoint and exit.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // The writer's exit closed the checkpoint channel after its final request.
        if let Some(c) = self.signer_thread.take() {
            let _ = c.join();
        }
    }
}

fn writer_loop(
    shared: &Shared,
    rx: &mpsc::Receiver<Cmd>,
    sign: &mpsc::Sender<Sign>,
    mut head: (u64, Hash),
    mut dirty: bool,
    config: &LedgerConfig,
) {
    let mut last_checkpoint = Instant::now();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    let request = |head: (u64, Hash), reply: Option<NoteReply>| {
        let _ = sign.send(Sign {
            size: head.0,
            root: head.1,
            reply,
        });
    };
    loop {
        let first = match rx.recv_timeout(config.checkpoint_interval) {
            Ok(cmd) => cmd,
            Err(RecvTimeoutError::Timeout) => {
                if dirty {
                    request(head, None);
                    dirty = false;
                    last_checkpoint = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut pending = Some(first);
        let mut checkpoint_waiters = Vec::new();
        while let Some(cmd) = pending.take() {
            match cmd {
                Cmd::Append(bytes, reply) => {
                    batch.push(bytes);
                    replies.push(reply);
                }
                Cmd::Checkpoint(reply) => checkpoint_waiters.push(reply),
            }
            if batch.len() < config.max_batch {
                pending = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let result = shared.store().and_then(|mut s| Ok(s.append(&batch)?));
            match result {
                Ok(done) => {
                    dirty = true;
                    head = (done.size, done.root);
                    for (i, reply) in replies.drain(..).enumerate() {
                        let _ = reply.send(Ok(done.first + i as u64));
                    }
                }
                Err(e) => {
                    let msg = cause(&e);
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(LedgerError::AppendFailed(msg.clone())));
                    }
                }
            }
            batch.clear();
        }
        for w in checkpoint_waiters {
            request(head, Some(w));
            dirty = false;
            last_checkpoint = Instant::now();
        }
        if dirty && last_checkpoint.elapsed() >= config.checkpoint_interval {
            request(head, None);
            dirty = false;
            last_checkpoint = Instant::now();
        }
    }
    if dirty {
        request(head, None);
    }
}
