//! Information-flow control (issue 23, INV-013): what a session has read decides what it may do
//! next.
//!
//! Three steps, all pure:
//! - [`scan`] turns text into marks: words (runs of letters, digits and `_` of 3 characters or
//!   more, lowercased) and identifiers (e-mail addresses, URLs and their hosts, IBANs, phone and
//!   account numbers), each normalised ([`docs/ifc.md`](../../../docs/ifc.md) lists the rules);
//! - [`declare_task`] and [`label`] record the task and each output a session reads into its
//!   [`SessionFlow`], by the labels the manifest gives the tool's output (and its fields);
//! - [`assess`] judges a proposed call's arguments against the flow: where each controlling
//!   value (and each identifier in the free text of a tool with effects) came from.
//!
//! The Governor turns the assessment into rules (`ifc.tainted`, `ifc.unknown_destination`,
//! `ifc.classification`) and the manifest's `flow` settings into an escalation or a deny.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use warden_core::flow::{mark, Kind, Mark, SessionFlow, Source, Task};
use warden_manifest::manifest::{FieldLabel, Tool};
use warden_manifest::raw::{Classification, OutputTrust};

/// The longest task kept (bytes); a longer one is refused.
pub const MAX_TASK_BYTES: usize = 64 * 1024;
/// The most outputs a session's flow lists as sources; later ones still add marks.
const MAX_SOURCES: usize = 1024;
/// The shortest word that counts as evidence.
const MIN_WORD: usize = 3;
/// The fewest digits a phone or account number has.
const MIN_DIGITS: usize = 7;

/// Calls `f` with each word and identifier of `text`, in order (repeats included).
pub fn scan(text: &str, f: &mut dyn FnMut(Kind, Mark)) {
    let chunks: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || !(c.is_alphanumeric() || is_ident_punct(c)))
        .map(|c| c.trim_matches(|c: char| matches!(c, '.' | ':' | '?' | '#' | '=' | '&' | '-')))
        .filter(|c| !c.is_empty())
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        words(chunk, f);
        identifier(chunk, f);
        // `www.example.com.Then`: a sentence that ends without a space after the address.
        if let Some(prefix) = sentence_break(chunk).and_then(|end| chunk.get(..end)) {
            let lower = prefix.to_ascii_lowercase();
            let bare = lower.split_once("://").map_or(lower.as_str(), |(_, r)| r);
            let host = bare.split(['/', '?', '#']).next().unwrap_or(bare);
            if host_like(host.strip_prefix("www.").unwrap_or(host)) {
                identifier(prefix, f);
            }
        }
        grouped(&chunks, i, f);
    }
}

/// Where a `.` followed by an uppercase letter ends a sentence inside a chunk.
fn sentence_break(chunk: &str) -> Option<usize> {
    let b = chunk.as_bytes();
    b.windows(2)
        .position(|w| w.first() == Some(&b'.') && w.get(1).is_some_and(u8::is_ascii_uppercase))
        .filter(|p| *p > 0)
}

/// Punctuation that may sit inside an identifier.
fn is_ident_punct(c: char) -> bool {
    matches!(
        c,
        '.' | '_' | '%' | '+' | '-' | '@' | '/' | ':' | '#' | '?' | '=' | '&' | '~'
    )
}

fn words(chunk: &str, f: &mut dyn FnMut(Kind, Mark)) {
    for w in chunk.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if w.chars().count() >= MIN_WORD {
            f(Kind::Word, mark(Kind::Word, &w.to_lowercase()));
        }
    }
}

/// The identifier one chunk is, if any: an e-mail address, a URL (any scheme, with or without
/// `//`, userinfo dropped: `https://trusted.example@evil.example/` is `evil.example`), a bare
/// domain or IPv4 address, an IBAN, a phone or account number; else, for `label:value`,
/// `label#value` and `label=value`, whatever the value is. Returns whether it found one.
fn identifier(chunk: &str, f: &mut dyn FnMut(Kind, Mark)) -> bool {
    if whole_identifier(chunk, f) {
        return true;
    }
    // `IBAN:DE89…`, `acct#1234567`, `to=x@y.example`: the value after the label (one level).
    match chunk.split_once([':', '#', '=']) {
        Some((_, value)) if !value.is_empty() => whole_identifier(value, f),
        _ => false,
    }
}

/// [`identifier`] for the chunk as a whole.
fn whole_identifier(chunk: &str, f: &mut dyn FnMut(Kind, Mark)) -> bool {
    let lower = chunk.to_ascii_lowercase();
    let bare = lower.strip_prefix("mailto:").unwrap_or(&lower);
    if let Some((local, domain)) = bare.split_once('@') {
        if !local.is_empty()
            && !domain.contains('@')
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'))
            && host_like(domain)
        {
            f(Kind::Email, mark(Kind::Email, bare));
            return true;
        }
    }
    if url(bare, f) {
        return true;
    }
    let upper = chunk.to_ascii_uppercase();
    if iban_like(&upper) {
        f(Kind::Iban, mark(Kind::Iban, &upper));
        return true;
    }
    if let Some(d) = number_digits(chunk) {
        if d.len() >= MIN_DIGITS {
            f(Kind::Number, mark(Kind::Number, &d));
            return true;
        }
    }
    false
}

/// A URL or bare host in `s` (lowercased): reports its host and its URL marks.
fn url(s: &str, f: &mut dyn FnMut(Kind, Mark)) -> bool {
    // A scheme: letters, digits, `+ - .`, then `:`; `//` optional (`https:evil.example` is a URL).
    let scheme_end = s.find(':').filter(|&i| {
        i > 0
            && s.get(..i).is_some_and(|sc| {
                sc.starts_with(|c: char| c.is_ascii_alphabetic())
                    && sc
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            })
    });
    let (had_scheme, rest) = match scheme_end.and_then(|i| s.get(i + 1..)) {
        Some(r) => (true, r.trim_start_matches('/')),
        None => (false, s),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // Userinfo is never the destination: the host is after the last `@`.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.split_once(':').map_or(host, |(h, _)| h);
    let host = host.strip_prefix("www.").unwrap_or(host);
    if !(host_like(host) || ipv4(host)) {
        return false;
    }
    if !had_scheme && authority.contains('@') {
        return false;
    }
    let path = path.trim_end_matches('/');
    f(Kind::Host, mark(Kind::Host, host));
    f(Kind::Url, mark(Kind::Url, &[host, path].concat()));
    true
}

/// Four dot-separated numbers 0-255.
fn ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u8>().is_ok())
}

/// A domain name: dot-separated labels of letters, digits and `-`, the last alphabetic.
fn host_like(s: &str) -> bool {
    let mut labels = s.split('.');
    let Some(tld) = s.rsplit('.').next() else {
        return false;
    };
    s.contains('.')
        && tld.len() >= 2
        && tld.chars().all(|c| c.is_ascii_alphabetic())
        && labels.all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Two letters, two digits, then 11 to 30 letters or digits (uppercased, no spaces).
fn iban_like(s: &str) -> bool {
    let b = s.as_bytes();
    (15..=34).contains(&b.len())
        && b.iter().take(2).all(u8::is_ascii_uppercase)
        && b.iter().skip(2).take(2).all(u8::is_ascii_digit)
        && b.iter().all(u8::is_ascii_alphanumeric)
}

/// The digits of a chunk made only of digits and `+ - ( ) .`, if it is one.
fn number_digits(chunk: &str) -> Option<String> {
    if is_date(chunk)
        || !chunk.chars().any(|c| c.is_ascii_digit())
        || !chunk
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '(' | ')' | '.'))
    {
        return None;
    }
    Some(chunk.chars().filter(char::is_ascii_digit).collect())
}

/// `YYYY-MM-DD`: a date, not an account.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Identifiers written in groups (`DE89 3704 0044 …`, `+41 79 123 45 67`) starting at chunk
/// `i`: reports them and returns how many chunks they span (0 if none).
fn grouped(chunks: &[&str], i: usize, f: &mut dyn FnMut(Kind, Mark)) -> usize {
    let Some(first) = chunks.get(i) else {
        return 0;
    };
    let upper = first.to_ascii_uppercase();
    if upper.len() == 4 && iban_like(&format!("{upper}00000000000")) {
        let mut iban = upper;
        let mut n = 1;
        while let Some(next) = chunks.get(i + n) {
            // Groups of four; a shorter one only last, and with a digit (`… 00 by Friday`).
            let last = next.len() < 4 && next.chars().any(|c| c.is_ascii_digit());
            if !(next.len() == 4 || last)
                || !next.chars().all(|c| c.is_ascii_alphanumeric())
                || iban.len() >= 34
            {
                break;
            }
            iban.push_str(&next.to_ascii_uppercase());
            n += 1;
            if last {
                break;
            }
        }
        if n > 1 && iban_like(&iban) {
            f(Kind::Iban, mark(Kind::Iban, &iban));
            return n;
        }
    }
    let mut digits = String::new();
    let mut n = 0;
    // At most 8 groups: a run of numbers is not read as one again from each of its chunks.
    while let Some(d) = chunks
        .get(i + n)
        .filter(|_| n < 8)
        .and_then(|c| number_digits(c))
    {
        digits.push_str(&d);
        n += 1;
    }
    if n > 1 && digits.len() >= MIN_DIGITS {
        f(Kind::Number, mark(Kind::Number, &digits));
        return n;
    }
    0
}

/// The marks of `text`, deduplicated.
#[must_use]
pub fn marks_of(text: &str) -> HashSet<Mark> {
    let mut out = HashSet::new();
    scan(text, &mut |_, m| {
        out.insert(m);
    });
    out
}

/// The known destinations of each zone, as marks (computed once per manifest).
#[derive(Debug, Default)]
pub struct Destinations {
    by_zone: HashMap<String, HashSet<Mark>>,
}

impl Destinations {
    /// From the manifest's zones.
    #[must_use]
    pub fn new(zones: &std::collections::BTreeMap<String, Vec<String>>) -> Self {
        let by_zone = zones
            .iter()
            .map(|(z, ds)| {
                let mut set = HashSet::new();
                for d in ds {
                    set.extend(marks_of(d));
                }
                (z.clone(), set)
            })
            .collect();
        Destinations { by_zone }
    }

    /// The marks of `zone`'s destinations.
    #[must_use]
    pub fn of(&self, zone: &str) -> Option<&HashSet<Mark>> {
        self.by_zone.get(zone)
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// The task.
    Task,
    /// A known destination of the agent's zone.
    Known,
    /// A trusted output (or field).
    Trusted,
    /// An untrusted output the task pointed at, holding exactly one value of its kind, looked up
    /// for a subject that is itself clean (`lookup`).
    Lookup {
        /// The output's index.
        output: u32,
    },
    /// An untrusted output, and nothing cleaner.
    Tainted {
        /// The output that first carried it (`None`: the session's flow was full).
        output: Option<u32>,
    },
    /// Seen nowhere the session knows of.
    Unknown,
}

impl Provenance {
    /// The name decision records use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Task => "task",
            Provenance::Known => "known",
            Provenance::Trusted => "trusted",
            Provenance::Lookup { .. } => "lookup",
            Provenance::Tainted { .. } => "untrusted",
            Provenance::Unknown => "unknown",
        }
    }

    fn clean(self) -> bool {
        matches!(
            self,
            Provenance::Task | Provenance::Known | Provenance::Trusted
        )
    }
}

/// What [`assess`] found about one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgFinding {
    /// The argument.
    pub argument: String,
    /// Whether the manifest marks it controlling.
    pub controlling: bool,
    /// Where its value (or, in free text, the identifier below) came from.
    pub provenance: Provenance,
    /// The kind of identifier judged (`None`: the value's words).
    pub kind: Option<Kind>,
}

/// What the session's flow says about one proposed call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// One finding per judged argument (and per tainted identifier in free text).
    pub args: Vec<ArgFinding>,
    /// The session's classification is above the tool's `egress_level`.
    pub over_classified: bool,
}

impl Assessment {
    /// The first tainted finding.
    #[must_use]
    pub fn tainted(&self) -> Option<&ArgFinding> {
        self.args
            .iter()
            .find(|a| matches!(a.provenance, Provenance::Tainted { .. }))
    }

    /// The first controlling argument seen nowhere.
    #[must_use]
    pub fn unknown(&self) -> Option<&ArgFinding> {
        self.args
            .iter()
            .find(|a| a.controlling && a.provenance == Provenance::Unknown)
    }

    /// Names of the tainted arguments (for policies).
    #[must_use]
    pub fn tainted_args(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .args
            .iter()
            .filter(|a| matches!(a.provenance, Provenance::Tainted { .. }))
            .map(|a| a.argument.as_str())
            .collect();
        v.dedup();
        v
    }
}

/// What a value is judged by: its identifiers, grouped (a URL with its host), or its words. A
/// value judged by words must consist of them: one with a part under 3 characters, or with
/// punctuation an address would hold, can never be clean (`Alice-x` is not `Alice`).
fn groups(strings: &[&str]) -> Vec<(Kind, Vec<Mark>)> {
    let mut ids: Vec<(Kind, Vec<Mark>)> = Vec::new();
    let mut words = Vec::new();
    let mut opaque = false;
    for s in strings {
        let mut host: Option<Mark> = None;
        scan(s, &mut |k, m| match k {
            Kind::Word => words.push(m),
            Kind::Host => host = Some(m),
            Kind::Url => ids.push((Kind::Url, host.take().into_iter().chain([m]).collect())),
            k => ids.push((k, vec![m])),
        });
        opaque |= s.contains(['@', ':', '/'])
            || s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|t| !t.is_empty() && t.chars().count() < MIN_WORD);
    }
    if ids.is_empty() && !words.is_empty() {
        if opaque {
            words.push(mark(Kind::Word, "\u{0}opaque"));
        }
        return vec![(Kind::Word, words)];
    }
    ids
}

/// The marks the flow knows to be clean, and how.
struct Judge<'a> {
    flow: &'a SessionFlow,
    known: Option<&'a HashSet<Mark>>,
}

impl Judge<'_> {
    fn clean(&self, m: Mark) -> Option<Provenance> {
        if self.flow.task_marks.contains(&m) {
            Some(Provenance::Task)
        } else if self.known.is_some_and(|k| k.contains(&m)) {
            Some(Provenance::Known)
        } else if self.flow.trusted.contains(&m) {
            Some(Provenance::Trusted)
        } else {
            None
        }
    }

    /// One group: a URL is clean when its host or itself is; words when all of them are.
    fn group(&self, kind: Kind, marks: &[Mark]) -> Provenance {
        let cleans: Vec<Option<Provenance>> = marks.iter().map(|m| self.clean(*m)).collect();
        // A URL is clean only as a whole: a known host does not make any path on it clean.
        let clean = if kind == Kind::Url {
            cleans.last().copied().flatten()
        } else if cleans.iter().all(Option::is_some) {
            cleans.iter().flatten().max_by_key(|p| rank(**p)).copied()
        } else {
            None
        };
        if let Some(p) = clean {
            return p;
        }
        let first = marks
            .iter()
            .filter(|m| self.clean(**m).is_none())
            .find_map(|m| self.flow.untrusted.get(m));
        match first {
            Some(i) => Provenance::Tainted { output: Some(*i) },
            None if self.flow.saturated => Provenance::Tainted { output: None },
            None => Provenance::Unknown,
        }
    }

    /// A whole value: tainted if any group is, unknown if any is, else its weakest clean source.
    fn value(&self, groups: &[(Kind, Vec<Mark>)]) -> (Provenance, Option<Kind>) {
        let mut worst = (Provenance::Unknown, None);
        let mut worst_rank = 0;
        for (k, ms) in groups {
            let p = self.group(*k, ms);
            let r = match p {
                Provenance::Tainted { .. } => 10,
                Provenance::Unknown => 9,
                p => rank(p),
            };
            if r > worst_rank {
                worst = (p, k.is_identifier().then_some(*k));
                worst_rank = r;
            }
        }
        worst
    }
}

/// How weak a clean source is (higher: weaker).
fn rank(p: Provenance) -> u8 {
    match p {
        Provenance::Task => 1,
        Provenance::Known => 2,
        Provenance::Trusted => 3,
        _ => 4,
    }
}

/// The string leaves of a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// Judges `arguments` of a call to `tool` against `flow`: every controlling argument's value,
/// and, for a tool with effects, every identifier in its other arguments. `known` holds the
/// agent's zone's destinations; `learn_from_trusted` says whether a value seen only in trusted
/// output is a known destination (else it is unknown, though not tainted).
#[must_use]
pub fn assess(
    tool: &Tool,
    arguments: &Value,
    flow: &SessionFlow,
    known: Option<&HashSet<Mark>>,
    learn_from_trusted: bool,
) -> Assessment {
    let judge = Judge { flow, known };
    let mut out = Assessment {
        over_classified: tool.effects && flow.classification > level(tool.egress_level),
        ..Assessment::default()
    };
    let Some(args) = arguments.as_object() else {
        return out;
    };
    if !tool.effects && tool.controlling.is_empty() {
        return out;
    }
    let mut subjects: HashMap<&str, Provenance> = HashMap::new();
    for (name, value) in args {
        let controlling = tool.controlling.contains(name);
        if !controlling && !tool.effects {
            continue;
        }
        let mut ss = Vec::new();
        strings(value, &mut ss);
        let refs: Vec<&str> = ss.iter().map(String::as_str).collect();
        let gs = groups(&refs);
        if controlling {
            let (mut p, kind) = judge.value(&gs);
            if p == Provenance::Trusted && !learn_from_trusted {
                p = Provenance::Unknown;
            }
            subjects.insert(name, p);
            out.args.push(ArgFinding {
                argument: name.clone(),
                controlling,
                provenance: p,
                kind,
            });
            continue;
        }
        for (k, ms) in gs.iter().filter(|(k, _)| k.is_identifier()) {
            let p = judge.group(*k, ms);
            if matches!(p, Provenance::Tainted { .. }) {
                out.args.push(ArgFinding {
                    argument: name.clone(),
                    controlling,
                    provenance: p,
                    kind: Some(*k),
                });
            }
        }
    }
    looked_up(tool, args, flow, &subjects, &mut out);
    out
}

/// `lookup`: a tainted controlling identifier becomes [`Provenance::Lookup`] when its subject
/// argument is clean and a source the task named holds exactly that one value of its kind.
fn looked_up(
    tool: &Tool,
    args: &serde_json::Map<String, Value>,
    flow: &SessionFlow,
    subjects: &HashMap<&str, Provenance>,
    out: &mut Assessment,
) {
    for finding in &mut out.args {
        let Some(subject) = tool.lookup.get(&finding.argument) else {
            continue;
        };
        let (Provenance::Tainted { .. }, Some(kind)) = (finding.provenance, finding.kind) else {
            continue;
        };
        if !subjects.get(subject.as_str()).is_some_and(|p| p.clean()) {
            continue;
        }
        let Some(value) = args.get(&finding.argument).and_then(Value::as_str) else {
            continue;
        };
        let mut ms = Vec::new();
        scan(value, &mut |k, m| {
            if k == kind {
                ms.push(m);
            }
        });
        let [m] = ms.as_slice() else {
            continue;
        };
        if let Some(s) = flow
            .sources
            .iter()
            .find(|s| s.named && s.unique.contains(&(kind, *m)))
        {
            finding.provenance = Provenance::Lookup { output: s.index };
        }
    }
}

/// A classification's rank (0 `public` … 3 `restricted`).
#[must_use]
pub fn level(c: Classification) -> u8 {
    match c {
        Classification::Public => 0,
        Classification::Internal => 1,
        Classification::Confidential => 2,
        Classification::Restricted => 3,
    }
}

/// The name of a classification rank (what policies read as `session_classification`).
#[must_use]
pub fn level_name(rank: u8) -> &'static str {
    match rank {
        0 => "public",
        1 => "internal",
        2 => "confidential",
        _ => "restricted",
    }
}

/// Why a task could not be declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The session has read output already.
    #[error("the session has already read tool output; its task can no longer be declared")]
    AfterOutput,
    /// Another task was declared.
    #[error("the session already has a different task")]
    Different,
    /// Too long.
    #[error("the task is {0} bytes; at most {MAX_TASK_BYTES} are accepted")]
    TooLong(usize),
}

/// Declares `text` as the session's task. Idempotent for the same text; refused once the
/// session has read any output, or for a different text (INVARIANT: the task is fixed before
/// anything untrusted can have shaped it).
///
/// # Errors
/// [`TaskError`].
pub fn declare_task(flow: &mut SessionFlow, text: &str) -> Result<(), TaskError> {
    if text.len() > MAX_TASK_BYTES {
        return Err(TaskError::TooLong(text.len()));
    }
    let hash = warden_core::canonical::sha256_tagged(text.as_bytes());
    match &flow.task {
        Some(t) if t.hash == hash => return Ok(()),
        Some(_) => return Err(TaskError::Different),
        None if flow.outputs > 0 => return Err(TaskError::AfterOutput),
        None => {}
    }
    flow.task_marks.extend(marks_of(text));
    flow.task = Some(Task {
        hash,
        len: text.len(),
    });
    Ok(())
}

/// What one output told the session: where it came from, and what the agent saw.
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    /// The tool that produced it.
    pub tool: &'a Tool,
    /// The call's arguments.
    pub arguments: &'a Value,
    /// Its text as the agent saw it (after redaction).
    pub text: &'a str,
    /// Its structured form, if it has one (`structuredContent`, or text that is JSON).
    pub structured: Option<&'a Value>,
}

/// Records `output` in `flow`: its marks into the trusted or untrusted set by the tool's
/// labels (per field for a structured output), the session's classification raised to it.
/// Past `max_marks`, nothing more is remembered and the flow is saturated (stricter).
pub fn label(
    flow: &mut SessionFlow,
    output: &Output<'_>,
    known: Option<&HashSet<Mark>>,
    max_marks: usize,
) {
    let tool = output.tool;
    let named = named_source(tool, output.arguments, flow, known);
    let mut parts: Vec<(OutputTrust, Classification, String)> = Vec::new();
    match (output.structured, tool.output_fields.is_empty()) {
        (structured, true) => {
            parts.push((
                tool.output_trust,
                tool.classification,
                output.text.to_owned(),
            ));
            if let Some(v) = structured {
                leaves(v, &mut Vec::new(), tool, &mut parts);
            }
        }
        (Some(v), false) => {
            leaves(v, &mut Vec::new(), tool, &mut parts);
            // The text beside it (often the same JSON) gets the strictest label; what a trusted
            // field holds is still clean, through its own part.
            parts.push((
                strictest_trust(tool),
                strictest_class(tool),
                output.text.to_owned(),
            ));
        }
        // Field labels cannot be applied to unstructured text: the whole output gets the
        // least trust and the highest classification any of its fields has (stricter).
        (None, false) => parts.push((
            strictest_trust(tool),
            strictest_class(tool),
            output.text.to_owned(),
        )),
    }
    remember(flow, &tool.name, named, &parts, max_marks);
}

/// Adds one output's parts to `flow`: each mark into the trusted or the untrusted set (the
/// first output that carried it kept), the classification raised, the output listed as a
/// source with the identifiers it holds one of. Past `max_marks` the flow is saturated.
fn remember(
    flow: &mut SessionFlow,
    tool: &str,
    named: bool,
    parts: &[(OutputTrust, Classification, String)],
    max_marks: usize,
) {
    let index = flow.outputs;
    flow.outputs = flow.outputs.saturating_add(1);
    let mut counts: HashMap<Kind, HashSet<Mark>> = HashMap::new();
    for (trust, class, text) in parts {
        flow.classification = flow.classification.max(level(*class));
        let untrusted = *trust == OutputTrust::Untrusted;
        flow.read_untrusted |= untrusted;
        scan(text, &mut |k, m| {
            // Every identifier counts towards uniqueness, trusted ones too: one injected
            // address beside the real one makes a lookup ambiguous.
            if k.is_identifier() {
                counts.entry(k).or_default().insert(m);
            }
            if flow.saturated {
                return;
            }
            if flow.marks() >= max_marks {
                flow.saturated = true;
                return;
            }
            if untrusted {
                flow.untrusted.entry(m).or_insert(index);
            } else {
                flow.trusted.insert(m);
            }
        });
    }
    if flow.sources.len() < MAX_SOURCES && !flow.saturated {
        let mut unique: Vec<(Kind, Mark)> = counts
            .into_iter()
            .filter_map(|(k, ms)| match ms.len() {
                1 => ms.into_iter().next().map(|m| (k, m)),
                _ => None,
            })
            .collect();
        unique.sort_unstable();
        flow.sources.push(Source {
            tool: tool.to_owned(),
            index,
            named,
            unique,
        });
    }
}

/// Records the output of a tool the manifest does not describe: untrusted, all of it.
pub fn label_untrusted(flow: &mut SessionFlow, tool: &str, text: &str, max_marks: usize) {
    let parts = [(
        OutputTrust::Untrusted,
        Classification::Public,
        text.to_owned(),
    )];
    remember(flow, tool, false, &parts, max_marks);
}

/// The least trust any of the tool's labels gives.
fn strictest_trust(tool: &Tool) -> OutputTrust {
    if tool
        .output_fields
        .iter()
        .any(|f| f.trust == OutputTrust::Untrusted)
    {
        OutputTrust::Untrusted
    } else {
        tool.output_trust
    }
}

/// The highest classification any of the tool's labels gives.
fn strictest_class(tool: &Tool) -> Classification {
    tool.output_fields
        .iter()
        .map(|f| f.classification)
        .chain([tool.classification])
        .max_by_key(|c| level(*c))
        .unwrap_or(tool.classification)
}

/// Whether every string argument of the call came from clean input (and it had one).
fn named_source(
    tool: &Tool,
    arguments: &Value,
    flow: &SessionFlow,
    known: Option<&HashSet<Mark>>,
) -> bool {
    let judge = Judge { flow, known };
    let mut ss = Vec::new();
    strings(arguments, &mut ss);
    let _ = tool;
    !ss.is_empty()
        && ss.iter().all(|s| {
            let gs = groups(&[s.as_str()]);
            !gs.is_empty() && judge.value(&gs).0.clean()
        })
}

/// The string leaves of a structured output, each with its field's label.
fn leaves(
    v: &Value,
    path: &mut Vec<String>,
    tool: &Tool,
    out: &mut Vec<(OutputTrust, Classification, String)>,
) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                path.push(k.clone());
                // A key can carry text too: it gets the label of what it names.
                let (trust, class) = field_label(&tool.output_fields, path)
                    .map_or((tool.output_trust, tool.classification), |f| {
                        (f.trust, f.classification)
                    });
                out.push((trust, class, k.clone()));
                leaves(x, path, tool, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(i.to_string());
                leaves(x, path, tool, out);
                path.pop();
            }
        }
        Value::String(_) | Value::Number(_) => {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (trust, class) = field_label(&tool.output_fields, path)
                .map_or((tool.output_trust, tool.classification), |f| {
                    (f.trust, f.classification)
                });
            out.push((trust, class, text));
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// The label of the field at `path`: the matching label with the fewest wildcards (a field
/// under a labelled object takes its label).
fn field_label<'a>(labels: &'a [FieldLabel], path: &[String]) -> Option<&'a FieldLabel> {
    labels
        .iter()
        .filter(|l| {
            l.path.len() <= path.len()
                && l.path
                    .iter()
                    .zip(path)
                    .all(|(want, got)| want == "*" || want == got)
        })
        .max_by_key(|l| (l.path.len(), l.path.iter().filter(|s| *s != "*").count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Kind> {
        let mut v = Vec::new();
        scan(text, &mut |k, _| {
            if k.is_identifier() {
                v.push(k);
            }
        });
        v
    }

    #[test]
    fn identifiers_are_found_and_normalised() {
        assert_eq!(kinds("mail Dora@Gmail.com now"), vec![Kind::Email]);
        assert_eq!(
            kinds("see https://www.Example.com/a/"),
            vec![Kind::Host, Kind::Url]
        );
        let ids = |t: &str| {
            let mut v = Vec::new();
            scan(t, &mut |k, m| {
                if k.is_identifier() {
                    v.push(m);
                }
            });
            v
        };
        assert_eq!(ids("https://www.Example.com/a/"), ids("example.com/a"));
        assert_eq!(kinds("IBAN: DE89370400440532013000."), vec![Kind::Iban]);
        assert_eq!(
            marks_of("DE89 3704 0044 0532 0130 00")
                .iter()
                .filter(|m| **m == mark(Kind::Iban, "DE89370400440532013000"))
                .count(),
            1
        );
        // Every run of groups long enough is a number: the whole one among them.
        assert!(marks_of("call +41 79 123 45 67").contains(&mark(Kind::Number, "41791234567")));
        assert!(kinds("Total 98.70 on 2022-01-01, e.g. twice").is_empty());
        let url = |t: &str| {
            let mut v = Vec::new();
            scan(t, &mut |k, m| {
                if k == Kind::Url {
                    v.push(m);
                }
            });
            v
        };
        assert!(
            url("post to www.our-site.com.They said").contains(&mark(Kind::Url, "our-site.com"))
        );
    }

    #[test]
    fn short_words_carry_no_evidence() {
        assert!(marks_of("a to 7 of").is_empty());
        assert_eq!(marks_of("External_0").len(), 1);
    }
}
