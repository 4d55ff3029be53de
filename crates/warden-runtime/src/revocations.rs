//! The embedded revocation store: `DATA/revoked`, one `agent <id>` or `credential <id>` line
//! per revocation, appended with one write and synced (a reader never takes half a line for a
//! whole one). `warden agents revoke` appends to it; a running gateway reads what was appended
//! since it last looked on every request (a file-size check when nothing changed).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use warden_identity::{Revocation, RevocationError, RevocationStore, RevokedKind};

/// `DATA/revoked`.
#[derive(Debug, Clone)]
pub struct FileRevocations {
    path: PathBuf,
}

impl FileRevocations {
    /// The store of the data directory `data`.
    #[must_use]
    pub fn new(data: &Path) -> FileRevocations {
        FileRevocations {
            path: data.join("revoked"),
        }
    }

    fn err(&self, what: impl ToString) -> RevocationError {
        RevocationError::Store {
            store: self.path.display().to_string(),
            what: what.to_string(),
        }
    }
}

impl RevocationStore for FileRevocations {
    fn revoke(&self, r: &Revocation) -> Result<(), RevocationError> {
        let r = Revocation::new(r.kind, &r.id)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        // One write per record, so a reader never sees half a line as a whole one.
        f.write_all(format!("{} {}\n", r.kind.as_str(), r.id).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| self.err(e))
    }

    fn since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), RevocationError> {
        let len = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(self.err(e)),
        };
        if len == cursor {
            return Ok((Vec::new(), cursor));
        }
        // Replaced or truncated: read it all again (revoking twice is harmless).
        let cursor = if len < cursor { 0 } else { cursor };
        let bytes = fs::read(&self.path).map_err(|e| self.err(e))?;
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let new = bytes.get(start..).unwrap_or_default();
        // Only whole lines: a line still being written is read on a later look.
        let complete = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let text = std::str::from_utf8(new.get(..complete).unwrap_or_default())
            .map_err(|_| self.err("is not UTF-8"))?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let parsed = line
                .split_once(' ')
                .and_then(|(kind, id)| Some((RevokedKind::parse(kind)?, id)))
                .and_then(|(kind, id)| Revocation::new(kind, id).ok());
            match parsed {
                Some(r) => out.push(r),
                None => return Err(self.err(format!("bad line {line:?}"))),
            }
        }
        Ok((out, cursor + complete as u64))
    }
}
