//! What a crash leaves behind (issue 18): calls the Governor allowed, whose grant was minted and
//! perhaps redeemed, and whose receipt never came because the gateway stopped mid-call. Without
//! a mark, an auditor cannot tell "the gateway stopped mid-call" from "a receipt was
//! suppressed".
//!
//! At start-up, before anything is served, every `allow` decision since the previous start
//! that has neither a receipt nor a `grant.refused` event is closed with a receipt of status
//! `interrupted` (the outcome is unknown: the tool may or may not have run); then the start is
//! recorded (`gateway.started`, with how many calls it closed), which bounds the next start's
//! scan. The scan reads the ledger backwards from its end to the previous `gateway.started`,
//! so it costs what the previous run appended, and holds in memory only the calls not yet
//! matched.
//!
//! INVARIANT (one writer): only the embedded ledger is scanned. Instances sharing a PostgreSQL
//! ledger have calls in flight on other instances, which must not be closed; that needs
//! instance identities (fleet mode, issue 22).

use std::collections::HashSet;
use warden_ledger::{Entry, EventRecord, Ledger, LedgerError, Receipt, ReceiptStatus};

/// The event that marks a start.
pub(crate) const STARTED: &str = "gateway.started";

/// Entries read per hold of the ledger's store lock.
const CHUNK: u64 = 4096;

/// What the start-up scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Entries read (those appended since the previous start).
    pub scanned: u64,
    /// Allowed calls closed as `interrupted`.
    pub interrupted: usize,
}

/// Closes the calls the previous run left without a receipt, then records this start.
///
/// # Errors
/// [`LedgerError`] when the ledger cannot be read or appended to (the gateway does not start).
pub fn close_interrupted(ledger: &Ledger, now_ms: i64) -> Result<Recovered, LedgerError> {
    let (open, scanned) = unanswered(ledger)?;
    let mut tickets = Vec::with_capacity(open.len());
    for d in &open {
        tickets.push(ledger.submit(&Entry::Receipt(Receipt {
            trace_id: d.trace_id.clone(),
            request_id: d.request_id.clone(),
            tenant: d.tenant.clone(),
            agent: d.agent.clone(),
            action: d.tool.clone(),
            arguments_hash: d.arguments_hash.clone(),
            grant: String::new(),
            approval: None,
            started_at_ms: d.time.saturating_mul(1000),
            ended_at_ms: now_ms,
            status: ReceiptStatus::Interrupted,
            result_hash: String::new(),
            executor: String::new(),
            sandbox_profile: String::new(),
            redactions: 0,
        }))?);
    }
    // Submitted together, committed together; each is durable before the start is recorded.
    for t in tickets {
        t.wait()?;
    }
    let mut reason = "gateway started".to_owned();
    let adopted = ledger.unsigned_at_open();
    if adopted > 0 {
        reason.push_str(&format!(
            "; {adopted} entr{} after the last signed checkpoint adopted and signed now (left by a gateway that stopped before its next checkpoint, or appended by someone able to write the data directory)",
            if adopted == 1 { "y" } else { "ies" }
        ));
    }
    if !open.is_empty() {
        reason.push_str(&format!(
            "; {} call(s) allowed before it stopped had no receipt and were closed as interrupted (outcome unknown)",
            open.len()
        ));
    }
    ledger.append(&Entry::Event(EventRecord::about_gateway(
        STARTED,
        reason,
        now_ms.div_euclid(1000),
    )))?;
    Ok(Recovered {
        scanned,
        interrupted: open.len(),
    })
}

/// What one stored entry means to the scan, read from its bytes without decoding it (an entry
/// is canonical JSON: a key and its quotes never appear unescaped inside a string value, and
/// request ids are plain tokens), so that a start after a long run does not decode every entry.
enum Seen<'a> {
    /// The previous start.
    Started,
    /// A receipt, or a `grant.refused` event: the call with this request id was answered.
    Answered(&'a [u8]),
    /// An `allow` decision.
    Allowed(&'a [u8]),
    /// Anything else.
    Other,
}

fn seen(bytes: &[u8]) -> Seen<'_> {
    let has = |needle: &str| memchr::memmem::find(bytes, needle.as_bytes()).is_some();
    let id = || request_id(bytes);
    if has(r#""type":"receipt""#) {
        id().map_or(Seen::Other, Seen::Answered)
    } else if has(r#""type":"event""#) {
        if has(&format!(r#""kind":"{STARTED}""#)) {
            Seen::Started
        } else if has(r#""kind":"grant.refused""#) {
            id().map_or(Seen::Other, Seen::Answered)
        } else {
            Seen::Other
        }
    } else if has(r#""type":"decision""#) && has(r#""decision":"allow""#) {
        id().map_or(Seen::Other, Seen::Allowed)
    } else {
        Seen::Other
    }
}

/// The raw value of `"request_id"`, when it holds no escape.
fn request_id(bytes: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""request_id":""#;
    let start = memchr::memmem::find(bytes, KEY)?.checked_add(KEY.len())?;
    let rest = bytes.get(start..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest.get(end) == Some(&b'"'))
        .then(|| rest.get(..end))
        .flatten()
}

/// The `allow` decisions since the last `gateway.started` with neither a receipt nor a
/// `grant.refused` event, oldest first; and how many entries were read.
fn unanswered(ledger: &Ledger) -> Result<(Vec<warden_ledger::DecisionRecord>, u64), LedgerError> {
    // Read backwards: a call's receipt comes after its decision, so it is met first; only
    // receipts whose decision is further back, and decisions without receipts, are held.
    let mut answered: HashSet<Vec<u8>> = HashSet::new();
    let mut open = Vec::new();
    let mut scanned = 0u64;
    let mut to = ledger.size()?;
    while to > 0 {
        let from = to.saturating_sub(CHUNK);
        let mut chunk: Vec<Vec<u8>> = Vec::new();
        ledger.with_store(|s| {
            s.scan(from, to, &mut |_, bytes| {
                chunk.push(bytes.to_vec());
                Ok(())
            })
            .map_err(Into::into)
        })?;
        for bytes in chunk.iter().rev() {
            scanned = scanned.saturating_add(1);
            match seen(bytes) {
                Seen::Started => {
                    open.reverse();
                    return Ok((open, scanned));
                }
                Seen::Answered(id) => {
                    answered.insert(id.to_vec());
                }
                Seen::Allowed(id) if !answered.remove(id) => {
                    // Rare: decoded in full, for the receipt that closes it.
                    if let Ok(Entry::Decision(d)) = Entry::from_bytes(bytes) {
                        open.push(d);
                    }
                }
                Seen::Allowed(_) | Seen::Other => {}
            }
        }
        to = from;
    }
    open.reverse();
    Ok((open, scanned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::Verdict;
    use warden_ledger::DecisionRecord;

    fn decision(request_id: &str, verdict: Verdict) -> Entry {
        Entry::Decision(DecisionRecord {
            decision: verdict,
            rules: vec!["tier.low.auto".into()],
            policies: Vec::new(),
            rationale: "test".into(),
            escalation: None,
            manifest_version: 1,
            policy_hash: "sha256:00".into(),
            agent: "coder-1".into(),
            lineage: vec!["alice@acme.example".into()],
            tenant: "acme".into(),
            session: "s".into(),
            trace_id: format!("trace-{request_id}"),
            request_id: request_id.into(),
            tool: "demo.echo".into(),
            operation: warden_core::Operation::Use,
            arguments_hash: "sha256:11".into(),
            time: 1_800_000_000,
            provenance: Vec::new(),
        })
    }

    fn receipt(request_id: &str, status: ReceiptStatus) -> Entry {
        Entry::Receipt(Receipt {
            trace_id: String::new(),
            request_id: request_id.into(),
            tenant: "acme".into(),
            agent: "coder-1".into(),
            action: "demo.echo".into(),
            arguments_hash: "sha256:11".into(),
            grant: "g".into(),
            approval: None,
            started_at_ms: 1,
            ended_at_ms: 2,
            status,
            result_hash: String::new(),
            executor: "mcp:demo".into(),
            sandbox_profile: String::new(),
            redactions: 0,
        })
    }

    fn refused(request_id: &str) -> Entry {
        Entry::Event(EventRecord {
            kind: "grant.refused".into(),
            agent: "coder-1".into(),
            tenant: "acme".into(),
            session: "s".into(),
            reason: "replayed".into(),
            trace_id: String::new(),
            request_id: request_id.into(),
            time: 1,
        })
    }

    fn receipts(ledger: &Ledger) -> Vec<Receipt> {
        let mut out = Vec::new();
        let size = ledger.size().unwrap();
        ledger
            .with_store(|s| {
                s.scan(0, size, &mut |_, b| {
                    if let Ok(Entry::Receipt(r)) = Entry::from_bytes(b) {
                        out.push(r);
                    }
                    Ok(())
                })
                .map_err(Into::into)
            })
            .unwrap();
        out
    }

    /// Issue 18: entries a crash left after the last signed checkpoint are adopted (signed)
    /// at the next start, and the start's record says how many.
    #[test]
    fn entries_left_unsigned_by_a_crash_are_adopted_and_the_start_says_so() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = crate::witness::open_ledger(
                dir.path(),
                None,
                &Default::default(),
                Default::default(),
            )
            .unwrap();
            ledger.append(&decision("r-signed", Verdict::Deny)).unwrap();
        }
        {
            // A writer that died before its next checkpoint: appended, never signed.
            let mut store = warden_ledger::FileStore::open(
                &dir.path().join("ledger"),
                warden_ledger::Mode::Write,
            )
            .unwrap();
            let raw = decision("r-unsigned", Verdict::Deny).to_bytes().unwrap();
            warden_ledger::LedgerStore::append(&mut store, &[raw]).unwrap();
        }
        let ledger =
            crate::witness::open_ledger(dir.path(), None, &Default::default(), Default::default())
                .unwrap();
        assert_eq!(ledger.unsigned_at_open(), 1);
        close_interrupted(&ledger, 1_800_000_500_000).unwrap();
        let size = ledger.size().unwrap();
        let mut last = None;
        ledger
            .with_store(|s| {
                s.scan(size - 1, size, &mut |_, b| {
                    last = Entry::from_bytes(b).ok();
                    Ok(())
                })
                .map_err(Into::into)
            })
            .unwrap();
        let Some(Entry::Event(e)) = last else {
            panic!("no start recorded: {last:?}")
        };
        assert_eq!(e.kind, STARTED);
        assert!(
            e.reason
                .contains("1 entry after the last signed checkpoint adopted"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn entries_are_classified_from_their_bytes_and_quoted_text_fools_nothing() {
        let bytes = |e: &Entry| e.to_bytes().unwrap();
        assert!(matches!(
            seen(&bytes(&decision("r-1", Verdict::Allow))),
            Seen::Allowed(b"r-1")
        ));
        assert!(matches!(
            seen(&bytes(&decision("r-2", Verdict::Deny))),
            Seen::Other
        ));
        assert!(matches!(
            seen(&bytes(&receipt("r-3", ReceiptStatus::Ok))),
            Seen::Answered(b"r-3")
        ));
        assert!(matches!(
            seen(&bytes(&refused("r-4"))),
            Seen::Answered(b"r-4")
        ));
        // An event whose reason quotes what the scan looks for is still just an event.
        let Entry::Event(mut e) = refused("r-5") else {
            unreachable!()
        };
        e.kind = "request.refused".into();
        e.reason = r#"{"type":"receipt","kind":"gateway.started","request_id":"x"}"#.into();
        assert!(matches!(seen(&bytes(&Entry::Event(e))), Seen::Other));
        // A request id with an escape is not guessed at.
        assert_eq!(request_id(br#"{"request_id":"a\"b"}"#), None);
    }

    #[test]
    fn allowed_calls_without_a_receipt_are_closed_once_and_the_scan_stops_at_the_last_start() {
        let dir = tempfile::tempdir().unwrap();
        let ledger =
            crate::witness::open_ledger(dir.path(), None, &Default::default(), Default::default())
                .unwrap();
        // A previous run: a call that finished, one whose grant was refused, one denied, and
        // two allowed and cut off by a crash (one of them in a later chunk than its neighbours
        // would be: the scan reads several chunks).
        let mut entries = vec![
            decision("r-open-1", Verdict::Allow),
            decision("r-done", Verdict::Allow),
            decision("r-refused", Verdict::Allow),
            decision("r-deny", Verdict::Deny),
        ];
        entries.extend((0..CHUNK + 10).map(|i| refused(&format!("noise-{i}"))));
        entries.push(receipt("r-done", ReceiptStatus::Ok));
        entries.push(refused("r-refused"));
        entries.push(decision("r-open-2", Verdict::Allow));
        let tickets: Vec<_> = entries.iter().map(|e| ledger.submit(e).unwrap()).collect();
        for t in tickets {
            t.wait().unwrap();
        }
        let r = close_interrupted(&ledger, 1_800_000_500_000).unwrap();
        assert_eq!(r.interrupted, 2, "{r:?}");
        assert_eq!(r.scanned, entries.len() as u64);
        let closed: Vec<Receipt> = receipts(&ledger)
            .into_iter()
            .filter(|r| r.status == ReceiptStatus::Interrupted)
            .collect();
        let ids: Vec<&str> = closed.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["r-open-1", "r-open-2"], "oldest first");
        assert_eq!(closed[0].trace_id, "trace-r-open-1");
        assert_eq!(closed[0].started_at_ms, 1_800_000_000_000);
        assert_eq!(closed[0].ended_at_ms, 1_800_000_500_000);

        // The next start reads only what came after this one, and closes nothing twice.
        ledger
            .append(&decision("r-done-2", Verdict::Allow))
            .unwrap();
        ledger
            .append(&receipt("r-done-2", ReceiptStatus::Error))
            .unwrap();
        let r = close_interrupted(&ledger, 1_800_000_600_000).unwrap();
        assert_eq!(
            r,
            Recovered {
                scanned: 3,
                interrupted: 0
            },
            "the two new entries and the last start's mark"
        );
    }
}
