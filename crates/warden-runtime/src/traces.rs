//! OpenTelemetry traces of governed calls, exported over OTLP (HTTP/protobuf) when the standard
//! `OTEL_*` variables ask for it ([`Traces::from_env`]; docs/observability.md, "Traces").
//!
//! A governed call is one span, `tools/call <tool>` (kind server), continuing the caller's W3C
//! `traceparent` when it sent one. Its children are the stages: `warden.decide`,
//! `warden.ledger.append`, `warden.approval.wait`, `warden.execute`, and under the execution
//! the upstream's `tools/call <tool>` (kind client, whose span id is the parent the upstream is
//! sent in its `traceparent`), `warden.redaction` and `warden.receipt`.
//!
//! The spans are built once the call has answered, from the instants the governed path took
//! (the same ones the stage histograms use), and handed as one message to the exporter
//! ([`crate::otlp`]), which batches and posts them from its own thread: a call never waits for
//! the exporter, and a collector that is down costs dropped spans, never a call. The
//! OpenTelemetry SDK provides the samplers (chosen by `OTEL_TRACES_SAMPLER`), the ids and the
//! resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
//!
//! INVARIANT (secrets never leave in telemetry): a span's attributes are names the manifest
//! and Warden define (tool, tier, rules, decision, ids Warden minted, counts) and the caller's
//! agent and tenant ids; never an argument value, a result, an error text (which may quote
//! either) or a secret.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};
use std::time::Duration;
use warden_core::trace::TraceParent;
use warden_executor::{Interval, Timed};

use crate::otlp::{SpanRecord, SpanSink};

/// Why traces could not be set up as the environment asks (nothing is served then: an
/// operator who asked for traces is told, not left without them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TracesError {
    /// A variable asks for something Warden does not export.
    #[error("{var}={value:?}: {why}")]
    Unsupported {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is supported.
        why: &'static str,
    },
    /// A variable's value is not what it must be (never echoed: headers can hold keys).
    #[error("{var}: {why}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The OTLP exporter could not be set up (its HTTP client, its thread).
    #[error("the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Where governed calls' spans go: nowhere ([`Traces::off`], the default) or to an OTLP
/// collector. Cheap to clone.
#[derive(Clone, Default)]
pub struct Traces(Option<Arc<Exporter>>);

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Traces(on)"
        } else {
            "Traces(off)"
        })
    }
}

struct Exporter {
    sink: Box<dyn SpanSink>,
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
}

/// The variables that turn traces on or off, and the protocol's.
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOLS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

/// Whether the environment (read through `get`) asks for traces: `OTEL_TRACES_EXPORTER=otlp`,
/// or an OTLP endpoint set with no exporter named; never with `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none`. Only OTLP over HTTP/protobuf is exported.
///
/// # Errors
/// [`TracesError::Unsupported`] naming the variable that asks for another exporter or
/// protocol.
pub fn wanted(get: impl Fn(&str) -> Option<String>) -> Result<bool, TracesError> {
    let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    if set(SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    let on = match set(TRACES_EXPORTER) {
        None => ENDPOINTS.iter().any(|k| set(k).is_some()),
        Some(v) if v.trim() == "none" => false,
        Some(v) if v.trim() == "otlp" => true,
        Some(value) => {
            return Err(TracesError::Unsupported {
                var: TRACES_EXPORTER,
                value,
                why: "Warden exports traces over OTLP only (`otlp` or `none`)",
            })
        }
    };
    if on {
        if let Some((var, value)) = PROTOCOLS.iter().find_map(|k| set(k).map(|v| (*k, v))) {
            if value.trim() != "http/protobuf" {
                return Err(TracesError::Unsupported {
                    var,
                    value,
                    why: "Warden exports OTLP over HTTP with protobuf only (`http/protobuf`)",
                });
            }
        }
    }
    Ok(on)
}

impl Traces {
    /// No traces.
    #[must_use]
    pub fn off() -> Traces {
        Traces(None)
    }

    /// Traces as the process's `OTEL_*` variables ask ([`wanted`]): off unless asked for;
    /// otherwise exported over OTLP/HTTP (protobuf) to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// (or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, or `http://localhost:4318/v1/traces`),
    /// with `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._CERTIFICATE` (each also in its
    /// `_TRACES_` form), the `OTEL_BSP_*` batch settings, `OTEL_TRACES_SAMPLER` (and `_ARG`),
    /// `OTEL_SERVICE_NAME` (default `warden`) and `OTEL_RESOURCE_ATTRIBUTES`. The HTTP client
    /// is built like every other client Warden makes: verified TLS, no redirect, no proxy from
    /// the environment.
    ///
    /// # Errors
    /// [`TracesError`] when the variables ask for what cannot be set up, naming the variable.
    pub fn from_env() -> Result<Traces, TracesError> {
        Traces::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Traces::from_env`], the variables read through `lookup` (the sampler's and the
    /// resource's are the process's, read by the OpenTelemetry SDK).
    ///
    /// # Errors
    /// As [`Traces::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Traces, TracesError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if !wanted(get)? {
            return Ok(Traces::off());
        }
        let either = |signal: &'static str, general: &'static str| {
            get(signal)
                .map(|v| (signal, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        // The OTLP/HTTP endpoint rules: the traces endpoint as it is, the general one with
        // `/v1/traces` added.
        let endpoint = get(ENDPOINTS[0]).unwrap_or_else(|| {
            let base = get(ENDPOINTS[1]).unwrap_or_else(|| "http://localhost:4318".to_owned());
            format!("{}/v1/traces", base.trim().trim_end_matches('/'))
        });
        // An http(s) URL with a host, or the start stops (the value is not echoed: it may hold
        // a key).
        let endpoint_var = if get(ENDPOINTS[0]).is_some() {
            ENDPOINTS[0]
        } else {
            ENDPOINTS[1]
        };
        match reqwest::Url::parse(endpoint.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(TracesError::Invalid {
                    var: endpoint_var,
                    why: "not an http:// or https:// URL with a host",
                })
            }
        }
        if let Some((var, v)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            if v.trim() != "none" {
                return Err(TracesError::Unsupported {
                    var,
                    value: v,
                    why: "Warden sends traces uncompressed (`none`)",
                });
            }
        }
        let headers = match either(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            Some((var, v)) => parse_headers(&v).map_err(|why| TracesError::Invalid { var, why })?,
            None => Vec::new(),
        };
        let ca = either(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        );
        // Whole numbers within bounds: 0 ms or a century of delay is a mistake, not a setting.
        let number = |var: &'static str, default: u64, max: u64, why: &'static str| match get(var) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or(TracesError::Invalid { var, why }),
        };
        let timeout_var = either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        )
        .map_or("OTEL_EXPORTER_OTLP_TIMEOUT", |(var, _)| var);
        let ms = "not a whole number of milliseconds from 1 to 3600000";
        let timeout = Duration::from_millis(number(timeout_var, 10_000, 3_600_000, ms)?);
        let spans = "not a whole number of spans from 1 to 1000000";
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2_048, 1_000_000, spans)?;
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1_000_000, spans)?;
        if max_batch > max_queue {
            return Err(TracesError::Invalid {
                var: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                why: "larger than OTEL_BSP_MAX_QUEUE_SIZE (no batch would ever fill)",
            });
        }
        let settings = crate::otlp::Settings {
            endpoint: endpoint.trim().to_owned(),
            headers,
            schedule_delay: Duration::from_millis(number(
                "OTEL_BSP_SCHEDULE_DELAY",
                5_000,
                3_600_000,
                ms,
            )?),
            max_queue: usize::try_from(max_queue).unwrap_or(usize::MAX),
            max_batch: usize::try_from(max_batch).unwrap_or(usize::MAX),
            resource: resource(),
        };
        let sampler = sampler(&get)?;
        let client = warden_executor::tls::blocking_client(
            &settings.endpoint,
            ca.as_ref().map(|(_, p)| std::path::Path::new(p.trim())),
            timeout,
        )
        .map_err(|e| TracesError::Exporter(e.to_string()))?;
        let exporter = crate::otlp::Exporter::start(settings, client)
            .map_err(|e| TracesError::Exporter(e.to_string()))?;
        Ok(Traces::sampled(Box::new(exporter), sampler))
    }

    /// Every call's spans handed to `sink` (tests keep them).
    #[must_use]
    pub fn to(sink: Box<dyn SpanSink>) -> Traces {
        Traces::sampled(sink, Sampler::AlwaysOn)
    }

    /// The spans of the calls `sampler` samples handed to `sink`.
    #[must_use]
    pub fn sampled(sink: Box<dyn SpanSink>, sampler: Sampler) -> Traces {
        Traces(Some(Arc::new(Exporter {
            sink,
            sampler: Box::new(sampler),
            ids: RandomIdGenerator::default(),
        })))
    }

    /// Spans dropped so far because the exporter's queue was full (0 without traces).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.0.as_ref().map_or(0, |x| x.sink.dropped())
    }

    /// Whether spans are exported.
    #[must_use]
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Exports what is queued (at shutdown; waits up to 5 s).
    pub fn shutdown(&self) {
        if let Some(x) = &self.0 {
            x.sink.flush(std::time::Duration::from_secs(5));
        }
    }

    /// The trace of one governed call, continuing `incoming` when the caller sent it.
    #[must_use]
    pub fn begin(&self, incoming: Option<TraceParent>) -> CallTrace {
        let Some(x) = &self.0 else {
            return CallTrace {
                id: incoming.map(|t| t.trace_id_hex()).unwrap_or_default(),
                recording: None,
            };
        };
        let trace_id =
            incoming.map_or_else(|| x.ids.new_trace_id(), |t| TraceId::from_bytes(t.trace_id));
        let parent = incoming.map(|t| SpanId::from_bytes(t.span_id));
        let cx = incoming.map(|t| {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes(t.span_id),
                TraceFlags::new(t.flags),
                true,
                TraceState::default(),
            ))
        });
        let sampled = x
            .sampler
            .should_sample(
                cx.as_ref(),
                trace_id,
                "tools/call",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision
            == SamplingDecision::RecordAndSample;
        CallTrace {
            id: trace_id.to_string(),
            recording: Some(Recording {
                exporter: Arc::clone(x),
                trace_id,
                root: x.ids.new_span_id(),
                parent,
                sampled,
                at: (SystemTime::now(), Instant::now()),
                spans: Mutex::new(Vec::new()),
            }),
        }
    }
}

/// The sampler `OTEL_TRACES_SAMPLER` (and `_ARG`) names. INVARIANT (an agent does not choose
/// whether it is watched): unless the operator names one, every call is sampled, whatever the
/// caller's `traceparent` says (the OpenTelemetry default, `parentbased_always_on`, would let
/// an agent turn its own traces off with a flag); the operator may choose a parent-based one.
fn sampler(get: &impl Fn(&str) -> Option<String>) -> Result<Sampler, TracesError> {
    let ratio = || match get("OTEL_TRACES_SAMPLER_ARG") {
        None => Ok(1.0),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or(TracesError::Invalid {
                var: "OTEL_TRACES_SAMPLER_ARG",
                why: "not a number from 0 to 1",
            }),
    };
    let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
        None | Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio()?),
        Some("parentbased_always_on") => parent(Sampler::AlwaysOn),
        Some("parentbased_always_off") => parent(Sampler::AlwaysOff),
        Some("parentbased_traceidratio") => parent(Sampler::TraceIdRatioBased(ratio()?)),
        Some(other) => {
            return Err(TracesError::Unsupported {
                var: "OTEL_TRACES_SAMPLER",
                value: other.to_owned(),
                why: "one of always_on, always_off, traceidratio, parentbased_always_on, \
                      parentbased_always_off, parentbased_traceidratio",
            })
        }
    })
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values
/// percent-encoded.
fn parse_headers(v: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, &'static str> {
    v.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or("an entry is not key=value")?;
            // Every `%` starts an escape of two hex digits (the decoder itself lets a stray
            // one through as it is).
            let raw = v.trim().as_bytes();
            let escapes_ok = raw.iter().enumerate().all(|(i, b)| {
                *b != b'%'
                    || raw
                        .get(i + 1..i + 3)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
            });
            if !escapes_ok {
                return Err("a value has a `%` that is not followed by two hex digits");
            }
            let v = percent_encoding::percent_decode_str(v.trim())
                .decode_utf8()
                .map_err(|_| "a value is not UTF-8 once percent-decoded")?;
            Ok((
                http::HeaderName::from_bytes(k.trim().as_bytes())
                    .map_err(|_| "a key is not a valid header name")?,
                http::HeaderValue::from_str(&v)
                    .map_err(|_| "a value is not a valid header value")?,
            ))
        })
        .collect()
}

/// The `service.name` (`OTEL_SERVICE_NAME`, else `warden`), `service.version`, and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource() -> Vec<KeyValue> {
    let mut r = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("warden")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&[Box::new(
            opentelemetry_sdk::resource::EnvResourceDetector::new(),
        )]);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        r = r.with_service_name(name);
    }
    r.build()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect()
}

/// One governed call's trace. Without an exporter it only carries the trace id (the caller's,
/// or none) for the ledger and the log.
pub struct CallTrace {
    id: String,
    recording: Option<Recording>,
}

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTrace")
            .field("id", &self.id)
            .field(
                "recorded",
                &self.recording.as_ref().is_some_and(|r| r.sampled),
            )
            .finish()
    }
}

struct Recording {
    exporter: Arc<Exporter>,
    trace_id: TraceId,
    root: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    /// The call's start, on both clocks: spans carry wall-clock times, stages were timed on
    /// the monotonic one.
    at: (SystemTime, Instant),
    spans: Mutex<Vec<Child>>,
}

/// A finished child span.
struct Child {
    name: Cow<'static, str>,
    kind: SpanKind,
    id: SpanId,
    parent: SpanId,
    span: Interval,
    attributes: Vec<KeyValue>,
    /// `error.type`, when the stage failed.
    error: Option<&'static str>,
}

/// The spans of an execution, allocated before it runs so that the upstream can be told its
/// parent.
#[derive(Debug)]
pub struct Execution {
    execute: SpanId,
    upstream: SpanId,
    /// The `traceparent` the upstream is sent.
    pub traceparent: String,
}

impl CallTrace {
    /// The trace id (32 hex digits), or empty when the call is not traced and the caller sent
    /// none.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A stage of the call (a child of its span) that ran over `span`, with the `attributes`
    /// (made only when the call is recorded).
    pub fn stage(
        &self,
        name: &'static str,
        span: Interval,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        self.stage_ended(name, span, None, attributes);
    }

    /// [`CallTrace::stage`], failed with `error` (its `error.type`) if that is set.
    pub fn stage_ended(
        &self,
        name: &'static str,
        span: Interval,
        error: Option<&'static str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        if let Some(r) = self.recording.as_ref().filter(|r| r.sampled) {
            let attributes = attributes();
            r.push(Child {
                name: Cow::Borrowed(name),
                kind: SpanKind::Internal,
                id: r.exporter.ids.new_span_id(),
                parent: r.root,
                span,
                attributes,
                error,
            });
        }
    }

    /// Span ids for an execution about to run, and the `traceparent` its upstream is sent;
    /// `None` when the call is not traced.
    #[must_use]
    pub fn execution(&self) -> Option<Execution> {
        let r = self.recording.as_ref()?;
        let upstream = r.exporter.ids.new_span_id();
        Some(Execution {
            execute: r.exporter.ids.new_span_id(),
            upstream,
            traceparent: format!("00-{}-{}-{:02x}", r.trace_id, upstream, u8::from(r.sampled)),
        })
    }

    /// The execution's spans: `warden.execute` over `span`, and under it the upstream's call to
    /// `tool` (`<upstream>.<tool>`), the redaction and the receipt, as `timed` says they ran.
    pub fn executed(&self, ids: &Execution, tool: &str, span: Interval, timed: &Timed) {
        let Some(r) = self.recording.as_ref().filter(|r| r.sampled) else {
            return;
        };
        let error = timed.result.as_ref().err().map(exec_error_type);
        let (upstream, name) = tool.split_once('.').unwrap_or(("", tool));
        if let Some(up) = timed.stages.upstream {
            let upstream_error = match &timed.result {
                Err(e) if timed.stages.redaction.is_none() => Some(exec_error_type(e)),
                _ => None,
            };
            r.push(Child {
                name: Cow::Owned(format!("tools/call {name}")),
                kind: SpanKind::Client,
                id: ids.upstream,
                parent: ids.execute,
                span: up,
                attributes: vec![
                    KeyValue::new("mcp.method.name", "tools/call"),
                    KeyValue::new("gen_ai.tool.name", name.to_owned()),
                    KeyValue::new("gen_ai.operation.name", "execute_tool"),
                    KeyValue::new("warden.upstream", upstream.to_owned()),
                ],
                error: upstream_error,
            });
        }
        let mut attributes = Vec::new();
        if let Ok(x) = &timed.result {
            attributes.push(KeyValue::new(
                "warden.receipt.index",
                i64::try_from(x.receipt_index).unwrap_or(i64::MAX),
            ));
        }
        for (stage, interval, attrs) in [
            (
                "warden.redaction",
                timed.stages.redaction,
                timed.result.as_ref().ok().map(|x| {
                    vec![KeyValue::new(
                        "warden.redactions",
                        i64::try_from(x.redactions).unwrap_or(i64::MAX),
                    )]
                }),
            ),
            ("warden.receipt", timed.stages.receipt, None),
        ] {
            if let Some(span) = interval {
                r.push(Child {
                    name: Cow::Borrowed(stage),
                    kind: SpanKind::Internal,
                    id: r.exporter.ids.new_span_id(),
                    parent: ids.execute,
                    span,
                    attributes: attrs.unwrap_or_default(),
                    error: None,
                });
            }
        }
        r.push(Child {
            name: Cow::Borrowed("warden.execute"),
            kind: SpanKind::Internal,
            id: ids.execute,
            parent: r.root,
            span,
            attributes,
            error,
        });
    }

    /// Ends the call's span (named for `tool`, from `started` to now) with what became of it
    /// (`outcome`: its attributes and `error.type`, made only when the call is recorded), and
    /// hands every span to the exporter.
    pub fn finish(
        self,
        tool: &str,
        started: Instant,
        outcome: impl FnOnce() -> (Vec<KeyValue>, Option<&'static str>),
    ) {
        let Some(r) = self.recording.filter(|r| r.sampled) else {
            return;
        };
        let (attributes, error) = outcome();
        let root = Child {
            name: Cow::Owned(format!("tools/call {tool}")),
            kind: SpanKind::Server,
            id: r.root,
            parent: r.parent.unwrap_or(SpanId::INVALID),
            span: Interval::since(started),
            attributes,
            error,
        };
        let children = std::mem::take(
            &mut *r
                .spans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut spans: Vec<SpanRecord> = Vec::with_capacity(children.len() + 1);
        spans.extend(children.into_iter().map(|c| record(&r, c, false)));
        let remote = r.parent.is_some();
        spans.push(record(&r, root, remote));
        r.exporter.sink.take(spans);
    }
}

/// The exporter's record of `c`, a span of `r`'s trace.
fn record(r: &Recording, c: Child, parent_remote: bool) -> SpanRecord {
    let ns = |at: Instant| {
        wall(r.at, at)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    SpanRecord {
        trace_id: r.trace_id.to_bytes(),
        id: c.id.to_bytes(),
        parent: (c.parent != SpanId::INVALID).then(|| c.parent.to_bytes()),
        parent_remote,
        kind: match c.kind {
            SpanKind::Server => crate::otlp::SERVER,
            SpanKind::Client => crate::otlp::CLIENT,
            _ => crate::otlp::INTERNAL,
        },
        name: c.name,
        start_ns: ns(c.span.start),
        end_ns: ns(c.span.end),
        attributes: c.attributes,
        error: c.error,
    }
}

impl Recording {
    fn push(&self, c: Child) {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(c);
    }
}

/// `at` on the wall clock, from the call's start on both clocks.
fn wall((wall, mono): (SystemTime, Instant), at: Instant) -> SystemTime {
    match at.checked_duration_since(mono) {
        Some(d) => wall.checked_add(d).unwrap_or(wall),
        None => wall
            .checked_sub(mono.saturating_duration_since(at))
            .unwrap_or(wall),
    }
}

/// The `error.type` of an execution that did not complete: a fixed word, never the error's
/// text (an upstream's message may quote the arguments).
#[must_use]
pub fn exec_error_type(e: &warden_executor::ExecError) -> &'static str {
    use warden_executor::ExecError as E;
    match e {
        E::Grant(_) => "grant_refused",
        E::Timeout { .. } => "timeout",
        E::Upstream { .. } => "upstream_error",
        E::Unavailable { .. } => "upstream_unavailable",
        E::Withdrawn { .. } => "tool_withdrawn",
        E::Cancelled => "cancelled",
        E::Receipt(_) => "receipt_not_recorded",
        _ => "execution_failed",
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "tests fail loudly"
    )]

    use super::*;

    /// Keeps what it is handed.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanRecord>>>);

    impl SpanSink for Kept {
        fn take(&self, spans: Vec<SpanRecord>) {
            self.0.lock().unwrap().extend(spans);
        }
        fn flush(&self, _: std::time::Duration) {}
    }

    impl Kept {
        fn spans(&self) -> Vec<SpanRecord> {
            self.0.lock().unwrap().clone()
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn traces_are_opt_in_by_the_standard_variables() {
        assert!(!wanted(env(&[])).unwrap());
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).unwrap());
        assert!(wanted(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c/v1/traces"
        )]))
        .unwrap());
        assert!(wanted(env(&[("OTEL_TRACES_EXPORTER", "otlp")])).unwrap());
        assert!(!wanted(env(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
        ]))
        .unwrap());
        assert!(!wanted(env(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "otlp")
        ]))
        .unwrap());
        assert!(wanted(env(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        ]))
        .unwrap());
    }

    #[test]
    fn another_exporter_or_protocol_is_refused_naming_the_variable() {
        let e = wanted(env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_EXPORTER"), "{e}");
        let e = wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            "{e}"
        );
        // Traces off: the protocol is not read.
        assert!(!wanted(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap());
    }

    #[test]
    fn bad_exporter_settings_stop_the_start_naming_the_variable_never_its_value() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
        let err = |vars: &[(&str, &str)]| {
            Traces::from_lookup(env(vars))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(&[endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_COMPRESSION"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not-a-url")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let e = err(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/v1/traces")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
        let e = err(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=%ZZsecret"),
        ]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_HEADERS") && !e.contains("secret"),
            "{e}"
        );
        let e = err(&[endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "api-key")]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
        assert!(!e.contains("api-key"), "the value is echoed: {e}");
        let e = err(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "bad name=secret-7"),
        ]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS") && !e.contains("secret-7"),
            "{e}"
        );
        for (var, value) in [
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "18446744073709551615"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ] {
            let e = err(&[endpoint, (var, value)]);
            assert!(e.contains(var), "{var}={value}: {e}");
        }
        // Headers as the specification writes them: percent-encoded values.
        let h = parse_headers("api-key=a%20b%3Dc, x-tenant = t1").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].1, "a b=c");
        assert_eq!(h[1].0.as_str(), "x-tenant");
    }

    #[test]
    fn without_an_exporter_only_the_callers_trace_id_is_kept() {
        let t = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let off = Traces::off();
        assert_eq!(off.begin(t).id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(off.begin(None).id(), "");
        assert!(off.begin(t).execution().is_none());
    }

    #[test]
    fn a_call_continues_the_callers_trace_and_its_stages_are_its_children() {
        let kept = Kept::default();
        let traces = Traces::to(Box::new(kept.clone()));
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let started = Instant::now();
        let t = traces.begin(tp);
        assert_eq!(t.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        t.stage("warden.decide", Interval::since(started), Vec::new);
        let ex = t.execution().unwrap();
        assert!(ex
            .traceparent
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(ex.traceparent.ends_with("-01"));
        let timed = Timed {
            result: Err(warden_executor::ExecError::Cancelled),
            stages: warden_executor::Stages {
                upstream: Some(Interval::since(started)),
                ..Default::default()
            },
        };
        t.executed(&ex, "time.now", Interval::since(started), &timed);
        t.finish("time.now", started, || (vec![], Some("failed")));
        let spans = kept.spans();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "warden.decide",
                "tools/call now",
                "warden.execute",
                "tools/call time.now"
            ]
        );
        let root = &spans[3];
        assert_eq!(root.parent, Some(tp.unwrap().span_id));
        assert!(root.parent_remote);
        assert_eq!(root.kind, crate::otlp::SERVER);
        assert_eq!(spans[0].parent, Some(root.id));
        assert_eq!(spans[2].parent, Some(root.id));
        assert!(!spans[0].parent_remote);
        // The upstream's span is the parent named in the traceparent it was sent.
        assert_eq!(spans[1].parent, Some(spans[2].id));
        assert_eq!(spans[1].kind, crate::otlp::CLIENT);
        assert!(ex
            .traceparent
            .contains(&warden_core::trace::hex(&spans[1].id)));
        assert!(spans.iter().all(|s| s.trace_id == tp.unwrap().trace_id));
        assert_eq!(spans[1].error, Some("cancelled"));
        assert!(spans
            .iter()
            .all(|s| s.start_ns > 0 && s.start_ns <= s.end_ns));
    }

    #[test]
    fn a_caller_cannot_turn_its_traces_off_unless_the_operator_lets_parents_decide() {
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let call = |traces: &Traces| {
            let t = traces.begin(unsampled);
            let ex = t.execution().unwrap();
            t.stage("warden.decide", Interval::since(Instant::now()), Vec::new);
            t.finish("x.y", Instant::now(), || (vec![], None));
            ex.traceparent
        };
        // The default: traced all the same, and the upstream told so.
        let kept = Kept::default();
        let sent = call(&Traces::to(Box::new(kept.clone())));
        assert!(sent.ends_with("-01"), "{sent}");
        assert_eq!(kept.spans().len(), 2);
        // `OTEL_TRACES_SAMPLER=parentbased_always_on`: the caller's flag is followed.
        let parents = sampler(&env(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")])).unwrap();
        let kept = Kept::default();
        let sent = call(&Traces::sampled(Box::new(kept.clone()), parents));
        assert!(sent.ends_with("-00"), "{sent}");
        assert!(kept.spans().is_empty());
        // Samplers named wrong, or a ratio out of range: refused, naming the variable.
        for (var, value) in [
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ] {
            // (The first of a name is the one read.)
            let e = sampler(&env(&[
                (var, value),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(e.contains(var), "{e}");
        }
    }
}
