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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_differ_by_kind_and_value() {
        assert_ne!(mark(Kind::Word, "alice"), mark(Kind::Email, "alice"));
        assert_ne!(mark(Kind::Word, "alice"), mark(Kind::Word, "alicf"));
        assert_eq!(mark(Kind::Url, "a.com"), mark(Kind::Url, "a.com"));
    }
}
