//! The ledger: appends batched by whichever caller finds no write in progress (group commit on
//! the caller's thread, no hand-off to a writer thread), a ticker thread for the grouped
//! receipts' window and idle checkpoints, and a thread that signs checkpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
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

/// How many receipt windows after the last append the ticker keeps waking once per window
/// ([`Writer::next_tick`]).
const PACED_WINDOWS: u32 = 4;

/// How long a grouped receipt waits, at most, for its sync.
pub const DEFAULT_RECEIPT_WINDOW: Duration = Duration::from_millis(5);

/// The longest a caller awaits its entry's durability ([`Ticket::recorded`]; the governed path
/// bounds a decision's record by it too): a store that stopped answering (a database that
/// froze) holds no call longer. Past it the entry counts as not recorded, though the store may
/// still write it once it answers.
pub const RECORD_WAIT: Duration = Duration::from_secs(10);

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
    /// The store did not answer in time: the entry is not known to be recorded (it may be
    /// once the store answers; nothing may act on it now).
    #[error(
        "ledger unavailable: the store did not answer within {0:?}, the entry is not known to be \
         recorded (do not execute)"
    )]
    TimedOut(std::time::Duration),
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

/// Appends and checkpoint requests waiting for the current leader.
#[derive(Default)]
struct Queue {
    entries: Vec<(Vec<u8>, Sync, Reply)>,
    checkpoints: Vec<NoteReply>,
    /// A caller is writing; it takes everything queued before it stops leading.
    leading: bool,
    /// The ledger is being dropped: nothing more is taken.
    stopped: bool,
}

struct Shared {
    store: Mutex<Box<dyn LedgerStore>>,
    verifier: NoteVerifier,
    origin: String,
    /// How many entries are durable (the writer's count; for tests and metrics).
    durable: AtomicU64,
    queue: Mutex<Queue>,
    writer: Mutex<Writer>,
    /// Wakes the ticker (waits on `writer`).
    tick: Condvar,
    /// For a store that cannot be written from any thread: the thread that leads instead of
    /// the caller.
    delegate: Option<Delegate>,
}

/// What [`Shared::enqueue_deferred`] did.
enum Queued<'a> {
    /// The ledger is stopping: nothing was added.
    Stopped,
    /// Added; someone writes it (this caller, if the duty holds the ledger).
    Led(LeadDuty<'a>),
}

/// A caller's duty to write the queue: carried out when dropped, if not before.
// INVARIANT (never hang): whoever set the queue's `leading` flag writes the queue, so a caller
// queued behind it is always answered: the duty is carried out on every path, a cancelled
// future's included (dropping it writes); one dropped while its thread unwinds from a panic
// answers everyone queued as not recorded instead.
struct LeadDuty<'a>(Option<&'a Shared>);

impl LeadDuty<'_> {
    /// Whether this caller is the one to write.
    fn pending(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for LeadDuty<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            if std::thread::panicking() {
                // Dropped as its thread unwinds (a runtime dropped mid-panic): writing now could
                // panic again and abort. Whoever is still queued is answered as not recorded,
                // as when a leader panics.
                drop(Leading(shared));
                return;
            }
            shared.lead();
        }
    }
}

/// Whether the calling task runs on a tokio runtime with a single thread.
fn on_single_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// If its leader unwinds from a panic: clears the queue's `leading` flag, and answers every
/// caller still queued as not recorded (their replies dropped: `LedgerError::Stopped`), since
/// nobody may be left to write what they queued.
struct Leading<'a>(&'a Shared);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.queue();
            q.leading = false;
            q.entries.clear();
            q.checkpoints.clear();
        }
    }
}

/// Asks the ledger's leading thread to write what is queued.
#[derive(Default)]
struct Delegate {
    /// (asked to lead, asked to stop).
    asked: Mutex<(bool, bool)>,
    wake: Condvar,
}

impl Delegate {
    fn ask(&self, stop: bool) {
        let mut a = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        if stop {
            a.1 = true;
        } else {
            a.0 = true;
        }
        self.wake.notify_one();
    }
}

/// The leading thread of a store that cannot be written from any thread: leads whenever a
/// caller queued with nobody leading; ends once asked to, after what it took.
fn delegate_loop(shared: &Shared) {
    let Some(d) = &shared.delegate else { return };
    loop {
        let mut a = d.asked.lock().unwrap_or_else(PoisonError::into_inner);
        while !a.0 && !a.1 {
            a = d.wake.wait(a).unwrap_or_else(PoisonError::into_inner);
        }
        if a.0 {
            a.0 = false;
            drop(a);
            // INVARIANT (fail-closed, never hang): a writer that panics mid-batch fails that
            // batch (its tickets resolve as stopped) and, its store's lock poisoned, every later
            // one; the thread keeps leading, so no caller waits for a leader that is gone.
            while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.lead())).is_err()
            {
            }
            continue;
        }
        return;
    }
}

impl Shared {
    fn store(&self) -> Result<MutexGuard<'_, Box<dyn LedgerStore>>, LedgerError> {
        // INVARIANT (fail-closed): a poisoned lock means a writer died mid-append.
        self.store
            .lock()
            .map_err(|_| LedgerError::AppendFailed("ledger store lock poisoned".into()))
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The queue's data stays consistent whatever panicked while it was held.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A poisoned writer still refuses correctly: its store reports its own failures.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds to the queue with `add` and, if no caller is writing, writes the queue on this
    /// thread (so a call from async code may block its worker for a write and a sync) — or,
    /// for a store that cannot be written from any thread, has the ledger's leading thread
    /// write it. False, with nothing added, once the ledger is stopping.
    fn enqueue(&self, add: impl FnOnce(&mut Queue)) -> bool {
        match self.enqueue_deferred(add) {
            Queued::Stopped => false,
            Queued::Led(duty) => {
                drop(duty);
                true
            }
        }
    }

    /// [`Shared::enqueue`], except that a caller that must write the queue itself is handed
    /// the duty instead of doing it at once: it writes when the [`LeadDuty`] is carried out
    /// or dropped, and callers that queue in the meantime go into its batch.
    fn enqueue_deferred(&self, add: impl FnOnce(&mut Queue)) -> Queued<'_> {
        let lead = {
            let mut q = self.queue();
            if q.stopped {
                return Queued::Stopped;
            }
            add(&mut q);
            !std::mem::replace(&mut q.leading, true)
        };
        if !lead {
            return Queued::Led(LeadDuty(None));
        }
        match &self.delegate {
            Some(d) => {
                d.ask(false);
                Queued::Led(LeadDuty(None))
            }
            None => Queued::Led(LeadDuty(Some(self))),
        }
    }

    /// Writes everything queued, batch after batch, until the queue is empty; the caller that
    /// found no leader runs this on its own thread (group commit without a thread hand-off).
    fn lead(&self) {
        // INVARIANT (never hang): a leader that panics mid-batch (its batch's tickets resolve as
        // stopped) gives up leading as it unwinds and answers those queued behind it as not
        // recorded, so nobody waits for it and the next caller leads.
        let _leading = Leading(self);
        loop {
            let (entries, checkpoints) = {
                let mut q = self.queue();
                if q.entries.is_empty() && q.checkpoints.is_empty() {
                    q.leading = false;
                    return;
                }
                (
                    std::mem::take(&mut q.entries),
                    std::mem::take(&mut q.checkpoints),
                )
            };
            let mut w = self.writer();
            for chunk in chunks(entries, w.config.max_batch) {
                w.append(self, chunk);
            }
            if !checkpoints.is_empty() {
                // A checkpoint covers every append acknowledged before it was asked for.
                w.sync(self);
                for reply in checkpoints {
                    w.request(self, Some(reply));
                }
            }
            w.housekeeping(self);
            if w.ticker_late() {
                w.ticker = Sleep::Awake;
                self.tick.notify_one();
            }
        }
    }
}

/// `entries` in batches of at most `max` (at least one).
fn chunks<T>(mut entries: Vec<T>, max: usize) -> Vec<Vec<T>> {
    let max = max.max(1);
    let mut out = Vec::new();
    while entries.len() > max {
        let rest = entries.split_off(max);
        out.push(std::mem::replace(&mut entries, rest));
    }
    out.push(entries);
    out
}

/// The ticker thread: syncs grouped receipts when their window passes and signs what is durable
/// once the log falls idle; parked (no wake-ups) while there is nothing to do.
fn ticker_loop(shared: &Shared) {
    let mut w = shared.writer();
    loop {
        w.housekeeping(shared);
        if w.stopping {
            w.sync(shared);
            if w.checkpoint_due() {
                w.request(shared, None);
            }
            // Closing the channel lets the checkpoint thread finish and exit.
            w.sign = None;
            return;
        }
        w = match w.next_tick() {
            Some(wait) => {
                w.ticker = Sleep::Until(Instant::now() + wait);
                let mut w = shared
                    .tick
                    .wait_timeout(w, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                w.ticker = Sleep::Awake;
                w
            }
            None => {
                w.ticker = Sleep::Parked;
                let mut w = shared.tick.wait(w).unwrap_or_else(PoisonError::into_inner);
                w.ticker = Sleep::Awake;
                w
            }
        };
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

    /// Awaits durability, at most [`RECORD_WAIT`].
    ///
    /// # Errors
    /// [`LedgerError`]: the entry is not recorded; [`LedgerError::TimedOut`] when the store did
    /// not answer within [`RECORD_WAIT`] (the caller acts as if it were not recorded).
    pub async fn recorded(self) -> Result<u64, LedgerError> {
        // INVARIANT (fail-closed, issue 22): a receipt or an event whose store does not answer
        // holds its caller no longer than a decision's record does.
        self.recorded_within(RECORD_WAIT).await
    }

    /// [`Ticket::recorded`], waiting at most `wait`.
    async fn recorded_within(self, wait: Duration) -> Result<u64, LedgerError> {
        match tokio::time::timeout(wait, self.0).await {
            Ok(answer) => answer.map_err(|_| LedgerError::Stopped)?,
            Err(_) => Err(LedgerError::TimedOut(wait)),
        }
    }
}

/// The Witness ledger. Cheap to share behind an `Arc`; dropping it stops the writer after a final
/// checkpoint.
pub struct Ledger {
    shared: Arc<Shared>,
    /// Entries found at open after the latest signed checkpoint (or all, without one).
    unsigned_at_open: u64,
    receipts: Receipts,
    ticker: Option<JoinHandle<()>>,
    signer_thread: Option<JoinHandle<()>>,
    /// The leading thread, for a store that cannot be written from any thread.
    leader: Option<JoinHandle<()>>,
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
        let receipts = config.receipts;
        let delegate = (!store.writes_on_any_thread()).then(Delegate::default);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            verifier,
            origin,
            durable: AtomicU64::new(size),
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(Writer {
                sign: Some(sign_tx),
                config,
                head,
                durable: head,
                signed: if dirty { None } else { Some(size) },
                last_checkpoint: Instant::now(),
                unsynced_since: None,
                last_append: Instant::now(),
                ticker: Sleep::Awake,
                stopping: false,
                on_sync: None,
            }),
            tick: Condvar::new(),
            delegate,
        });
        let leader = match shared.delegate {
            Some(_) => {
                let s = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("warden-ledger-lead".into())
                        .spawn(move || delegate_loop(&s))
                        .map_err(|e| {
                            LedgerError::AppendFailed(format!(
                                "cannot start the ledger's writing thread: {e}"
                            ))
                        })?,
                )
            }
            None => None,
        };
        let ticker_shared = Arc::clone(&shared);
        let ticker = std::thread::Builder::new()
            .name("warden-ledger".into())
            .spawn(move || ticker_loop(&ticker_shared))
            .map_err(|e| {
                LedgerError::AppendFailed(format!("cannot start the ledger's ticker: {e}"))
            })?;
        Ok(Ledger {
            shared,
            unsigned_at_open: size.saturating_sub(signed_size.unwrap_or(0)),
            receipts,
            ticker: Some(ticker),
            signer_thread: Some(signer_thread),
            leader,
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
        Ok(self.queue(bytes, self.sync_for(entry)))
    }

    /// When `entry` must be durable.
    fn sync_for(&self, entry: &Entry) -> Sync {
        // INVARIANT (fail-closed, INV-003): only a receipt may be acknowledged before its sync;
        // a decision is durable before anything it allows runs.
        match (entry, self.receipts) {
            (Entry::Receipt(_), Receipts::Grouped { .. }) => Sync::Grouped,
            _ => Sync::Now,
        }
    }

    /// Records the entry and awaits its durability (for a grouped receipt: until it is
    /// written), like [`Ledger::submit`] then [`Ticket::recorded`], except on a tokio runtime
    /// with a single thread. There a caller that finds nobody writing lets the other ready
    /// tasks run once before it writes and syncs on that thread: those that reach the ledger
    /// meanwhile queue behind it and share its sync, where otherwise each would block the
    /// thread for a sync of its own.
    ///
    /// Drive it with the runtime it runs on (`.await` it, spawn it): a blocking executor on a
    /// single-thread runtime's thread never lets its yield end, and the ledger waits for it.
    ///
    /// # Errors
    /// [`LedgerError`]: the entry is not recorded.
    pub async fn record(&self, entry: &Entry) -> Result<u64, LedgerError> {
        let bytes = entry.to_bytes()?;
        let sync = self.sync_for(entry);
        let (reply, rx) = oneshot::channel();
        if let Queued::Led(duty) = self
            .shared
            .enqueue_deferred(|q| q.entries.push((bytes, sync, reply)))
        {
            if duty.pending() && on_single_thread_runtime() {
                tokio::task::yield_now().await;
            }
            drop(duty);
        }
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Queues canonical entry bytes (the caller vouches they are canonical); the ticket
    /// resolves once they are durable.
    #[must_use]
    pub fn submit_bytes(&self, bytes: Vec<u8>) -> Ticket {
        self.queue(bytes, Sync::Now)
    }

    /// Queues the entry (see [`Shared::enqueue`]).
    fn queue(&self, bytes: Vec<u8>, sync: Sync) -> Ticket {
        let (reply, rx) = oneshot::channel();
        // Once stopped, `reply` is dropped: the ticket reports `Stopped`.
        self.shared
            .enqueue(|q| q.entries.push((bytes, sync, reply)));
        Ticket(rx)
    }

    /// How many entries are durable: the size, less grouped receipts still waiting for their
    /// sync.
    #[must_use]
    pub fn durable_size(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Tells `observer` how long each later sync takes (replacing any earlier observer).
    pub fn observe_syncs(&self, observer: SyncObserver) {
        self.shared.writer().on_sync = Some(observer);
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
        if !self.shared.enqueue(|q| q.checkpoints.push(reply)) {
            return Err(LedgerError::Stopped);
        }
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
        // Nothing more is queued; a leader still writing finishes what it took.
        self.shared.queue().stopped = true;
        if let (Some(d), Some(t)) = (&self.shared.delegate, self.leader.take()) {
            d.ask(true);
            let _ = t.join();
        }
        {
            let mut w = self.shared.writer();
            w.stopping = true;
            self.shared.tick.notify_one();
        }
        // The ticker syncs, asks for a final checkpoint and closes the checkpoint channel.
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(c) = self.signer_thread.take() {
            let _ = c.join();
        }
    }
}

/// How the ticker thread is sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// Running (or about to decide).
    Awake,
    /// Until this moment.
    Until(Instant),
    /// Until woken: nothing is due.
    Parked,
}

/// The writing side of the ledger, behind its lock: batches appends (one sync per batch),
/// keeps grouped receipts' syncs within their window, and hands durable tree heads to the
/// checkpoint thread.
struct Writer {
    /// To the checkpoint thread; taken at shutdown.
    sign: Option<mpsc::Sender<Sign>>,
    config: LedgerConfig,
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
    /// How the ticker sleeps; a leader that gives it something due earlier wakes it.
    ticker: Sleep,
    /// The ledger is being dropped.
    stopping: bool,
    /// Told how long each sync took (metrics).
    on_sync: Option<SyncObserver>,
}

/// Told how long each sync of the ledger took: a batch's write and `fdatasync` (or commit), or a
/// grouped receipts' `fdatasync`.
pub type SyncObserver = Box<dyn Fn(Duration) + Send + std::marker::Sync>;

impl Writer {
    fn window(&self) -> Duration {
        match self.config.receipts {
            Receipts::Grouped { window } => window,
            Receipts::Strict => Duration::ZERO,
        }
    }

    /// Writes one batch (syncing it if any entry needs that) and answers its callers.
    fn append(&mut self, shared: &Shared, batch: Vec<(Vec<u8>, Sync, Reply)>) {
        let sync = if batch.iter().any(|(_, s, _)| *s == Sync::Now) {
            Sync::Now
        } else {
            Sync::Grouped
        };
        let (bytes, replies): (Vec<Vec<u8>>, Vec<Reply>) =
            batch.into_iter().map(|(b, _, r)| (b, r)).unzip();
        let started = Instant::now();
        let result = shared.store().and_then(|mut s| {
            Ok(match sync {
                Sync::Now => s.append(&bytes)?,
                Sync::Grouped => s.append_written(&bytes)?,
            })
        });
        if sync == Sync::Now {
            self.observe(started);
        }
        match result {
            Ok(done) => {
                self.head = (done.size, done.root);
                self.last_append = Instant::now();
                match sync {
                    // A sync covers every earlier write too.
                    Sync::Now => self.synced(shared),
                    Sync::Grouped => {
                        self.unsynced_since.get_or_insert_with(Instant::now);
                    }
                }
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Ok(done.first + i as u64));
                }
            }
            Err(e) => {
                let msg = cause(&e);
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::AppendFailed(msg.clone())));
                }
            }
        }
    }

    /// What is due now: the grouped receipts' sync once their window has passed, a checkpoint
    /// of what is durable once a checkpoint interval has passed since the last one or since the
    /// last write.
    fn housekeeping(&mut self, shared: &Shared) {
        if self
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= self.window())
        {
            self.sync(shared);
        }
        let interval = self.config.checkpoint_interval;
        if self.checkpoint_due()
            && (self.last_checkpoint.elapsed() >= interval
                || self.last_append.elapsed() >= interval)
        {
            self.request(shared, None);
        }
    }

    /// Whether the sleeping ticker would wake too late for what is now due (a new grouped
    /// receipt's window, a checkpoint after the log falls idle). Under steady load it is not:
    /// the ticker keeps a window's pace while appends come (see [`Writer::next_tick`]), so a
    /// receipt written while it sleeps is due no earlier than its next wake-up.
    fn ticker_late(&self) -> bool {
        match (self.ticker, self.next_tick()) {
            (Sleep::Parked, Some(_)) => true,
            (Sleep::Until(at), Some(wait)) => Instant::now() + wait < at,
            _ => false,
        }
    }

    /// How long the ticker may sleep: `None` to park until woken.
    ///
    /// With grouped receipts, while appends keep coming (the last within `PACED_WINDOWS`
    /// windows) the ticker wakes once per window even when nothing written is unsynced (a
    /// decision's sync covered it): a receipt written in the meantime is then due no earlier
    /// than the ticker's next wake-up, so the caller that wrote it need not wake the ticker.
    /// Without this pace the ticker slept until the next checkpoint after each such wake-up,
    /// and the next receipt woke it again (a futex wake and two context switches).
    fn next_tick(&self) -> Option<Duration> {
        let interval = self.config.checkpoint_interval;
        let window = match self.unsynced_since {
            Some(t) => Some(self.window().saturating_sub(t.elapsed())),
            None if !self.window().is_zero()
                && self.last_append.elapsed() < self.window().saturating_mul(PACED_WINDOWS) =>
            {
                Some(self.window())
            }
            None => None,
        };
        let checkpoint = self.checkpoint_due().then(|| {
            interval
                .saturating_sub(self.last_checkpoint.elapsed())
                .min(interval.saturating_sub(self.last_append.elapsed()))
        });
        match (window, checkpoint) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|d| d.max(Duration::from_micros(100)))
    }

    /// Makes the written entries durable. A failed sync stops the store (every later append
    /// is refused), so the gateway fails closed; the receipts it may have lost are closed as
    /// `interrupted` at the next start.
    fn sync(&mut self, shared: &Shared) {
        if self.unsynced_since.is_none() {
            return;
        }
        let started = Instant::now();
        let done = shared.store().and_then(|mut s| Ok(s.sync()?));
        self.observe(started);
        self.unsynced_since = None;
        if done.is_ok() {
            self.synced(shared);
        }
    }

    fn observe(&self, started: Instant) {
        if let Some(f) = &self.on_sync {
            f(started.elapsed());
        }
    }

    fn synced(&mut self, shared: &Shared) {
        self.durable = self.head;
        self.unsynced_since = None;
        shared.durable.store(self.durable.0, Ordering::Release);
    }

    fn checkpoint_due(&self) -> bool {
        self.signed != Some(self.durable.0)
    }

    /// Hands the durable head to the checkpoint thread, once the store has written out what
    /// the checkpoint needs.
    fn request(&mut self, shared: &Shared, reply: Option<NoteReply>) {
        // INVARIANT (recovery trusts checkpoints): a store that cannot write what a checkpoint
        // vouches for gets none; it has failed, so it refuses every later append too.
        if let Err(e) = shared.store().and_then(|mut s| Ok(s.prepare_checkpoint()?)) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(LedgerError::AppendFailed(cause(&e))));
            }
            self.last_checkpoint = Instant::now();
            return;
        }
        if let Some(sign) = &self.sign {
            let _ = sign.send(Sign {
                size: self.durable.0,
                root: self.durable.1,
                reply,
            });
        }
        self.signed = Some(self.durable.0);
        self.last_checkpoint = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket whose store never answers ends its caller's wait with `TimedOut`; one answered
    /// in time gives the index; one whose writer is gone says so.
    #[tokio::test]
    async fn a_ticket_waits_for_its_store_no_longer_than_its_bound() {
        let wait = Duration::from_millis(50);
        let (_silent, rx) = oneshot::channel();
        let started = Instant::now();
        assert!(matches!(
            Ticket(rx).recorded_within(wait).await,
            Err(LedgerError::TimedOut(d)) if d == wait
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(7));
        assert!(matches!(Ticket(rx).recorded_within(wait).await, Ok(7)));
        let (tx, rx) = oneshot::channel::<Result<u64, LedgerError>>();
        drop(tx);
        assert!(matches!(
            Ticket(rx).recorded_within(wait).await,
            Err(LedgerError::Stopped)
        ));
    }
}
