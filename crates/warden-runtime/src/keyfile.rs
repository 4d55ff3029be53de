//! Key files in the data directory: how every secret (private keys, MAC keys, the admin token)
//! is written and read, and how public key files are written.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A key file that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct KeyFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

/// The error for `path`.
pub fn err(path: &Path, what: impl ToString) -> KeyFileError {
    KeyFileError {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

fn replace(path: &Path, contents: &[u8], secret: bool) -> Result<(), KeyFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    if secret {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))?;
    }
    // Beside it under its own whole name (`governor.key.tmp`, `governor.pub.tmp`): two files
    // of one stem never share a temporary file.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    // INVARIANT (keys never exposed): a secret is created 0600 in one step; written beside and
    // renamed into place, so a crash never leaves an empty or half-written key file.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| err(&tmp, e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

/// Writes a secret file: 0600 in a 0700 directory, durably, replacing any previous one.
///
/// # Errors
/// [`KeyFileError`].
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    replace(path, contents, true)
}

/// Writes a public file (a verifier key) durably, replacing any previous one.
///
/// # Errors
/// [`KeyFileError`].
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    replace(path, contents, false)
}

/// Reads a secret file, refusing one that others can read.
///
/// # Errors
/// [`KeyFileError`].
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    use std::io::Read as _;
    // The mode is checked on the file opened, then read from it: the file checked is the file
    // read, whatever the path names meanwhile.
    let mut file = fs::File::open(path).map_err(|e| err(path, e))?;
    let mode = file
        .metadata()
        .map_err(|e| err(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(err(
            path,
            format!(
                "is readable by others (mode {:o}); run `chmod 600` on it",
                mode & 0o777
            ),
        ));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| err(path, e))?;
    Ok(text)
}

/// 32 bytes as 64 hex digits and a newline (how seeds and MAC keys are stored).
#[must_use]
pub fn hex32(bytes: &[u8; 32]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(65));
    warden_core::canonical::push_hex(&mut s, bytes);
    s.push('\n');
    s
}

/// Parses what [`hex32`] wrote.
///
/// # Errors
/// [`KeyFileError`] naming `path` if it is not 64 hex digits.
pub fn parse_hex32(text: &str, path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let t = text.trim();
    let mut out = Zeroizing::new([0u8; 32]);
    if t.len() != 64 {
        return Err(err(path, "must hold 64 hex digits"));
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = t
            .get(2 * i..2 * i + 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| err(path, "must hold 64 hex digits"))?;
    }
    Ok(out)
}

/// 32 fresh random bytes.
///
/// # Errors
/// [`KeyFileError`] naming `for_path` if the system has no randomness.
pub fn random32(for_path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let mut out = Zeroizing::new([0u8; 32]);
    getrandom::fill(out.as_mut_slice()).map_err(|e| err(for_path, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret is written 0600 and read back; one others can read is refused with its mode
    /// and the fix; a key and its public half of one stem are written side by side, each whole,
    /// leaving no temporary file.
    #[test]
    fn secrets_are_written_private_and_refused_once_others_can_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = (
            dir.path().join("k/governor.key"),
            dir.path().join("k/governor.pub"),
        );
        write_secret(&key, b"secret\n").unwrap();
        write_public(&public, b"public\n").unwrap();
        assert_eq!(read_secret(&key).unwrap().as_str(), "secret\n");
        assert_eq!(fs::read_to_string(&public).unwrap(), "public\n");
        let names: Vec<String> = fs::read_dir(dir.path().join("k"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let refused = read_secret(&key).unwrap_err().to_string();
        assert!(
            refused.contains("readable by others (mode 640)") && refused.contains("chmod 600"),
            "{refused}"
        );
    }
}
