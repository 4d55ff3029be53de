//! OTLP/HTTP export of governed calls' spans ([`crate::traces`]): the protobuf encoding of an
//! `ExportTraceServiceRequest` (OpenTelemetry protocol, `opentelemetry/proto/collector/trace/
//! v1`), written straight from Warden's span records, and the thread that batches and posts
//! them.
//!
//! Why not the SDK's exporter: it converts each span to the SDK's span type, then to the
//! generated protobuf structs (an allocation per id, name, key and value), groups them in hash
//! maps and encodes them, and a span allocated on one thread is freed on another; measured,
//! that was most of what tracing cost a call (docs/benchmarks.md). Here a call's spans are
//! encoded once, by the call's thread, straight into the batch. What a collector receives is checked by decoding it
//! with the official protobuf definitions (`crates/warden-cli/tests/mcp/traces.rs`).
//!
//! Delivery is best effort, as with any OTLP exporter: a batch the collector refuses or does
//! not answer within the timeout is dropped (and the log says so, at most once a minute); spans
//! beyond the queue's bound are dropped (the log gives the count so far, at most once a
//! minute); a call never waits for any of it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::{Array, KeyValue, Value};

/// One finished span, as the exporter encodes it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span.
    pub id: [u8; 8],
    /// Its parent, if it has one.
    pub parent: Option<[u8; 8]>,
    /// Whether the parent is another process's (the caller's span).
    pub parent_remote: bool,
    /// OTLP span kind: 1 internal, 2 server, 3 client.
    pub kind: u8,
    /// Its name.
    pub name: Cow<'static, str>,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// `error.type`, when what it stands for failed (the span's status is then `ERROR`).
    pub error: Option<&'static str>,
}

/// Span kinds, as OTLP numbers them.
pub(crate) const INTERNAL: u8 = 1;
pub(crate) const SERVER: u8 = 2;
pub(crate) const CLIENT: u8 = 3;

/// Where the spans of a call go.
pub trait SpanSink: Send + Sync {
    /// Takes one call's spans (never waits).
    fn take(&self, spans: Vec<SpanRecord>);
    /// Exports what is queued; waits up to `timeout`.
    fn flush(&self, timeout: Duration);
    /// Spans dropped so far (the queue was full).
    fn dropped(&self) -> u64 {
        0
    }
}

/// How spans are exported: where, with what, how often.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The full URL (`.../v1/traces`).
    pub(crate) endpoint: String,
    /// Extra request headers (a collector's API key).
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A batch is sent this often at least (`OTEL_BSP_SCHEDULE_DELAY`).
    pub(crate) schedule_delay: Duration,
    /// At most this many spans wait; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub(crate) max_queue: usize,
    /// A batch is sent once this many spans wait, and holds at most this many
    /// (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub(crate) max_batch: usize,
    /// `service.name` and the other resource attributes.
    pub(crate) resource: Vec<KeyValue>,
}

/// What the calls and the exporting thread share: the spans waiting, already encoded.
struct Queue {
    /// `Span` messages, each as field 2 of a `ScopeSpans`, in the order they came.
    spans: Vec<u8>,
    /// Where each ends in `spans` (a batch is cut at these).
    ends: Vec<usize>,
    /// Flushes asked for, and done.
    flush_asked: u64,
    flushed: u64,
    /// The exporter is gone: post what is left and stop.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the exporting thread: a batch is full, or a flush is asked for.
    wake: Condvar,
    /// Tells a flush it is done.
    done: Condvar,
}

/// The OTLP/HTTP exporter: the queue of encoded spans and the thread that posts it.
///
/// A call's spans are encoded into the queue by the call's own thread (under a short lock),
/// so their memory is freed where it was allocated, and the exporting thread is woken only
/// when a batch is full or its delay has passed, never per call.
pub(crate) struct Exporter {
    shared: Arc<Shared>,
    max_queue: usize,
    max_batch: usize,
    dropped: AtomicU64,
    /// When dropped spans were last reported.
    reported: Mutex<Option<Instant>>,
}

impl Exporter {
    /// Starts the exporting thread, posting with `client`.
    pub(crate) fn start(
        settings: Settings,
        client: reqwest::blocking::Client,
    ) -> std::io::Result<Exporter> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                spans: Vec::new(),
                ends: Vec::new(),
                flush_asked: 0,
                flushed: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let (max_queue, max_batch) = (settings.max_queue, settings.max_batch);
        let posting = Posting {
            settings,
            client,
            shared: Arc::clone(&shared),
            complained: None,
        };
        std::thread::Builder::new()
            .name("warden-otlp".into())
            .spawn(move || posting.run())?;
        Ok(Exporter {
            shared,
            max_queue,
            max_batch,
            dropped: AtomicU64::new(0),
            reported: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Exporter {
    /// Says how many spans the full queue has dropped so far, at most once a minute.
    fn report_dropped(&self, total: u64) {
        let Ok(mut last) = self.reported.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
            *last = Some(now);
            tracing::warn!(
                dropped = total,
                "traces: the export queue is full (the collector is slow or down); spans dropped so far"
            );
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl SpanSink for Exporter {
    fn take(&self, spans: Vec<SpanRecord>) {
        let mut q = self.lock();
        // INVARIANT (a call never waits for telemetry): a full queue drops the call's spans.
        if q.ends.len() + spans.len() > self.max_queue {
            drop(q);
            let total = self
                .dropped
                .fetch_add(spans.len() as u64, Ordering::Relaxed)
                + spans.len() as u64;
            self.report_dropped(total);
            return;
        }
        for s in &spans {
            message(&mut q.spans, 2, |buf| span(buf, s));
            let end = q.spans.len();
            q.ends.push(end);
        }
        if q.ends.len() >= self.max_batch {
            self.shared.wake.notify_one();
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        q.flush_asked += 1;
        let asked = q.flush_asked;
        self.shared.wake.notify_one();
        while q.flushed < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("traces: the last spans were not all exported in time");
                return;
            }
            q = self
                .shared
                .done
                .wait_timeout(q, left)
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// The exporting thread.
struct Posting {
    settings: Settings,
    client: reqwest::blocking::Client,
    shared: Arc<Shared>,
    /// When a failure was last logged.
    complained: Option<Instant>,
}

impl Posting {
    fn run(mut self) {
        let (mut spare, mut spare_ends) = (Vec::new(), Vec::new());
        let delay = self.settings.schedule_delay;
        let after = |d: Instant| d.checked_add(delay).unwrap_or(d);
        let mut due = after(Instant::now());
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let now = Instant::now();
            let flushing = q.flush_asked > q.flushed;
            let closing = q.closed;
            if q.ends.len() >= self.settings.max_batch || flushing || closing || now >= due {
                let asked = q.flush_asked;
                std::mem::swap(&mut q.spans, &mut spare);
                std::mem::swap(&mut q.ends, &mut spare_ends);
                drop(q);
                self.post_all(&spare, &spare_ends);
                spare.clear();
                spare_ends.clear();
                due = after(Instant::now());
                q = self
                    .shared
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.flushed = asked;
                self.shared.done.notify_all();
                if closing {
                    return;
                }
                continue;
            }
            q = self
                .shared
                .wake
                .wait_timeout(q, due.saturating_duration_since(now))
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Posts `spans` (encoded; `ends` where each ends) in requests of at most `max_batch`.
    fn post_all(&mut self, spans: &[u8], ends: &[usize]) {
        let mut start = 0;
        for chunk in ends.chunks(self.settings.max_batch.max(1)) {
            let Some(&end) = chunk.last() else { continue };
            if let Some(batch) = spans.get(start..end) {
                self.post(batch, chunk.len());
            }
            start = end;
        }
    }

    /// Posts `count` encoded spans as one request.
    fn post(&mut self, spans: &[u8], count: usize) {
        let mut body = Vec::with_capacity(spans.len() + 256);
        encode_request(&mut body, &self.settings.resource, spans);
        let mut request = self
            .client
            .post(&self.settings.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        for (k, v) in &self.settings.headers {
            request = request.header(k, v);
        }
        let failed = match request.send() {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            // Without the URL (reqwest's message may name it; it can carry a key).
            Err(e) if e.is_timeout() => Some("the collector did not answer in time".into()),
            Err(_) => Some("the collector could not be reached".into()),
        };
        if let Some(why) = failed {
            let now = Instant::now();
            if self
                .complained
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
            {
                self.complained = Some(now);
                tracing::warn!(spans = count, "traces: a batch was dropped: {why}");
            }
        }
    }
}

// --- Protobuf encoding (proto3 wire format) ---------------------------------------------------

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A nested message `field`, written by `f` in place: its length is reserved, then moved into
/// its final width once known (no temporary buffer).
fn message(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.extend_from_slice(&[0; 5]);
    f(buf);
    let len = buf.len() - at - 5;
    let mut width = Vec::with_capacity(5);
    varint(&mut width, len as u64);
    buf.copy_within(at + 5.., at + width.len());
    buf.truncate(at + width.len() + len);
    if let Some(slot) = buf.get_mut(at..at + width.len()) {
        slot.copy_from_slice(&width);
    }
}

/// `AnyValue` (common.proto).
fn any_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => fixed64(buf, 4, f.to_bits()),
        Value::String(s) => bytes(buf, 1, s.as_str().as_bytes()),
        Value::Array(a) => message(buf, 5, |buf| match a {
            Array::Bool(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| any_value(b, &Value::Bool(*x)))),
            Array::I64(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| any_value(b, &Value::I64(*x)))),
            Array::F64(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| any_value(b, &Value::F64(*x)))),
            Array::String(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| bytes(b, 1, x.as_str().as_bytes()))),
            // A kind of array this version of the API adds later: left out.
            _ => {}
        }),
        // A kind of value this version of the API adds later: left out.
        _ => {}
    }
}

/// Repeated `KeyValue` as `field`.
fn attributes(buf: &mut Vec<u8>, field: u32, kvs: &[KeyValue]) {
    for kv in kvs {
        message(buf, field, |buf| {
            bytes(buf, 1, kv.key.as_str().as_bytes());
            message(buf, 2, |buf| any_value(buf, &kv.value));
        });
    }
}

/// `Span` (trace.proto).
fn span(buf: &mut Vec<u8>, s: &SpanRecord) {
    bytes(buf, 1, &s.trace_id);
    bytes(buf, 2, &s.id);
    if let Some(p) = &s.parent {
        bytes(buf, 4, p);
    }
    bytes(buf, 5, s.name.as_bytes());
    key(buf, 6, VARINT);
    varint(buf, u64::from(s.kind));
    fixed64(buf, 7, s.start_ns);
    fixed64(buf, 8, s.end_ns);
    attributes(buf, 9, &s.attributes);
    if let Some(e) = s.error {
        message(buf, 9, |buf| {
            bytes(buf, 1, b"error.type");
            message(buf, 2, |buf| bytes(buf, 1, e.as_bytes()));
        });
    }
    // Status: code ERROR (2) when it failed, else unset (left out).
    if s.error.is_some() {
        message(buf, 15, |buf| {
            key(buf, 3, VARINT);
            varint(buf, 2);
        });
    }
    // Flags: sampled, and whether the parent is remote (HAS_IS_REMOTE, IS_REMOTE).
    let remote = if s.parent_remote { 0x300 } else { 0x100 };
    key(buf, 16, FIXED32);
    buf.extend_from_slice(&(0x01u32 | remote).to_le_bytes());
}

/// The `ExportTraceServiceRequest` from `resource`, the scope `warden`, and `spans` (encoded
/// `Span`s, each as field 2 of the `ScopeSpans`).
fn encode_request(buf: &mut Vec<u8>, resource: &[KeyValue], spans: &[u8]) {
    message(buf, 1, |buf| {
        message(buf, 1, |buf| attributes(buf, 1, resource));
        message(buf, 2, |buf| {
            message(buf, 1, |buf| {
                bytes(buf, 1, b"warden");
                bytes(buf, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            buf.extend_from_slice(spans);
        });
    });
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "tests fail loudly"
    )]

    use super::*;

    fn record(i: u8) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            id: [i; 8],
            parent: None,
            parent_remote: false,
            kind: INTERNAL,
            name: Cow::Borrowed("s"),
            start_ns: 1,
            end_ns: 2,
            attributes: vec![KeyValue::new("n", i64::from(i))],
            error: None,
        }
    }

    #[test]
    fn a_full_queue_drops_whole_calls_and_counts_them_and_a_flush_returns() {
        let settings = Settings {
            // Nothing answers here: every post fails, quickly.
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            headers: Vec::new(),
            schedule_delay: Duration::from_secs(3600),
            max_queue: 4,
            max_batch: 4,
            resource: Vec::new(),
        };
        let client =
            warden_executor::tls::blocking_client(&settings.endpoint, None, Duration::from_secs(1))
                .unwrap();
        let x = Exporter::start(settings, client).unwrap();
        x.take(vec![record(1), record(2), record(3)]);
        // Three wait; two more do not fit: both dropped, the three kept.
        x.take(vec![record(4), record(5)]);
        assert_eq!(x.dropped(), 2);
        assert_eq!(x.lock().ends.len(), 3);
        let asked = Instant::now();
        x.flush(Duration::from_secs(5));
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the flush waited out its timeout"
        );
        assert!(x.lock().ends.is_empty());
    }

    #[test]
    fn varints_and_nested_lengths_are_proto3() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        // A nested message longer than 127 bytes gets a two-byte length.
        let mut b = Vec::new();
        message(&mut b, 1, |b| bytes(b, 2, &[7; 200]));
        assert_eq!(&b[..3], &[0x0a, 0xcb, 0x01]); // field 1, LEN; 203 = 0xcb 0x01
        assert_eq!(&b[3..6], &[0x12, 0xc8, 0x01]); // field 2, LEN; 200
        assert_eq!(b.len(), 3 + 203);
        // A short one keeps a one-byte length.
        let mut b = Vec::new();
        message(&mut b, 1, |b| bytes(b, 1, b"ab"));
        assert_eq!(b, [0x0a, 0x04, 0x0a, 0x02, b'a', b'b']);
    }
}
