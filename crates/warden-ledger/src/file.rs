//! Embedded storage: append-only segment files in the data directory.
//!
//! Layout of `DIR`:
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg` — segments, named by the index of their first entry. Each starts
//!   with an 8-byte magic; then frames `len: u32 LE | crc32: u32 LE | index: u64 LE | entry`,
//!   the CRC covering index and entry. A segment is closed once it passes the size limit; only
//!   the last one is ever written.
//! - `index.bin` — the byte offset of every entry in its segment (`u64 LE`), derived.
//! - `tree.bin` — the hash of every perfect subtree in post-order (32 bytes each), derived.
//! - `checkpoints.log` — every signed checkpoint, appended; `ledger.lock` — held by the writer.
//!
//! The last segment is preallocated: its file is extended with zeros ahead of the frames, a
//! megabyte at a time, so that an append overwrites blocks the file already has and its
//! `fdatasync` writes the data alone, not the file's new size as well (on ext4 that saves about
//! 45% of a sync's CPU and a third of its wait). Zeros from a frame's start to the end of the
//! file end the segment (no frame's header is all zeros: its checksum never is); a closed
//! segment is cut to its last frame before the next one is created, so only the last segment
//! ever has such a tail.
//!
//! Durability: an append writes its frames and `fdatasync`s the segment before it returns (one
//! sync per batch: group commit). `append_written` leaves the sync to the next `append` or
//! `sync` (the ledger's grouped receipts); since only the last segment is written and a sync
//! covers every earlier write, what a power loss can cut is always a tail. The derived files are
//! written in batches (the entries appended since the last batch wait in memory, at most
//! `DERIVED_BATCH` of them, and are written before any checkpoint: `prepare_checkpoint`),
//! without a sync, and made durable just before a checkpoint is written, so on open everything
//! up to the checkpoint's size is trusted (after checking the stored tree against the
//! checkpoint's root) and everything after it is re-derived from the segments, whose frames are
//! checked one by one. A torn frame at the
//! end of the last segment (a crash mid-write) is cut; damage anywhere else is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::merkle::{leaf_hash, nodes_for_size, Frontier, Hash, NodeId, ProofPlan};
use crate::note::Checkpoint;
use crate::record::MAX_ENTRY_BYTES;
use crate::store::{io_err, Appended, Checkpointer, LedgerStore, StoreError, Visit};

const MAGIC: &[u8; 8] = b"WLSEG\x00\x00\x01";
const HEADER: u64 = 16;
/// Default segment size limit.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
    /// Where its frames end.
    len: u64,
    /// The file's length: `len`, or more for the last segment's zeros ahead of its frames.
    allocated: u64,
}

/// How far ahead of its frames the last segment's file is extended with zeros.
const PREALLOCATE: u64 = 1 << 20;

/// How many appended entries' offsets and nodes are held in memory, at most, before they are
/// written to the derived files (a checkpoint writes them sooner): 72 KiB or so, and two
/// writes per this many entries instead of two per append.
const DERIVED_BATCH: usize = 1024;

/// Whether the bytes of `file` from `pos` to `file_len` are all zeros (the preallocated tail).
fn zeros_to_end(file: &File, pos: u64, file_len: u64) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = pos;
    while at < file_len {
        let n = usize::try_from((file_len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let Some(chunk) = buf.get_mut(..n) else {
            return false;
        };
        if file.read_exact_at(chunk, at).is_err() || chunk.iter().any(|&b| b != 0) {
            return false;
        }
        at += n as u64;
    }
    true
}

/// How to open the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The one writer: takes the lock, repairs a torn tail, appends.
    Write,
    /// A reader (CLI, auditor) beside a running writer: no lock, no repair, a snapshot of what
    /// was complete when it opened.
    ReadOnly,
}

/// The embedded ledger store. See the module documentation.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    mode: Mode,
    segments: Vec<Segment>,
    index: File,
    tree: File,
    /// Entries whose offsets and nodes are in the files. The rest are in `tail_offsets` /
    /// `tail_nodes`: in read-only mode what was re-derived at open; in write mode what was
    /// appended since the last [`FileStore::flush_derived`].
    on_disk: u64,
    tail_offsets: Vec<u64>,
    tail_nodes: Vec<Hash>,
    size: u64,
    frontier: Frontier,
    segment_limit: u64,
    // INVARIANT (fail-closed): set on the first failed write; every later call is refused.
    failed: Option<String>,
    /// The last segment holds writes not yet synced (`append_written`).
    unsynced: bool,
    /// The checkpoint read at open (what a read-only snapshot reports as latest).
    snapshot: Option<String>,
    _lock: Option<File>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn frame_crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// The append-only log of signed checkpoints.
const CHECKPOINT_LOG: &str = "checkpoints.log";
/// Longest checkpoint note stored.
const MAX_NOTE: u32 = 64 * 1024;

/// Encodes one checkpoint frame: `len u32 | note | size u64 | len u32 | crc32 u32`, the CRC
/// covering note and size. The length at both ends lets the newest frame be read from the end.
fn checkpoint_frame(size: u64, note: &str) -> Vec<u8> {
    let len = u32::try_from(note.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(note.len() + 20);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(note.as_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(note.as_bytes());
    h.update(&size.to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out
}

/// Reads the checkpoint frame ending at `end`, if it is whole and intact.
fn checkpoint_frame_ending_at(file: &File, end: u64) -> Option<(u64, String)> {
    let mut trailer = [0u8; 16];
    file.read_exact_at(&mut trailer, end.checked_sub(16)?)
        .ok()?;
    let (size_b, rest) = trailer.split_first_chunk::<8>()?;
    let (len_b, crc_b) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len_b);
    if len > MAX_NOTE {
        return None;
    }
    let start = end.checked_sub(16 + u64::from(len) + 4)?;
    let mut buf = vec![0u8; len as usize + 4];
    file.read_exact_at(&mut buf, start).ok()?;
    let (head, note) = buf.split_first_chunk::<4>()?;
    if *head != len.to_le_bytes() {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(note);
    h.update(size_b);
    if h.finalize().to_le_bytes() != *crc_b {
        return None;
    }
    Some((
        u64::from_le_bytes(*size_b),
        String::from_utf8(note.to_vec()).ok()?,
    ))
}

/// The newest checkpoint in the log (no signature check: the ledger does that). A torn last
/// frame (a crash mid-append) is skipped and, when `repair`, cut off.
fn read_latest_checkpoint(
    dir: &Path,
    repair: bool,
) -> Result<Option<(String, Checkpoint)>, StoreError> {
    let path = dir.join(CHECKPOINT_LOG);
    let file = match OpenOptions::new().read(true).write(repair).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    let len = file.metadata().map_err(io_err("stat", &path))?.len();
    let found = match checkpoint_frame_ending_at(&file, len) {
        Some(f) => Some(f),
        None if len == 0 => None,
        None => {
            // A torn last frame: the previous frame ends within one frame's length of the end
            // (a failed write is cut back by the checkpointer, so only the last can be torn).
            let window = u64::from(MAX_NOTE) + 20;
            let mut pos = 0u64;
            let mut last = None;
            let mut end = len;
            while end > 0 && len - end <= window {
                end -= 1;
                if let Some(f) = checkpoint_frame_ending_at(&file, end) {
                    last = Some(f);
                    pos = end;
                    break;
                }
            }
            if repair {
                file.set_len(pos).map_err(io_err("truncate", &path))?;
                file.sync_data().map_err(io_err("fdatasync", &path))?;
            }
            last
        }
    };
    let Some((size, note)) = found else {
        return Ok(None);
    };
    let text = note
        .split_once("\n\n")
        .map(|(t, _)| format!("{t}\n"))
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{}: the newest entry is not a signed note",
                path.display()
            ))
        })?;
    let cp = Checkpoint::parse_text(&text)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if cp.size != size {
        return Err(StoreError::Corrupt(format!(
            "{}: a checkpoint for size {} is filed under size {size}",
            path.display(),
            cp.size
        )));
    }
    Ok(Some((note, cp)))
}

/// What a frame at some position turned out to be.
enum Frame {
    Ok {
        index: u64,
        payload: Vec<u8>,
        next: u64,
    },
    End,
    Bad(String),
}

/// Whether a whole, valid frame for entry `index` starts right after the (bad) frame at `pos`.
fn frame_follows(file: &File, pos: u64, file_len: u64, index: u64) -> bool {
    let mut header = [0u8; 16];
    if pos.saturating_add(HEADER) > file_len || file.read_exact_at(&mut header, pos).is_err() {
        return false;
    }
    let (len, _, _) = split_header(&header);
    if len as usize > MAX_ENTRY_BYTES {
        return false;
    }
    let next = pos.saturating_add(HEADER).saturating_add(u64::from(len));
    matches!(read_frame_at(file, next, file_len), Frame::Ok { index: i, .. } if i == index)
}

fn read_frame_at(file: &File, pos: u64, file_len: u64) -> Frame {
    if pos == file_len {
        return Frame::End;
    }
    if pos.saturating_add(HEADER) > file_len {
        // The preallocated zeros may end short of a header at the segment's size limit.
        if zeros_to_end(file, pos, file_len) {
            return Frame::End;
        }
        return Frame::Bad(format!("a frame header at byte {pos} is cut short"));
    }
    let mut header = [0u8; 16];
    if let Err(e) = file.read_exact_at(&mut header, pos) {
        return Frame::Bad(format!("reading byte {pos}: {e}"));
    }
    if header == [0u8; 16] {
        // The preallocated tail, if nothing but zeros follows.
        return if zeros_to_end(file, pos, file_len) {
            Frame::End
        } else {
            Frame::Bad(format!(
                "a zeroed frame header at byte {pos} is followed by data"
            ))
        };
    }
    let (len, crc, index) = split_header(&header);
    if len as usize > MAX_ENTRY_BYTES {
        return Frame::Bad(format!("the frame at byte {pos} claims {len} bytes"));
    }
    let next = pos.saturating_add(HEADER).saturating_add(u64::from(len));
    if next > file_len {
        return Frame::Bad(format!("the frame at byte {pos} is cut short"));
    }
    let mut payload = vec![0u8; len as usize];
    if let Err(e) = file.read_exact_at(&mut payload, pos + HEADER) {
        return Frame::Bad(format!("reading byte {pos}: {e}"));
    }
    if frame_crc(index, &payload) != crc {
        return Frame::Bad(format!(
            "the frame at byte {pos} (entry {index}) fails its checksum"
        ));
    }
    Frame::Ok {
        index,
        payload,
        next,
    }
}

/// [`read_frame_at`] for a reader beside a running writer, which may be filling the preallocated
/// zeros at this very spot (the reader sees its write part done): a bad frame is looked at
/// again, for up to 20 ms, before it is judged.
fn read_frame_beside_writer(file: &File, pos: u64, file_len: u64) -> Frame {
    let mut frame = read_frame_at(file, pos, file_len);
    for _ in 0..10 {
        if !matches!(frame, Frame::Bad(_)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        frame = read_frame_at(file, pos, file_len);
    }
    frame
}

fn split_header(h: &[u8; 16]) -> (u32, u32, u64) {
    let [a, b, c, d, e, f, g, hh, i0, i1, i2, i3, i4, i5, i6, i7] = *h;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, hh]),
        u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
    )
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    /// [`StoreError`] if the directory cannot be used, another writer holds it, or stored data
    /// is damaged beyond a torn tail.
    pub fn open(dir: &Path, mode: Mode) -> Result<Self, StoreError> {
        Self::open_with(dir, mode, DEFAULT_SEGMENT_BYTES)
    }

    /// [`FileStore::open`] with a segment size limit (tests use small ones).
    ///
    /// # Errors
    /// As [`FileStore::open`].
    pub fn open_with(dir: &Path, mode: Mode, segment_limit: u64) -> Result<Self, StoreError> {
        if mode == Mode::Write {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        } else if !dir.is_dir() {
            return Err(StoreError::Io {
                op: "open ledger directory",
                path: dir.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let lock = if mode == Mode::Write {
            let path = dir.join("ledger.lock");
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            // A lock can be held for a moment by a process this one forks (between fork and
            // exec the child shares the lock), so a busy lock is retried for up to a second
            // before it is reported as another Warden's.
            let mut tries = 0;
            loop {
                match f.try_lock() {
                    Ok(()) => break Some(f),
                    Err(fs::TryLockError::WouldBlock) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(fs::TryLockError::WouldBlock) => {
                        return Err(StoreError::Locked(format!(
                            "{} is in use by another Warden process",
                            dir.display()
                        )))
                    }
                    Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
                }
            }
        } else {
            None
        };

        // INVARIANT (consistent snapshot): the checkpoint is read before the segments are listed,
        // so every entry it covers is in what is listed, even with a writer running beside.
        let latest = read_latest_checkpoint(dir, mode == Mode::Write)?;
        let mut segments = Vec::new();
        let listing = fs::read_dir(dir).map_err(io_err("list", dir))?;
        for item in listing {
            let item = item.map_err(io_err("list", dir))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".seg") else {
                continue;
            };
            if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let first: u64 = stem
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("segment name {name} is not an index")))?;
            let path = item.path();
            let file = OpenOptions::new()
                .read(true)
                .write(mode == Mode::Write)
                .open(&path)
                .map_err(io_err("open", &path))?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            segments.push(Segment {
                first,
                path,
                file,
                len,
                allocated: len,
            });
        }
        segments.sort_by_key(|s| s.first);
        // INVARIANT (a damaged ledger does not open): every segment starts with the magic,
        // whatever the checkpoint vouches for (recovery does not re-read the part a checkpoint
        // covers, but its header is read here). Only the last may be shorter than the magic:
        // created just before a crash, recovery finishes it.
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            if seg.len < MAGIC.len() as u64 && i + 1 == count {
                continue;
            }
            let mut magic = [0u8; 8];
            if seg.len < MAGIC.len() as u64
                || seg.file.read_exact_at(&mut magic, 0).is_err()
                || &magic != MAGIC
            {
                return Err(StoreError::Corrupt(format!(
                    "{} does not start with the segment magic",
                    seg.path.display()
                )));
            }
        }

        let open_derived = |name: &str| -> Result<File, StoreError> {
            let path = dir.join(name);
            if mode == Mode::Write {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(io_err("open", &path))
            } else {
                match File::open(&path) {
                    Ok(f) => Ok(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // A ledger that never wrote a checkpoint may lack these; read from
                        // an empty stand-in.
                        File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))
                    }
                    Err(e) => Err(io_err("open", &path)(e)),
                }
            }
        };
        let index = open_derived("index.bin")?;
        let tree = open_derived("tree.bin")?;

        let mut store = FileStore {
            dir: dir.to_path_buf(),
            mode,
            segments,
            index,
            tree,
            on_disk: 0,
            tail_offsets: Vec::new(),
            tail_nodes: Vec::new(),
            size: 0,
            frontier: Frontier::new(),
            segment_limit: segment_limit.max(HEADER + 8),
            failed: None,
            unsynced: false,
            snapshot: latest.as_ref().map(|(note, _)| note.clone()),
            _lock: lock,
        };
        store.recover(latest.map(|(_, cp)| cp))?;
        Ok(store)
    }

    fn recover(&mut self, checkpoint: Option<Checkpoint>) -> Result<(), StoreError> {
        let index_len = self
            .index
            .metadata()
            .map_err(io_err("stat", &self.dir.join("index.bin")))?
            .len()
            / 8;
        let tree_len = self
            .tree
            .metadata()
            .map_err(io_err("stat", &self.dir.join("tree.bin")))?
            .len()
            / 32;

        // What the derived files may be trusted for: up to the last checkpoint, if they reach it
        // and agree with its root.
        let mut trusted = 0u64;
        if let Some(cp) = &checkpoint {
            if cp.size <= index_len && nodes_for_size(cp.size) <= tree_len {
                self.on_disk = cp.size;
                self.size = cp.size;
                let plan = ProofPlan::root(cp.size);
                let root = self
                    .nodes(&plan.nodes)
                    .ok()
                    .and_then(|h| plan.assemble(&h))
                    .and_then(|r| r.first().copied())
                    .unwrap_or(crate::merkle::EMPTY_ROOT);
                if root == cp.root || cp.size == 0 {
                    trusted = cp.size;
                }
            }
        }
        // Where to resume reading frames: right after the last trusted entry. If the derived
        // offsets do not lead to that entry, trust nothing and re-derive from the first frame.
        let mut resume = (0usize, MAGIC.len() as u64);
        if trusted > 0 {
            self.on_disk = trusted;
            self.size = trusted;
            match self.resume_after(trusted - 1) {
                Some(r) => resume = r,
                None => trusted = 0,
            }
        }
        // INVARIANT (a damaged ledger does not open): what the checkpoint covers is read once
        // more, frame by frame, before anything is appended after it.
        self.check_covered(trusted, resume)?;
        self.on_disk = trusted;
        self.size = trusted;
        let ids = Frontier::nodes_needed(trusted);
        let hashes = self.nodes(&ids)?;
        self.frontier = Frontier::from_nodes(trusted, &hashes)
            .ok_or_else(|| StoreError::Corrupt("cannot rebuild the tree frontier".into()))?;
        // Leaves stored beyond `trusted` are compared as the frames are re-read, so an entry
        // altered after its leaf was stored is named.
        let stored_leaves = if checkpoint.is_some() { tree_len } else { 0 };
        let mut first_mismatch: Option<u64> = None;
        let (mut seg_no, mut pos) = resume;
        let mut offsets = Vec::new();
        let mut nodes = Vec::new();
        let mut torn: Option<(usize, u64)> = None;
        let count = self.segments.len();
        while seg_no < count {
            let is_last = seg_no + 1 == count;
            let Some(seg) = self.segments.get_mut(seg_no) else {
                break;
            };
            if pos == MAGIC.len() as u64 {
                // A new segment: check its magic and that it starts where the previous ended.
                let mut magic = [0u8; 8];
                let has_magic = seg.len >= 8
                    && seg.file.read_exact_at(&mut magic, 0).is_ok()
                    && &magic == MAGIC;
                if !has_magic {
                    if is_last && seg.len < 8 && self.mode == Mode::Write {
                        // Created just before a crash: finish writing its header.
                        seg.file.set_len(0).map_err(io_err("truncate", &seg.path))?;
                        seg.file
                            .write_all_at(MAGIC, 0)
                            .map_err(io_err("write", &seg.path))?;
                        seg.file.sync_data().map_err(io_err("sync", &seg.path))?;
                        seg.len = 8;
                        seg.allocated = 8;
                    } else if is_last && seg.len < 8 {
                        break;
                    } else {
                        return Err(StoreError::Corrupt(format!(
                            "{} does not start with the segment magic",
                            seg.path.display()
                        )));
                    }
                }
                if seg.first != self.size {
                    return Err(StoreError::Corrupt(format!(
                        "{} should start at entry {} but is named for entry {}",
                        seg.path.display(),
                        self.size,
                        seg.first
                    )));
                }
            }
            loop {
                let frame = if self.mode == Mode::ReadOnly && is_last {
                    read_frame_beside_writer(&seg.file, pos, seg.len)
                } else {
                    read_frame_at(&seg.file, pos, seg.len)
                };
                match frame {
                    Frame::Ok {
                        index,
                        payload,
                        next,
                    } => {
                        if index != self.size {
                            return Err(StoreError::Corrupt(format!(
                                "{}: at byte {pos} expected entry {} but found entry {index}",
                                seg.path.display(),
                                self.size
                            )));
                        }
                        offsets.push(pos);
                        let leaf = leaf_hash(&payload);
                        let slot = NodeId { level: 0, index }.post_order_position();
                        if first_mismatch.is_none() && slot < stored_leaves {
                            let mut stored = [0u8; 32];
                            if self.tree.read_exact_at(&mut stored, slot * 32).is_ok()
                                && stored != leaf
                            {
                                first_mismatch = Some(index);
                            }
                        }
                        self.frontier.push(leaf, &mut nodes);
                        self.size += 1;
                        pos = next;
                    }
                    Frame::End => {
                        if pos < seg.len && !is_last {
                            // Only the last segment is preallocated (a closed one is cut to
                            // its last frame before the next is created).
                            return Err(StoreError::Corrupt(format!(
                                "{}: zeros follow its last frame at byte {pos}, and later segments follow: this is damage",
                                seg.path.display()
                            )));
                        }
                        // The preallocated tail: frames end here.
                        seg.len = pos;
                        break;
                    }
                    Frame::Bad(why) => {
                        if !is_last {
                            return Err(StoreError::Corrupt(format!(
                                "{}: {why}, and later segments follow: this is damage, not a torn write",
                                seg.path.display()
                            )));
                        }
                        if frame_follows(&seg.file, pos, seg.len, self.size + 1) {
                            // A whole frame with the next index follows the bad one: the bad
                            // one was written and synced before it, so this is damage.
                            return Err(StoreError::Corrupt(format!(
                                "{}: {why}, and entry {} follows it: this is damage, not a torn write",
                                seg.path.display(),
                                self.size + 1
                            )));
                        }
                        // A torn tail: the write that made it was never acknowledged. It is cut
                        // only after every check below has passed.
                        torn = Some((seg_no, pos));
                        seg.len = pos;
                        break;
                    }
                }
            }
            seg_no += 1;
            pos = MAGIC.len() as u64;
        }
        if let Some(cp) = &checkpoint {
            if cp.size > self.size {
                return Err(StoreError::Corrupt(format!(
                    "the checkpoint covers {} entries but only {} are present: acknowledged entries are missing",
                    cp.size, self.size
                )));
            }
        }
        // Re-derived offsets and nodes are held in memory until every check has passed, so a
        // failed open changes nothing on disk (the evidence stays as it was found).
        self.tail_offsets = offsets;
        self.tail_nodes = nodes;
        if let Some(cp) = &checkpoint {
            // The segments themselves must still hash to the signed root. (When the derived
            // files disagreed with it, `trusted` was 0 and everything was re-derived from the
            // segments, so a mismatch here means the entries were altered.)
            let plan = ProofPlan::root(cp.size);
            let fetched = self.nodes(&plan.nodes)?;
            let root = plan
                .assemble(&fetched)
                .and_then(|r| r.first().copied())
                .unwrap_or(crate::merkle::EMPTY_ROOT);
            if root != cp.root {
                let named = first_mismatch
                    .map(|i| format!("entry {i} does not hash to its stored leaf hash; "))
                    .unwrap_or_default();
                return Err(StoreError::Corrupt(format!(
                    "{named}the entries do not hash to the root of the checkpoint at size {}: the log was altered",
                    cp.size
                )));
            }
        }
        if self.mode == Mode::Write {
            if let Some((seg_no, pos)) = torn {
                if let Some(seg) = self.segments.get_mut(seg_no) {
                    seg.file
                        .set_len(pos)
                        .map_err(io_err("truncate", &seg.path))?;
                    seg.file.sync_data().map_err(io_err("sync", &seg.path))?;
                    seg.allocated = pos;
                }
            }
            let path = self.dir.join("index.bin");
            self.index
                .set_len(trusted * 8)
                .map_err(io_err("truncate", &path))?;
            let path = self.dir.join("tree.bin");
            self.tree
                .set_len(nodes_for_size(trusted) * 32)
                .map_err(io_err("truncate", &path))?;
            self.on_disk = trusted;
            self.flush_derived()?;
        }
        Ok(())
    }

    /// Reads every frame before `resume` (the segment and byte after entry `trusted - 1`, the
    /// part recovery trusts to the checkpoint and does not re-derive): each segment must start
    /// with the entry after the previous segment's last, each frame must carry the next index
    /// and pass its checksum, and each segment before `resume`'s must end with its last frame.
    /// So a missing or truncated segment, or a damaged frame anywhere, refuses the open, not only
    /// `warden ledger verify`. Sequential reads of the whole covered log: what it costs per
    /// million entries is in `docs/benchmarks.md`.
    fn check_covered(&self, trusted: u64, resume: (usize, u64)) -> Result<(), StoreError> {
        if trusted == 0 {
            return Ok(());
        }
        let corrupt = |seg: &Segment, what: String| {
            StoreError::Corrupt(format!(
                "{}: {what}: the ledger is damaged (a segment is missing, cut short or altered)",
                seg.path.display()
            ))
        };
        let mut expected = 0u64;
        for (n, seg) in self
            .segments
            .iter()
            .enumerate()
            .take(resume.0.saturating_add(1))
        {
            if seg.first != expected {
                return Err(corrupt(
                    seg,
                    format!(
                        "it starts at entry {} where entry {expected} is next",
                        seg.first
                    ),
                ));
            }
            let end = if n == resume.0 { resume.1 } else { seg.len };
            let mut pos = MAGIC.len() as u64;
            let mut reader = BufReader::with_capacity(1 << 20, &seg.file);
            std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(pos))
                .map_err(io_err("seek", &seg.path))?;
            let mut header = [0u8; 16];
            let mut payload = Vec::new();
            while pos < end {
                if pos.saturating_add(HEADER) > end {
                    return Err(corrupt(
                        seg,
                        format!("a frame header at byte {pos} is cut short"),
                    ));
                }
                reader
                    .read_exact(&mut header)
                    .map_err(io_err("read", &seg.path))?;
                let (len, crc, index) = split_header(&header);
                let next = pos.saturating_add(HEADER).saturating_add(u64::from(len));
                if len as usize > MAX_ENTRY_BYTES || next > end {
                    return Err(corrupt(
                        seg,
                        format!("the frame at byte {pos} is cut short"),
                    ));
                }
                payload.resize(len as usize, 0);
                reader
                    .read_exact(&mut payload)
                    .map_err(io_err("read", &seg.path))?;
                if index != expected {
                    return Err(corrupt(
                        seg,
                        format!("at byte {pos} expected entry {expected} but found entry {index}"),
                    ));
                }
                if frame_crc(index, &payload) != crc {
                    return Err(corrupt(
                        seg,
                        format!("entry {index} at byte {pos} fails its checksum"),
                    ));
                }
                expected += 1;
                pos = next;
            }
        }
        if expected != trusted {
            return Err(StoreError::Corrupt(format!(
                "the checkpoint covers {trusted} entries but the segments before it hold {expected}: the ledger is damaged"
            )));
        }
        Ok(())
    }

    /// The segment and byte just after entry `last`, if the derived offset really leads to it.
    fn resume_after(&self, last: u64) -> Option<(usize, u64)> {
        let seg_no = self.segment_of(last).ok()?;
        let off = self.offset_of(last).ok()?;
        let seg = self.segments.get(seg_no)?;
        match read_frame_at(&seg.file, off, seg.len) {
            Frame::Ok { index, next, .. } if index == last => Some((seg_no, next)),
            _ => None,
        }
    }

    /// Writes the offsets and nodes held in memory (`tail_offsets`, `tail_nodes`) to the
    /// derived files, one write each, and empties them. Left as they were if a write fails.
    fn flush_derived(&mut self) -> Result<(), StoreError> {
        if self.tail_offsets.is_empty() && self.tail_nodes.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.tail_offsets.len() * 8);
        for o in &self.tail_offsets {
            buf.extend_from_slice(&o.to_le_bytes());
        }
        self.index
            .write_all_at(&buf, self.on_disk * 8)
            .map_err(io_err("write", &self.dir.join("index.bin")))?;
        let mut buf = Vec::with_capacity(self.tail_nodes.len() * 32);
        for n in &self.tail_nodes {
            buf.extend_from_slice(n);
        }
        self.tree
            .write_all_at(&buf, nodes_for_size(self.on_disk) * 32)
            .map_err(io_err("write", &self.dir.join("tree.bin")))?;
        self.tail_offsets.clear();
        self.tail_nodes.clear();
        self.on_disk = self.size;
        Ok(())
    }

    /// Which segment holds `index`.
    fn segment_of(&self, index: u64) -> Result<usize, StoreError> {
        let n = self.segments.partition_point(|s| s.first <= index);
        n.checked_sub(1)
            .ok_or_else(|| StoreError::Corrupt(format!("no segment holds entry {index}")))
    }

    fn offset_of(&self, index: u64) -> Result<u64, StoreError> {
        if index >= self.on_disk {
            let i = usize::try_from(index - self.on_disk).unwrap_or(usize::MAX);
            return self
                .tail_offsets
                .get(i)
                .copied()
                .ok_or(StoreError::OutOfRange {
                    index,
                    size: self.size,
                });
        }
        let mut b = [0u8; 8];
        self.index
            .read_exact_at(&mut b, index * 8)
            .map_err(io_err("read", &self.dir.join("index.bin")))?;
        Ok(u64::from_le_bytes(b))
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: StoreError) -> StoreError {
        // INVARIANT (fail-closed): remember the failure so nothing later is acknowledged.
        self.failed = Some(e.to_string());
        e
    }

    fn roll_segment(&mut self) -> Result<(), StoreError> {
        // The closed segment's unsynced tail must be durable before anything lands after it, so
        // that what a power loss cuts stays a tail of the log.
        self.sync_last()?;
        // INVARIANT (only the last segment has a zero tail): the closed one ends with its last
        // frame, durably, before the next exists.
        if let Some(seg) = self.segments.last_mut() {
            if seg.allocated > seg.len {
                seg.file
                    .set_len(seg.len)
                    .map_err(io_err("truncate", &seg.path))?;
                seg.file.sync_all().map_err(io_err("sync", &seg.path))?;
                seg.allocated = seg.len;
            }
        }
        let path = self.dir.join(segment_name(self.size));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all_at(MAGIC, 0)
            .map_err(io_err("write", &path))?;
        file.sync_data().map_err(io_err("sync", &path))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first: self.size,
            path,
            file,
            len: MAGIC.len() as u64,
            allocated: MAGIC.len() as u64,
        });
        Ok(())
    }

    /// Syncs the last segment if it holds unsynced writes.
    fn sync_last(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        if let Some(seg) = self.segments.last() {
            seg.file
                .sync_data()
                .map_err(io_err("fdatasync", &seg.path))?;
        }
        self.unsynced = false;
        Ok(())
    }

    fn append_inner(&mut self, entries: &[Vec<u8>], sync: bool) -> Result<Appended, StoreError> {
        let mut frames = Vec::with_capacity(entries.iter().map(|e| e.len() + 16).sum());
        for (i, e) in entries.iter().enumerate() {
            let len = u32::try_from(e.len())
                .ok()
                .filter(|&l| l as usize <= MAX_ENTRY_BYTES)
                .ok_or_else(|| {
                    StoreError::Rejected(format!("entry of {} bytes is too long", e.len()))
                })?;
            push_frame(&mut frames, self.size + i as u64, len, e);
        }
        let needs_roll = match self.segments.last() {
            None => true,
            Some(s) => {
                s.len > MAGIC.len() as u64 && s.len + frames.len() as u64 > self.segment_limit
            }
        };
        if needs_roll {
            self.roll_segment().map_err(|e| self.fail(e))?;
        }
        let Some(seg) = self.segments.last_mut() else {
            return Err(StoreError::Corrupt("no segment to write".into()));
        };
        let start = seg.len;
        let end = start + frames.len() as u64;
        if end > seg.allocated {
            // Zeros ahead of the frames, within the segment's limit: the syncs that follow
            // write data into blocks the file has (the first of them also its new length).
            let upto = end
                .saturating_add(PREALLOCATE)
                .min(self.segment_limit.max(end));
            let zeros = vec![0u8; usize::try_from(upto - seg.allocated).unwrap_or(0)];
            if let Err(e) = seg
                .file
                .write_all_at(&zeros, seg.allocated)
                .map_err(io_err("preallocate", &seg.path))
            {
                return Err(self.fail(e));
            }
            seg.allocated = upto;
        }
        let res = seg
            .file
            .write_all_at(&frames, start)
            .map_err(io_err("write", &seg.path))
            .and_then(|()| {
                if sync {
                    seg.file.sync_data().map_err(io_err("fdatasync", &seg.path))
                } else {
                    Ok(())
                }
            });
        if let Err(e) = res {
            return Err(self.fail(e));
        }
        seg.len = start + frames.len() as u64;
        self.unsynced = !sync;

        let first = self.size;
        let mut pos = start;
        for e in entries {
            self.tail_offsets.push(pos);
            pos += HEADER + e.len() as u64;
            self.frontier.push(leaf_hash(e), &mut self.tail_nodes);
        }
        self.size += entries.len() as u64;
        if self.tail_offsets.len() >= DERIVED_BATCH {
            self.flush_derived().map_err(|e| self.fail(e))?;
        }
        Ok(Appended {
            first,
            size: self.size,
            root: self.frontier.root(),
        })
    }
}

impl LedgerStore for FileStore {
    fn append(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        self.check_usable()?;
        if self.mode == Mode::ReadOnly {
            return Err(StoreError::Rejected(
                "the ledger was opened read-only".into(),
            ));
        }
        if entries.is_empty() {
            return Ok(Appended {
                first: self.size,
                size: self.size,
                root: self.frontier.root(),
            });
        }
        self.append_inner(entries, true)
    }

    fn append_written(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        self.check_usable()?;
        if self.mode == Mode::ReadOnly {
            return Err(StoreError::Rejected(
                "the ledger was opened read-only".into(),
            ));
        }
        self.append_inner(entries, false)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        // INVARIANT (fail-closed): a failed sync may have lost acknowledged writes; nothing
        // after it is acknowledged.
        self.sync_last().map_err(|e| self.fail(e))
    }

    fn prepare_checkpoint(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        // INVARIANT (recovery trusts checkpoints): the derived files reach every entry a
        // checkpoint asked for after this may cover; the checkpointer syncs them before it
        // writes the checkpoint.
        self.flush_derived().map_err(|e| self.fail(e))
    }

    fn size(&mut self) -> Result<u64, StoreError> {
        self.check_usable()?;
        Ok(self.size)
    }

    fn scan(&mut self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        self.check_usable()?;
        let to = to.min(self.size);
        if from >= to {
            return Ok(());
        }
        let mut seg_no = self.segment_of(from)?;
        let mut pos = self.offset_of(from)?;
        let mut index = from;
        while index < to {
            let seg = self
                .segments
                .get(seg_no)
                .ok_or_else(|| StoreError::Corrupt(format!("entry {index} has no segment")))?;
            let mut reader = BufReader::with_capacity(1 << 20, &seg.file);
            std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(pos))
                .map_err(io_err("seek", &seg.path))?;
            let mut payload = Vec::new();
            while index < to && pos < seg.len {
                let mut header = [0u8; 16];
                reader
                    .read_exact(&mut header)
                    .map_err(io_err("read", &seg.path))?;
                let (len, crc, stored_index) = split_header(&header);
                if len as usize > MAX_ENTRY_BYTES || pos + HEADER + u64::from(len) > seg.len {
                    return Err(StoreError::Corrupt(format!(
                        "entry {index}: the frame at byte {pos} of {} has a bad length",
                        seg.path.display()
                    )));
                }
                payload.resize(len as usize, 0);
                reader
                    .read_exact(&mut payload)
                    .map_err(io_err("read", &seg.path))?;
                if stored_index != index {
                    return Err(StoreError::Corrupt(format!(
                        "entry {index}: the frame at byte {pos} of {} says it is entry {stored_index}",
                        seg.path.display()
                    )));
                }
                if frame_crc(index, &payload) != crc {
                    return Err(StoreError::Corrupt(format!(
                        "entry {index}: the frame at byte {pos} of {} fails its checksum",
                        seg.path.display()
                    )));
                }
                visit(index, &payload)?;
                index += 1;
                pos += HEADER + u64::from(len);
            }
            seg_no += 1;
            pos = MAGIC.len() as u64;
        }
        Ok(())
    }

    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let disk_nodes = nodes_for_size(self.on_disk);
        let total = nodes_for_size(self.size);
        let mut out = Vec::with_capacity(ids.len());
        let mut i = 0usize;
        while let Some(first) = ids.get(i) {
            let p = first.post_order_position();
            if p >= total {
                return Err(StoreError::OutOfRange {
                    index: (first.index + 1) << first.level,
                    size: self.size,
                });
            }
            if p >= disk_nodes {
                let k = usize::try_from(p - disk_nodes).unwrap_or(usize::MAX);
                out.push(*self.tail_nodes.get(k).ok_or(StoreError::OutOfRange {
                    index: p,
                    size: self.size,
                })?);
                i += 1;
                continue;
            }
            // Coalesce a run of consecutive on-disk positions into one read.
            let mut run = 1usize;
            while let Some(next) = ids.get(i + run) {
                let q = next.post_order_position();
                if q != p + run as u64 || q >= disk_nodes {
                    break;
                }
                run += 1;
            }
            let mut buf = vec![0u8; run * 32];
            self.tree
                .read_exact_at(&mut buf, p * 32)
                .map_err(io_err("read", &self.dir.join("tree.bin")))?;
            for chunk in buf.chunks_exact(32) {
                let mut h = [0u8; 32];
                h.copy_from_slice(chunk);
                out.push(h);
            }
            i += run;
        }
        Ok(out)
    }

    fn checkpointer(&mut self) -> Result<Box<dyn Checkpointer>, StoreError> {
        self.check_usable()?;
        if self.mode == Mode::ReadOnly {
            return Err(StoreError::Rejected(
                "the ledger was opened read-only".into(),
            ));
        }
        let clone = |f: &File, name: &str| {
            f.try_clone()
                .map_err(io_err("duplicate handle", &self.dir.join(name)))
        };
        let path = self.dir.join(CHECKPOINT_LOG);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        sync_dir(&self.dir)?;
        Ok(Box::new(FileCheckpointer {
            dir: self.dir.clone(),
            index: clone(&self.index, "index.bin")?,
            tree: clone(&self.tree, "tree.bin")?,
            log,
            failed: None,
        }))
    }

    fn latest_checkpoint(&mut self) -> Result<Option<String>, StoreError> {
        if self.mode == Mode::ReadOnly {
            // A snapshot: the checkpoint that matches the entries read at open.
            return Ok(self.snapshot.clone());
        }
        Ok(read_latest_checkpoint(&self.dir, false)?.map(|(note, _)| note))
    }

    fn describe(&self) -> String {
        format!("embedded ledger in {}", self.dir.display())
    }
}

/// Writes checkpoints for a [`FileStore`] from the ledger's checkpoint thread.
#[derive(Debug)]
struct FileCheckpointer {
    dir: PathBuf,
    index: File,
    tree: File,
    log: File,
    // INVARIANT (fail-closed): after a failed sync the page cache may have dropped derived
    // pages; no later checkpoint may vouch for them ("fsyncgate"), so the first failure sticks.
    failed: Option<String>,
}

impl Checkpointer for FileCheckpointer {
    fn put(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        if note.len() > MAX_NOTE as usize {
            return Err(StoreError::Rejected("checkpoint note too long".into()));
        }
        // INVARIANT (recovery trusts checkpoints): the derived files must be durable up to the
        // checkpoint's size before it vouches for them. The writer wrote them before asking for
        // this checkpoint, so syncing now covers them.
        if let Some(why) = &self.failed {
            return Err(StoreError::Failed(why.clone()));
        }
        let res = self.put_inner(size, note);
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }
}

impl FileCheckpointer {
    fn put_inner(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        let p = self.dir.join("index.bin");
        self.index.sync_data().map_err(io_err("fdatasync", &p))?;
        let p = self.dir.join("tree.bin");
        self.tree.sync_data().map_err(io_err("fdatasync", &p))?;
        // One append and one sync: cheaper than replacing a file (no rename, no directory sync),
        // and it keeps every checkpoint for auditors.
        let p = self.dir.join(CHECKPOINT_LOG);
        let before = self.log.metadata().map_err(io_err("stat", &p))?.len();
        let res = self
            .log
            .write_all(&checkpoint_frame(size, note))
            .map_err(io_err("write", &p))
            .and_then(|()| self.log.sync_data().map_err(io_err("fdatasync", &p)));
        if res.is_err() {
            // Leave no partial frame for later frames to be appended after.
            let _ = self.log.set_len(before);
        }
        res
    }
}

/// What [`decode_segment`] found in a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Entries read, with the index each frame carries.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Bytes that hold the magic and whole, valid frames.
    pub valid_len: usize,
    /// Why reading stopped before the end, if it did.
    pub stopped: Option<String>,
}

/// Decodes a whole segment held in memory, the way recovery reads one from disk: the magic,
/// then frames until the end or the first frame that is cut short or fails its checksum. Used
/// by fuzzing and by tools; never panics on any input.
#[must_use]
pub fn decode_segment(bytes: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan {
        entries: Vec::new(),
        valid_len: 0,
        stopped: None,
    };
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        scan.stopped = Some("the segment does not start with the magic".into());
        return scan;
    };
    scan.valid_len = MAGIC.len();
    let mut rest = rest;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            // The preallocated tail of the last segment (no frame's header is all zeros).
            return scan;
        }
        let Some((header, body)) = rest.split_first_chunk::<16>() else {
            scan.stopped = Some(format!(
                "a frame header at byte {} is cut short",
                scan.valid_len
            ));
            return scan;
        };
        let (len, crc, index) = split_header(header);
        let len = len as usize;
        if len > MAX_ENTRY_BYTES {
            scan.stopped = Some(format!(
                "the frame at byte {} claims {len} bytes",
                scan.valid_len
            ));
            return scan;
        }
        let Some((payload, after)) = body.split_at_checked(len) else {
            scan.stopped = Some(format!("the frame at byte {} is cut short", scan.valid_len));
            return scan;
        };
        if frame_crc(index, payload) != crc {
            scan.stopped = Some(format!(
                "the frame at byte {} (entry {index}) fails its checksum",
                scan.valid_len
            ));
            return scan;
        }
        scan.entries.push((index, payload.to_vec()));
        scan.valid_len += 16 + len;
        rest = after;
    }
    scan
}

/// Encodes one frame (for tests and tools that build segments).
#[must_use]
pub fn encode_frame(index: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    push_frame(&mut out, index, len, payload);
    out
}

fn push_frame(out: &mut Vec<u8>, index: u64, len: u32, payload: &[u8]) {
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The 8 bytes every segment starts with.
pub const SEGMENT_MAGIC: &[u8; 8] = MAGIC;
