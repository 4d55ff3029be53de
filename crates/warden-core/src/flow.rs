//! Information flow: what a session has read, kept as labels the Governor weighs before it
//! decides the session's next call (issue 23, INV-013).
//!
//! A session's flow holds no text. Every word and identifier of the task and of each output is
//! kept as a [`Mark`] (a truncated SHA-256 of its kind and normalised form), in one of three
//! sets: the task's, the trusted outputs', and the untrusted outputs' (with the output that
//! first carried it). `warden-policy::flow` scans text into marks and judges a call's
//! arguments against them; this module is the data and the port that keeps it.

use crate::state::StateError;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// A word or identifier, hashed: the first 16 bytes of SHA-256 over its kind and normalised
/// form. Keyless but collision-resistant: a value an attacker chooses cannot be made to share
/// a mark with one the task holds.
pub type Mark = u128;

/// What a mark stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A word: a run of letters, digits and `_`, lowercased, at least 3 characters.
    Word,
    /// An e-mail address, lowercased.
    Email,
    /// A URL or domain: lowercased, without scheme, `www.` or trailing `/`.
    Url,
    /// The host of a URL (as [`Kind::Url`], without the path).
    Host,
    /// An IBAN, uppercased, without spaces.
    Iban,
    /// A phone or account number: its digits, at least 7.
    Number,
}

impl Kind {
    /// The name decision records use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Word => "word",
            Kind::Email => "email",
            Kind::Url => "url",
            Kind::Host => "host",
            Kind::Iban => "iban",
            Kind::Number => "number",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Kind::Word => 1,
            Kind::Email => 2,
            Kind::Url => 3,
            Kind::Host => 4,
            Kind::Iban => 5,
            Kind::Number => 6,
        }
    }

    /// Whether it names something a call can reach (everything but a word).
    #[must_use]
    pub fn is_identifier(self) -> bool {
        self != Kind::Word
    }
}

/// The mark of `normalised` as a `kind`.
#[must_use]
pub fn mark(kind: Kind, normalised: &str) -> Mark {
    let mut h = Sha256::new();
    h.update([kind.tag()]);
    h.update(normalised.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(d.get(..16).unwrap_or(&[0u8; 16]));
    u128::from_be_bytes(b)
}

/// One output the session has read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The tool that produced it.
    pub tool: String,
    /// Its place among the session's outputs (0 for the first).
    pub index: u32,
    /// Every argument of the call that produced it came from trusted input (the task, a
    /// trusted output, a known destination): the task pointed the agent at this source.
    pub named: bool,
    /// The identifiers of each kind it holds exactly one of (a value looked up in it is
    /// unambiguous only then).
    pub unique: Vec<(Kind, Mark)>,
}

/// The session's task, as recorded: its hash and length (the text is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `sha256:<hex>` of the text.
    pub hash: String,
    /// Its length in bytes.
    pub len: usize,
}

/// What one session has read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFlow {
    /// The task declared for the session, if any.
    pub task: Option<Task>,
    /// Marks of the task's words and identifiers.
    pub task_marks: HashSet<Mark>,
    /// Marks seen in trusted outputs (or trusted fields).
    pub trusted: HashSet<Mark>,
    /// Marks seen in untrusted outputs, with the index of the first source that carried each.
    pub untrusted: HashMap<Mark, u32>,
    /// The outputs read, in order (capped with the marks).
    pub sources: Vec<Source>,
    /// The highest classification read, as a rank (0 `public` … 3 `restricted`).
    pub classification: u8,
    /// Whether any untrusted output (or field) has been read.
    pub read_untrusted: bool,
    /// Outputs read.
    pub outputs: u32,
    /// The bound was reached: outputs past it were not recorded, so anything not known to be
    /// clean is judged as if read from untrusted output (stricter, never looser).
    pub saturated: bool,
}

impl SessionFlow {
    /// The flow of a session whose labels were forgotten (idle too long): saturated, as if
    /// everything it read was untrusted, and past its first output (its task cannot be
    /// declared again).
    #[must_use]
    pub fn forgotten() -> SessionFlow {
        SessionFlow {
            saturated: true,
            read_untrusted: true,
            outputs: 1,
            ..SessionFlow::default()
        }
    }

    /// Marks held in all (what the bound counts).
    #[must_use]
    pub fn marks(&self) -> usize {
        self.task_marks.len() + self.trusted.len() + self.untrusted.len()
    }
}

/// Why a session's flow could not be changed as asked.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The task is fixed once the session has read any output, or once declared.
    #[error("the session's task is fixed: {0}")]
    TaskFixed(&'static str),
    /// The store did not answer.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where sessions' flows are kept (the state port for labels): in process, or shared by a
/// fleet. Every change is one atomic read-modify-write, so two outputs of one session read at
/// once both count.
pub trait FlowStore: Send + Sync {
    /// The flow of `session_key` (`agent/session`), or an empty one. Shared, not copied: a
    /// decision reads it once.
    ///
    /// # Errors
    /// The store did not answer (the caller fails closed).
    fn load(&self, session_key: &str) -> Result<std::sync::Arc<SessionFlow>, StateError>;

    /// Applies `change` to the flow of `session_key` atomically. A `change` that refuses must
    /// do so before it changes anything.
    ///
    /// # Errors
    /// The store did not answer, or `change` refused.
    fn update(
        &self,
        session_key: &str,
        change: &mut dyn FnMut(&mut SessionFlow) -> Result<(), FlowError>,
    ) -> Result<(), FlowError>;
}

/// Why stored bytes are not a session flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored session flow is damaged: {0}")]
pub struct DecodeError(&'static str);

/// The format version [`SessionFlow::to_bytes`] writes.
const FORMAT: u8 = 1;

impl Kind {
    fn from_tag(t: u8) -> Option<Kind> {
        Some(match t {
            1 => Kind::Word,
            2 => Kind::Email,
            3 => Kind::Url,
            4 => Kind::Host,
            5 => Kind::Iban,
            6 => Kind::Number,
            _ => return None,
        })
    }
}

impl SessionFlow {
    /// The flow as bytes, for a store shared by a fleet (a version byte, then each field,
    /// lengths as 4-byte big-endian counts).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.marks() * 20 + self.sources.len() * 48);
        b.push(FORMAT);
        match &self.task {
            Some(t) => {
                b.push(1);
                put_str(&mut b, &t.hash);
                b.extend_from_slice(&(t.len as u64).to_be_bytes());
            }
            None => b.push(0),
        }
        b.push(self.classification);
        b.push(u8::from(self.read_untrusted));
        b.push(u8::from(self.saturated));
        b.extend_from_slice(&self.outputs.to_be_bytes());
        put_len(&mut b, self.task_marks.len());
        self.task_marks
            .iter()
            .for_each(|m| b.extend_from_slice(&m.to_be_bytes()));
        put_len(&mut b, self.trusted.len());
        self.trusted
            .iter()
            .for_each(|m| b.extend_from_slice(&m.to_be_bytes()));
        put_len(&mut b, self.untrusted.len());
        for (m, i) in &self.untrusted {
            b.extend_from_slice(&m.to_be_bytes());
            b.extend_from_slice(&i.to_be_bytes());
        }
        put_len(&mut b, self.sources.len());
        for s in &self.sources {
            put_str(&mut b, &s.tool);
            b.extend_from_slice(&s.index.to_be_bytes());
            b.push(u8::from(s.named));
            put_len(&mut b, s.unique.len());
            for (k, m) in &s.unique {
                b.push(k.tag());
                b.extend_from_slice(&m.to_be_bytes());
            }
        }
        b
    }

    /// A flow from [`Self::to_bytes`]. Never panics; damaged or foreign bytes are an error.
    ///
    /// # Errors
    /// [`DecodeError`] naming what was wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<SessionFlow, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT {
            return Err(DecodeError("unknown format version"));
        }
        let task = match r.u8()? {
            0 => None,
            1 => Some(Task {
                hash: r.string()?,
                len: usize::try_from(r.u64()?).map_err(|_| DecodeError("task length"))?,
            }),
            _ => return Err(DecodeError("task flag")),
        };
        let classification = r.u8()?;
        let read_untrusted = r.bool()?;
        let saturated = r.bool()?;
        let outputs = r.u32()?;
        let n = r.len(16)?;
        let task_marks = (0..n).map(|_| r.u128()).collect::<Result<_, _>>()?;
        let n = r.len(16)?;
        let trusted = (0..n).map(|_| r.u128()).collect::<Result<_, _>>()?;
        let n = r.len(20)?;
        let untrusted = (0..n)
            .map(|_| Ok((r.u128()?, r.u32()?)))
            .collect::<Result<_, DecodeError>>()?;
        let n = r.len(10)?;
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            let tool = r.string()?;
            let index = r.u32()?;
            let named = r.bool()?;
            let k = r.len(17)?;
            let unique = (0..k)
                .map(|_| {
                    let kind = Kind::from_tag(r.u8()?).ok_or(DecodeError("mark kind"))?;
                    Ok((kind, r.u128()?))
                })
                .collect::<Result<_, DecodeError>>()?;
            sources.push(Source {
                tool,
                index,
                named,
                unique,
            });
        }
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(SessionFlow {
            task,
            task_marks,
            trusted,
            untrusted,
            sources,
            classification,
            read_untrusted,
            outputs,
            saturated,
        })
    }
}

fn put_len(b: &mut Vec<u8>, n: usize) {
    b.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_len(b, s.len());
    b.extend_from_slice(s.as_bytes());
}

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.take::<1>()?))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("flag")),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take::<4>()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take::<8>()?))
    }

    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_be_bytes(self.take::<16>()?))
    }

    /// A count of items of at least `each` bytes: never more than the bytes left could hold.
    fn len(&mut self, each: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError("count"))?;
        if n.saturating_mul(each) > self.0.len() {
            return Err(DecodeError("count larger than the data"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len(1)?;
        let (s, rest) = self.0.split_at_checked(n).ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError("text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_round_trip_and_damage_is_an_error() {
        let mut f = SessionFlow {
            task: Some(Task {
                hash: "sha256:ab".into(),
                len: 12,
            }),
            classification: 2,
            read_untrusted: true,
            outputs: 3,
            ..SessionFlow::default()
        };
        f.task_marks.insert(mark(Kind::Word, "pay"));
        f.trusted.insert(mark(Kind::Email, "a@b.example"));
        f.untrusted
            .insert(mark(Kind::Iban, "DE89370400440532013000"), 2);
        f.sources.push(Source {
            tool: "read_file".into(),
            index: 2,
            named: true,
            unique: vec![(Kind::Iban, mark(Kind::Iban, "DE89370400440532013000"))],
        });
        let b = f.to_bytes();
        assert_eq!(SessionFlow::from_bytes(&b), Ok(f));
        for n in 0..b.len() {
            assert!(
                SessionFlow::from_bytes(&b[..n]).is_err(),
                "truncated at {n}"
            );
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(SessionFlow::from_bytes(&extra).is_err());
        assert!(SessionFlow::from_bytes(b"garbage").is_err());
        let mut huge = vec![FORMAT, 0, 0, 0, 0];
        huge.extend_from_slice(&0u32.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            SessionFlow::from_bytes(&huge).is_err(),
            "a count beyond the data"
        );
    }

    #[test]
    fn marks_differ_by_kind_and_value() {
        assert_ne!(mark(Kind::Word, "alice"), mark(Kind::Email, "alice"));
        assert_ne!(mark(Kind::Word, "alice"), mark(Kind::Word, "alicf"));
        assert_eq!(mark(Kind::Url, "a.com"), mark(Kind::Url, "a.com"));
    }
}
