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
//! (the same ones the stage histograms use), and handed to the SDK's batch processor, which
//! exports from its own thread: a call never waits for the exporter, and a collector that is
//! down costs dropped spans, never a call.
//!
//! INVARIANT (secrets never leave in telemetry): a span's attributes are names the manifest
//! and Warden define (tool, tier, rules, decision, ids Warden minted, counts) and the caller's
//! agent and tenant ids; never an argument value, a result, an error text (which may quote
//! either) or a secret.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SamplingDecision, ShouldSample, SpanData, SpanEvents,
    SpanLinks, SpanProcessor,
};
use warden_core::trace::TraceParent;
use warden_executor::{Interval, Timed};

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
    /// The OTLP exporter could not be built (an invalid endpoint, headers, timeout).
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
    processor: Box<dyn SpanProcessor>,
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
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
    /// with `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`, `..._CERTIFICATE`
    /// (each also in its `_TRACES_` form), the `OTEL_BSP_*` batch settings,
    /// `OTEL_TRACES_SAMPLER` (and `_ARG`), `OTEL_SERVICE_NAME` (default `warden`) and
    /// `OTEL_RESOURCE_ATTRIBUTES`, as the OpenTelemetry SDK reads them. The HTTP client is
    /// built like every other client Warden makes: verified TLS, no redirect, no proxy from the
    /// environment.
    ///
    /// # Errors
    /// [`TracesError`] when the variables ask for what cannot be set up.
    pub fn from_env() -> Result<Traces, TracesError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if !wanted(get)? {
            return Ok(Traces::off());
        }
        let either = |signal: &str, general: &str| get(signal).or_else(|| get(general));
        let endpoint = either(ENDPOINTS[0], ENDPOINTS[1])
            .unwrap_or_else(|| "http://localhost:4318".to_owned());
        let ca = either(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        );
        let timeout = either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        )
        .and_then(|ms| ms.trim().parse().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        );
        let client = warden_executor::tls::blocking_client(
            endpoint.trim(),
            ca.as_deref().map(std::path::Path::new),
            timeout,
        )
        .map_err(|e| TracesError::Exporter(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .map_err(|e| TracesError::Exporter(e.to_string()))?;
        let mut processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(&resource());
        Ok(Traces::to(Box::new(processor)))
    }

    /// Traces handed to `processor`, sampled as `OTEL_TRACES_SAMPLER` says (tests give an
    /// in-memory exporter's processor).
    #[must_use]
    pub fn to(processor: Box<dyn SpanProcessor>) -> Traces {
        Traces(Some(Arc::new(Exporter {
            processor,
            sampler: opentelemetry_sdk::trace::Config::default().sampler,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("warden")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })))
    }

    /// Whether spans are exported.
    #[must_use]
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Exports what is queued and stops the exporter (at shutdown; waits up to 5 s).
    pub fn shutdown(&self) {
        if let Some(x) = &self.0 {
            if let Err(e) = x.processor.shutdown() {
                tracing::warn!(error = %e, "traces: the last spans were not all exported");
            }
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

/// The `service.name` (`OTEL_SERVICE_NAME`, else `warden`), `service.version`, and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource() -> opentelemetry_sdk::Resource {
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

    /// A stage of the call (a child of its span) that ran over `span`.
    pub fn stage(&self, name: &'static str, span: Interval, attributes: Vec<KeyValue>) {
        if let Some(r) = self.recording.as_ref().filter(|r| r.sampled) {
            r.push(Child {
                name: Cow::Borrowed(name),
                kind: SpanKind::Internal,
                id: r.exporter.ids.new_span_id(),
                parent: r.root,
                span,
                attributes,
                error: None,
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

    /// Ends the call's span (named for `tool`, from `started` to now) with what became of it,
    /// and hands every span to the exporter.
    pub fn finish(
        self,
        tool: &str,
        started: Instant,
        attributes: Vec<KeyValue>,
        error: Option<&'static str>,
    ) {
        let Some(r) = self.recording.filter(|r| r.sampled) else {
            return;
        };
        let root = Child {
            name: Cow::Owned(format!("tools/call {tool}")),
            kind: SpanKind::Server,
            id: r.root,
            parent: r.parent.unwrap_or(SpanId::INVALID),
            span: Interval::since(started),
            attributes,
            error,
        };
        let children = r
            .spans
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let x = &r.exporter;
        let data = |c: Child, remote: bool| SpanData {
            span_context: SpanContext::new(
                r.trace_id,
                c.id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: c.parent,
            parent_span_is_remote: remote,
            span_kind: c.kind,
            name: c.name,
            start_time: wall(r.at, c.span.start),
            end_time: wall(r.at, c.span.end),
            attributes: match c.error {
                Some(e) => {
                    let mut a = c.attributes;
                    a.push(KeyValue::new("error.type", e));
                    a
                }
                None => c.attributes,
            },
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if c.error.is_some() {
                Status::error("failed")
            } else {
                Status::Unset
            },
            instrumentation_scope: x.scope.clone(),
        };
        for c in children {
            x.processor.on_end(data(c, false));
        }
        x.processor.on_end(data(root, r.parent.is_some()));
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
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(
            &self,
            _: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    impl Kept {
        fn spans(&self) -> Vec<SpanData> {
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
        t.stage("warden.decide", Interval::since(started), vec![]);
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
        t.finish("time.now", started, vec![], Some("failed"));
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
        assert_eq!(root.parent_span_id, SpanId::from_bytes(tp.unwrap().span_id));
        assert!(root.parent_span_is_remote);
        assert_eq!(spans[0].parent_span_id, root.span_context.span_id());
        assert_eq!(spans[2].parent_span_id, root.span_context.span_id());
        // The upstream's span is the parent named in the traceparent it was sent.
        assert_eq!(spans[1].parent_span_id, spans[2].span_context.span_id());
        assert!(ex
            .traceparent
            .contains(&spans[1].span_context.span_id().to_string()));
        assert!(spans
            .iter()
            .all(|s| s.span_context.trace_id() == root.span_context.trace_id()));
        assert!(spans[1]
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "error.type" && kv.value.as_str() == "cancelled"));
    }

    #[test]
    fn an_unsampled_caller_is_followed_and_nothing_is_exported() {
        let kept = Kept::default();
        let traces = Traces::to(Box::new(kept.clone()));
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let t = traces.begin(tp);
        let ex = t.execution().unwrap();
        assert!(ex.traceparent.ends_with("-00"), "{}", ex.traceparent);
        t.stage("warden.decide", Interval::since(Instant::now()), vec![]);
        t.finish("x.y", Instant::now(), vec![], None);
        assert!(kept.spans().is_empty());
    }
}
