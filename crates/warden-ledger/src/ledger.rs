//! The ledger: one writer thread that batches appends (group commit) and signs checkpoints.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// When receipts are durable.
    pub receipts: Receipts,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            max_batch: 16_384,
            checkpoint_interval: Duration::from_secs(1),
            also_trusted: None,
            receipts: Receipts::default(),
        }
    }
}

/// How long a grouped receipt waits, at most, for its sync.
pub const DEFAULT_RECEIPT_WINDOW: Duration = Duration::from_millis(5);

/// When a receipt becomes durable, relative to its acknowledgement. Every other entry (above all
/// a decision, which must be durable before anything runs) is durable before it is
/// acknowledged, whatever this says. See `docs/ledger.md`, "Receipts: grouped or strict".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipts {
    /// Durable before it is acknowledged: the caller answers only after the receipt's sync.
    Strict,
    /// Acknowledged once written (readers see it, and a crash of the process keeps it), durable
    /// within `window` or with the next synced entry, whichever comes first. A power loss inside
    /// the window can cut it, with everything written after it; the next start then closes its
    /// call with an `interrupted` receipt (outcome unknown).
    Grouped {
        /// The longest a written receipt waits for its sync.
        window: Duration,
    },
}

impl Default for Receipts {
    fn default() -> Self {
        Receipts::Grouped {
            window: DEFAULT_RECEIPT_WINDOW,
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

/// How soon an append must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Before it is acknowledged.
    Now,
    /// Within the grouped-receipt window.
    Grouped,
}

enum Cmd {
    Append(Vec<u8>, Sync, Reply),
    Checkpoint(oneshot::Sender<Result<String, LedgerError>>),
}

struct Shared {
    store: Mutex<Box<dyn LedgerStore>>,
    verifier: NoteVerifier,
    origin: String,
    /// How many entries are durable (the writer's count; for tests and metrics).
    durable: AtomicU64,
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
    receipts: Receipts,
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
            durable: AtomicU64::new(size),
        });
        let (tx, rx) = mpsc::channel();
        let receipts = config.receipts;
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("warden-ledger".into())
            .spawn(move || {
                let mut w = Writer {
                    shared: &writer_shared,
                    sign: &sign_tx,
                    config: &config,
                    head,
                    durable: head,
                    signed: if dirty { None } else { Some(size) },
                    last_checkpoint: Instant::now(),
                    unsynced_since: None,
                    last_append: Instant::now(),
                };
                w.run(&rx);
            })
            .map_err(|e| {
                LedgerError::AppendFailed(format!("cannot start the ledger writer: {e}"))
            })?;
        Ok(Ledger {
            shared,
            unsigned_at_open: size.saturating_sub(signed_size.unwrap_or(0)),
            tx: Some(tx),
            receipts,
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

    /// Queues an entry; the ticket resolves once it is durable — or, for a receipt under
    /// [`Receipts::Grouped`], once it is written (durable within the window).
    ///
    /// # Errors
    /// [`LedgerError::Record`] if the entry cannot be encoded.
    pub fn submit(&self, entry: &Entry) -> Result<Ticket, LedgerError> {
        let bytes = entry.to_bytes()?;
        // INVARIANT (fail-closed, INV-003): only a receipt may be acknowledged before its sync;
        // a decision is durable before anything it allows runs.
        let sync = match (entry, self.receipts) {
            (Entry::Receipt(_), Receipts::Grouped { .. }) => Sync::Grouped,
            _ => Sync::Now,
        };
        Ok(self.queue(bytes, sync))
    }

    /// Queues canonical entry bytes (the caller vouches they are canonical); the ticket
    /// resolves once they are durable.
    #[must_use]
    pub fn submit_bytes(&self, bytes: Vec<u8>) -> Ticket {
        self.queue(bytes, Sync::Now)
    }

    fn queue(&self, bytes: Vec<u8>, sync: Sync) -> Ticket {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the writer is gone, `reply` is dropped and the ticket reports `Stopped`.
            let _ = tx.send(Cmd::Append(bytes, sync, reply));
        }
        Ticket(rx)
    }

    /// How many entries are durable: the size, less grouped receipts still waiting for their
    /// sync.
    #[must_use]
    pub fn durable_size(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// When this ledger's receipts are durable.
    #[must_use]
    pub fn receipts(&self) -> Receipts {
        self.receipts
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

/// The writer thread: batches appends (one sync per batch), keeps grouped receipts' syncs
/// within their window, and hands durable tree heads to the checkpoint thread.
struct Writer<'a> {
    shared: &'a Shared,
    sign: &'a mpsc::Sender<Sign>,
    config: &'a LedgerConfig,
    /// The head after the last write.
    head: (u64, Hash),
    /// The head after the last sync: the only one a checkpoint may cover.
    durable: (u64, Hash),
    /// The size of the last head handed to the checkpoint thread.
    signed: Option<u64>,
    last_checkpoint: Instant,
    /// When the oldest write not yet synced was acknowledged.
    unsynced_since: Option<Instant>,
    /// When the last batch was written.
    last_append: Instant,
}

impl Writer<'_> {
    fn window(&self) -> Duration {
        match self.config.receipts {
            Receipts::Grouped { window } => window,
            Receipts::Strict => Duration::ZERO,
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Cmd>) {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        loop {
            let interval = self.config.checkpoint_interval;
            let timeout = match self.unsynced_since {
                Some(t) => self.window().saturating_sub(t.elapsed()).min(interval),
                None => interval,
            };
            let first = match rx.recv_timeout(timeout) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => {
                    if self
                        .unsynced_since
                        .is_some_and(|t| t.elapsed() >= self.window())
                    {
                        self.sync();
                    }
                    if self.checkpoint_due() && self.last_append.elapsed() >= interval {
                        // Idle: sign what is durable.
                        self.request(None);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut pending = Some(first);
            let mut checkpoint_waiters = Vec::new();
            let mut sync = Sync::Grouped;
            while let Some(cmd) = pending.take() {
                match cmd {
                    Cmd::Append(bytes, s, reply) => {
                        batch.push(bytes);
                        replies.push(reply);
                        if s == Sync::Now {
                            sync = Sync::Now;
                        }
                    }
                    Cmd::Checkpoint(reply) => checkpoint_waiters.push(reply),
                }
                if batch.len() < self.config.max_batch {
                    pending = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.append(&batch, sync, &mut replies);
                batch.clear();
            }
            if !checkpoint_waiters.is_empty() {
                // A checkpoint covers every append acknowledged before it was asked for.
                self.sync();
                for w in checkpoint_waiters {
                    self.request(Some(w));
                }
            }
            if self
                .unsynced_since
                .is_some_and(|t| t.elapsed() >= self.window())
            {
                self.sync();
            }
            if self.checkpoint_due()
                && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                self.request(None);
            }
        }
        self.sync();
        if self.checkpoint_due() {
            self.request(None);
        }
    }

    /// Writes one batch (syncing it if any entry needs that) and answers its callers.
    fn append(&mut self, batch: &[Vec<u8>], sync: Sync, replies: &mut Vec<Reply>) {
        let result = self.shared.store().and_then(|mut s| {
            Ok(match sync {
                Sync::Now => s.append(batch)?,
                Sync::Grouped => s.append_written(batch)?,
            })
        });
        match result {
            Ok(done) => {
                self.head = (done.size, done.root);
                self.last_append = Instant::now();
                match sync {
                    // A sync covers every earlier write too.
                    Sync::Now => self.synced(),
                    Sync::Grouped => {
                        self.unsynced_since.get_or_insert_with(Instant::now);
                    }
                }
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
    }

    /// Makes the written entries durable. A failed sync stops the store (every later append
    /// is refused), so the gateway fails closed; the receipts it may have lost are closed as
    /// `interrupted` at the next start.
    fn sync(&mut self) {
        if self.unsynced_since.is_none() {
            return;
        }
        let done = self.shared.store().and_then(|mut s| Ok(s.sync()?));
        self.unsynced_since = None;
        if done.is_ok() {
            self.synced();
        }
    }

    fn synced(&mut self) {
        self.durable = self.head;
        self.unsynced_since = None;
        self.shared.durable.store(self.durable.0, Ordering::Release);
    }

    fn checkpoint_due(&self) -> bool {
        self.signed != Some(self.durable.0)
    }

    /// Hands the durable head to the checkpoint thread.
    fn request(&mut self, reply: Option<NoteReply>) {
        let _ = self.sign.send(Sign {
            size: self.durable.0,
            root: self.durable.1,
            reply,
        });
        self.signed = Some(self.durable.0);
        self.last_checkpoint = Instant::now();
    }
}
