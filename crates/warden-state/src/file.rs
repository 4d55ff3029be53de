//! The embedded store: state in the data directory, surviving restarts.
//!
//! Layout: `DIR/state.journal` (write-ahead journal) and `DIR/state.lock` (held while open, so
//! two processes never write one journal).
//!
//! Each journal line is `CRC32(hex) SP JSON LF`. Every change is written to the journal *before*
//! it takes effect in memory, with one `write` call per change, so a process that is killed keeps
//! every change it acted on (the operating system holds the bytes). Holds (kill switch,
//! quarantine, pauses) are additionally `fdatasync`ed before the call returns, so they also
//! survive a power loss; counter increments and session history are not, to keep the decision
//! path free of disk flushes (a power loss may forget the last moments of counting, never a hold).
//!
//! On open the journal is replayed: a torn last line (a crash mid-write) is cut off; a damaged
//! line anywhere else refuses the open (fail closed). The replayed state is then compacted into a
//! fresh journal, written to a temporary file, synced and renamed into place.

use crate::engine::{Engine, Op};
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use warden_core::state::{
    Charge, ChargeOutcome, Hold, HoldKind, HoldScope, Settle, Settled, StateError, StateStore,
};
use warden_core::time::UnixSeconds;

/// Journal size that triggers a compaction while running.
const COMPACT_AT_BYTES: u64 = 64 << 20;

/// Why the embedded store could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A file operation failed.
    #[error("state directory `{path}`: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error("state directory `{0}` is in use by another process")]
    Locked(PathBuf),
    /// The journal is damaged before its last line.
    #[error("state journal `{path}` is damaged at line {line}: {problem}")]
    Corrupted {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    journal: File,
    journal_bytes: u64,
    /// Journal size at which the next compaction is attempted.
    compact_at: u64,
    // INVARIANT (fail-closed): once set, the journal's state is unknown (a failed sync, or a
    // partial write that could not be cut back), and every operation errors until the store
    // is reopened, which replays what actually reached the disk.
    failed: Option<String>,
}

/// The embedded store. See the module documentation for its durability guarantees.
#[derive(Debug)]
pub struct FileState {
    dir: PathBuf,
    // INVARIANT (write-ahead): every change is appended to `journal` before `engine` applies it,
    // both under this one lock.
    inner: Mutex<Inner>,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileState {
    /// Opens (creating if needed) the store in `dir`, replaying and compacting its journal.
    ///
    /// # Errors
    /// [`OpenError`] if the directory cannot be used, is locked by another process, or holds a
    /// damaged journal.
    pub fn open(dir: &Path, now: UnixSeconds) -> Result<Self, OpenError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("state.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // A child process forked by another thread holds a copy of the lock until it execs;
        // retry briefly before concluding that another process owns the directory.
        let mut attempts = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(OpenError::Locked(dir.to_path_buf()))
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
            }
        }
        let journal_path = dir.join("state.journal");
        let mut engine = Engine::default();
        if journal_path.exists() {
            replay(&journal_path, &mut engine, now)?;
        }
        engine.sweep(now);
        let (journal, journal_bytes) =
            compact(dir, &engine, now).map_err(|e| io_err(&journal_path)(e.source))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                engine,
                journal,
                journal_bytes,
                compact_at: COMPACT_AT_BYTES.max(journal_bytes.saturating_mul(2)),
                failed: None,
            }),
            _lock: lock,
        })
    }

    /// The directory this store lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The inner state for a read: refused, like writes, once the journal has failed.
    fn readable(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StateError> {
        let inner = self.inner()?;
        if let Some(why) = &inner.failed {
            return Err(StateError::Unavailable(format!(
                "state journal failed earlier ({why}); reopen the store"
            )));
        }
        Ok(inner)
    }

    fn inner(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StateError> {
        // INVARIANT (fail-closed): a poisoned lock means a thread died mid-update.
        self.inner
            .lock()
            .map_err(|_| StateError::Unavailable("state lock poisoned".into()))
    }

    /// Appends `op` to the journal (and syncs it when `sync`), then applies it.
    fn commit(
        &self,
        inner: &mut Inner,
        op: Op,
        now: UnixSeconds,
        sync: bool,
    ) -> Result<(), StateError> {
        self.commit_all(inner, vec![op], now, sync)
    }

    /// Appends `ops` to the journal in one write (and syncs it when `sync`), then applies them
    /// in order: all of them or, on an error, none.
    fn commit_all(
        &self,
        inner: &mut Inner,
        ops: Vec<Op>,
        now: UnixSeconds,
        sync: bool,
    ) -> Result<(), StateError> {
        if let Some(why) = &inner.failed {
            return Err(StateError::Unavailable(format!(
                "state journal failed earlier ({why}); reopen the store"
            )));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut line = Vec::with_capacity(256);
        for op in &ops {
            encode_line(op, &mut line)?;
        }
        // INVARIANT (write-ahead): the journal write happens first; if it fails, memory is
        // unchanged and the caller gets an error (and denies).
        if let Err(e) = inner.journal.write_all(&line) {
            // Cut any partial line so that the journal stays replayable; if even that fails,
            // stop using the journal.
            if let Err(cut) = inner.journal.set_len(inner.journal_bytes) {
                inner.failed = Some(format!(
                    "append failed ({e}) and could not be cut back ({cut})"
                ));
            }
            return Err(StateError::Unavailable(format!(
                "cannot append to state journal: {e}"
            )));
        }
        inner.journal_bytes = inner.journal_bytes.saturating_add(line.len() as u64);
        if sync {
            if let Err(e) = inner.journal.sync_data() {
                // The change may or may not be on disk: memory can no longer be trusted to
                // match the journal.
                inner.failed = Some(format!("sync failed: {e}"));
                return Err(StateError::Unavailable(format!(
                    "cannot sync state journal: {e}"
                )));
            }
        }
        for op in ops {
            inner.engine.apply(op, now);
        }
        if inner.journal_bytes > inner.compact_at {
            // Compaction is an optimisation: the appended journal is already complete, so a
            // failure here is not the caller's failure. Try again when the journal has doubled.
            match compact(&self.dir, &inner.engine, now) {
                Ok((journal, bytes)) => {
                    inner.journal = journal;
                    inner.journal_bytes = bytes;
                    inner.compact_at = COMPACT_AT_BYTES.max(bytes.saturating_mul(2));
                }
                // INVARIANT (fail-closed): once the new journal has replaced the old one, the
                // old handle writes to an unlinked file; stop rather than lose changes.
                Err(e) if e.replaced => {
                    inner.failed = Some(format!("compaction replaced the journal but failed: {e}"));
                    return Err(StateError::Unavailable(format!(
                        "cannot reopen compacted state journal: {e}"
                    )));
                }
                Err(_) => inner.compact_at = inner.journal_bytes.saturating_mul(2),
            }
        }
        Ok(())
    }
}

/// Appends `op`'s journal line to `out`: its JSON's CRC-32 as eight lowercase hex digits, a
/// space, the JSON, a newline. `out` is left as it was on an error.
fn encode_line(op: &Op, out: &mut Vec<u8>) -> Result<(), StateError> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let start = out.len();
    out.extend_from_slice(b"00000000 ");
    if let Err(e) = serde_json::to_writer(&mut *out, op) {
        out.truncate(start);
        return Err(StateError::Unavailable(format!(
            "cannot encode state change: {e}"
        )));
    }
    let json = out.get(start + 9..).unwrap_or_default();
    let crc = crc32fast::hash(json);
    let digits = out.get_mut(start..start + 8).unwrap_or_default();
    for (i, d) in digits.iter_mut().enumerate() {
        let nibble = (crc >> (28 - 4 * i)) & 0xf;
        *d = HEX.get(nibble as usize).copied().unwrap_or(b'0');
    }
    out.push(b'\n');
    Ok(())
}

fn decode_line(line: &str) -> Result<Op, String> {
    let (crc_hex, json) = line
        .split_once(' ')
        .ok_or_else(|| "missing checksum separator".to_string())?;
    let expected =
        u32::from_str_radix(crc_hex, 16).map_err(|_| format!("bad checksum `{crc_hex}`"))?;
    let actual = crc32fast::hash(json.as_bytes());
    if expected != actual {
        return Err(format!(
            "checksum mismatch (stored {expected:08x}, computed {actual:08x})"
        ));
    }
    serde_json::from_str(json).map_err(|e| format!("undecodable change: {e}"))
}

fn replay(path: &Path, engine: &mut Engine, now: UnixSeconds) -> Result<(), OpenError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut offset = 0usize;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let rest = bytes.get(offset..).unwrap_or_default();
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (rest.get(..end).unwrap_or_default(), true),
            None => (rest, false),
        };
        let decoded = std::str::from_utf8(line)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(decode_line);
        match decoded {
            Ok(op) if complete => engine.apply(op, now),
            // A torn tail: the process died while writing the last change, so the write never
            // returned and the change was never acted upon. Cut it (compaction rewrites the
            // journal without it).
            Ok(_) | Err(_) if !complete => break,
            // A complete line that fails its checksum is damage, not a torn write: refuse.
            Err(problem) => {
                return Err(OpenError::Corrupted {
                    path: path.to_path_buf(),
                    line: line_no,
                    problem,
                })
            }
            Ok(_) => break,
        }
        offset += line.len() + usize::from(complete);
    }
    Ok(())
}

/// Why a compaction failed, and whether the old journal is still the live one.
#[derive(Debug)]
struct CompactError {
    /// The new journal replaced the old one: handles to the old file are stale.
    replaced: bool,
    source: std::io::Error,
}

impl std::fmt::Display for CompactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

/// Writes the engine's state as a fresh journal and returns it opened for appending.
fn compact(dir: &Path, engine: &Engine, now: UnixSeconds) -> Result<(File, u64), CompactError> {
    let before = |source| CompactError {
        replaced: false,
        source,
    };
    let after = |source| CompactError {
        replaced: true,
        source,
    };
    let (journal, len) = write_snapshot(dir, engine, now).map_err(before)?;
    let path = dir.join("state.journal");
    fs::rename(dir.join("state.journal.tmp"), &path).map_err(before)?;
    drop(journal);
    File::open(dir).and_then(|d| d.sync_all()).map_err(after)?;
    let journal = OpenOptions::new().append(true).open(&path).map_err(after)?;
    Ok((journal, len))
}

/// Writes and syncs `state.journal.tmp`.
fn write_snapshot(dir: &Path, engine: &Engine, now: UnixSeconds) -> std::io::Result<(File, u64)> {
    let tmp = dir.join("state.journal.tmp");
    let mut out = Vec::new();
    for op in engine.snapshot_ops(now) {
        encode_line(&op, &mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let mut f = File::create(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    Ok((f, out.len() as u64))
}

impl StateStore for FileState {
    fn check_and_charge(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
    ) -> Result<ChargeOutcome, StateError> {
        let mut inner = self.inner()?;
        let (outcome, op) = inner.engine.plan_charge(charges, now);
        if let Some(op) = op {
            self.commit(&mut inner, op, now, false)?;
        }
        Ok(outcome)
    }

    fn observe_call(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: UnixSeconds,
        ttl: i64,
    ) -> Result<u32, StateError> {
        let mut inner = self.inner()?;
        let (repeats, op) = inner.engine.plan_observe(session, fingerprint, now, ttl);
        self.commit(&mut inner, op, now, false)?;
        Ok(repeats)
    }

    fn settle(&self, s: &Settle<'_>) -> Result<Settled, StateError> {
        let mut inner = self.readable()?;
        let mut ops = Vec::new();
        let settled = inner.engine.settle(s, Some(&mut ops));
        self.commit_all(&mut inner, ops, s.now, false)?;
        Ok(settled)
    }

    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        Ok(self.readable()?.engine.holds_for(scopes))
    }

    fn set_hold(&self, hold: Hold) -> Result<(), StateError> {
        let mut inner = self.inner()?;
        // Hold changes carry no clock: `i64::MIN` as "now" expires nothing.
        self.commit(&mut inner, Op::SetHold { hold }, i64::MIN, true)
    }

    fn clear_hold(&self, scope: &HoldScope, kind: HoldKind) -> Result<bool, StateError> {
        let mut inner = self.inner()?;
        let was = inner.engine.has_hold(scope, kind);
        if was {
            let op = Op::ClearHold {
                scope: scope.clone(),
                kind,
            };
            self.commit(&mut inner, op, i64::MIN, true)?;
        }
        Ok(was)
    }

    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        Ok(self.readable()?.engine.all_holds())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

    use super::*;

    #[test]
    fn a_journal_line_is_the_json_after_its_crc_and_reads_back() {
        let ops = [
            Op::Charge {
                entries: vec![
                    ("budget:a\"b\n".into(), 3, 1_700_000_000),
                    ("k".into(), 0, -1),
                ],
            },
            Op::Charge { entries: vec![] },
        ];
        let mut out = b"before\n".to_vec();
        for op in &ops {
            encode_line(op, &mut out).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("before"));
        for op in &ops {
            let line = lines.next().unwrap();
            let json = serde_json::to_string(op).unwrap();
            let crc = crc32fast::hash(json.as_bytes());
            assert_eq!(line, format!("{crc:08x} {json}"));
            assert_eq!(&decode_line(line).unwrap(), op);
        }
        assert!(text.ends_with('\n') && lines.next().is_none());
    }
}
