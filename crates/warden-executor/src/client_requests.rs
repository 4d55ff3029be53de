//! Requests an upstream sends the agent's client while it serves a call — sampling
//! (`sampling/createMessage`), elicitation (`elicitation/create`), roots (`roots/list`) — and the
//! log messages it sends (`notifications/message`).
//!
//! Each reaches the client of the session whose call the upstream is serving, and only:
//! - when the manifest lets that upstream ask it (`client_requests`; Warden offers the
//!   capability to the upstream only then);
//! - while the call it serves is in flight (an upstream may not ask outside a call it serves):
//!   a request on a Streamable HTTP upstream names its call by the stream it came on; on stdio
//!   it must be the only call in flight on that connection;
//! - when the client declared the capability (the front-end says).
//!
//! What goes to the client is redacted (exact secrets and the call's detectors); every request
//! is recorded in the ledger before it is forwarded (or refused, with why), and nothing is
//! asked once the call it served has ended.

#![expect(
    deprecated,
    reason = "sampling, roots and logging are deprecated by SEP-2577 and still what upstreams send (issue 20)"
)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rmcp::model::{
    CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
    ListRootsResult, LoggingMessageNotificationParam, RequestId,
};
use rmcp::ErrorData;
use warden_ledger::{Entry, EventRecord, Ledger};
use warden_manifest::raw::ClientRequestKind;

use crate::redact::Redactor;

/// The agent's client, as the front-end that holds its connection reaches it.
pub trait ClientSide: Send + Sync {
    /// Whether the client declared it can answer `kind` (for the call it made).
    fn declares(&self, kind: ClientRequestKind) -> bool;

    /// Asks the client's model (`sampling/createMessage`).
    ///
    /// # Errors
    /// The client's error, or the front-end's (the client did not declare sampling).
    fn sample(
        &self,
        params: CreateMessageRequestParams,
    ) -> BoxFuture<'static, Result<CreateMessageResult, ErrorData>>;

    /// Asks the user (`elicitation/create`).
    ///
    /// # Errors
    /// As [`ClientSide::sample`].
    fn elicit(
        &self,
        params: ElicitRequestParams,
    ) -> BoxFuture<'static, Result<ElicitResult, ErrorData>>;

    /// Asks for the client's roots (`roots/list`).
    ///
    /// # Errors
    /// As [`ClientSide::sample`].
    fn roots(&self) -> BoxFuture<'static, Result<ListRootsResult, ErrorData>>;

    /// Passes on a log message (`notifications/message`), already redacted.
    fn log(&self, params: LoggingMessageNotificationParam);
}

/// One call in flight on an upstream connection, and who asked for it.
struct Serving {
    seq: u64,
    /// The id the upstream knows the call by, once sent.
    upstream_id: Option<RequestId>,
    who: Who,
    redact: BTreeSet<String>,
    client: Option<Arc<dyn ClientSide>>,
    /// Fires when the call ends: nothing is asked of its client after that.
    ended: tokio_util::sync::CancellationToken,
}

/// What a ledger event about a call names.
#[derive(Clone)]
pub(crate) struct Who {
    pub(crate) agent: String,
    pub(crate) tenant: String,
    pub(crate) session: String,
    pub(crate) request_id: String,
    pub(crate) trace_id: String,
}

/// The calls in flight on one upstream's connections, for routing what the upstream asks.
#[derive(Default)]
pub(crate) struct InFlightCalls {
    calls: Mutex<Vec<Serving>>,
    next: std::sync::atomic::AtomicU64,
    /// The last call that ended while it was the only one in flight, and when: a log message
    /// the upstream sent just before that call's result may be handled just after it (rmcp
    /// handles an upstream's notifications apart from its responses), within [`LOG_GRACE`].
    last_alone: Mutex<Option<(std::time::Instant, LogTarget)>>,
}

/// How long after a call ends a log message with no call in flight still goes to its client.
const LOG_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a call's log messages go: its client, with the call's detectors.
#[derive(Clone)]
struct LogTarget {
    redact: BTreeSet<String>,
    client: Arc<dyn ClientSide>,
}

/// Removes a call from [`InFlightCalls`] when it ends, however it ends.
pub(crate) struct ServingGuard {
    calls: Arc<InFlightCalls>,
    seq: u64,
}

impl ServingGuard {
    /// The upstream's id for the call, once it is sent.
    pub(crate) fn sent_as(&self, id: RequestId) {
        if let Ok(mut calls) = self.calls.calls.lock() {
            if let Some(c) = calls.iter_mut().find(|c| c.seq == self.seq) {
                c.upstream_id = Some(id);
            }
        }
    }
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        let Ok(mut calls) = self.calls.calls.lock() else {
            return;
        };
        let alone = calls.len() == 1;
        let mut ended = None;
        calls.retain(|c| {
            let mine = c.seq == self.seq;
            if mine {
                c.ended.cancel();
                ended = c.client.clone().map(|client| LogTarget {
                    redact: c.redact.clone(),
                    client,
                });
            }
            !mine
        });
        drop(calls);
        if let (true, Some(target), Ok(mut last)) = (alone, ended, self.calls.last_alone.lock()) {
            *last = Some((std::time::Instant::now(), target));
        }
    }
}

impl InFlightCalls {
    /// Registers a call before it is sent (an upstream may ask before the send returns).
    pub(crate) fn enter(
        self: &Arc<Self>,
        who: Who,
        redact: &BTreeSet<String>,
        client: Option<Arc<dyn ClientSide>>,
    ) -> ServingGuard {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Serving {
                seq,
                upstream_id: None,
                who,
                redact: redact.clone(),
                client,
                ended: tokio_util::sync::CancellationToken::new(),
            });
        }
        ServingGuard {
            calls: Arc::clone(self),
            seq,
        }
    }

    /// Whether no call is in flight.
    fn none(&self) -> bool {
        self.calls.lock().is_ok_and(|c| c.is_empty())
    }

    /// The call a request from the upstream belongs to: the one it names by the stream it came
    /// on (a Streamable HTTP upstream); on a connection that cannot say (stdio), the one call
    /// in flight — with two or more, which one the request serves is unknown, and it is
    /// refused.
    fn route(
        &self,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<Routed, &'static str> {
        let calls = self
            .calls
            .lock()
            .map_err(|_| "the gateway's call table is unusable")?;
        // INVARIANT (a request reaches only the client of the call it serves): never a guess
        // between two calls, which may be two agents'.
        let found = match origin {
            Some(rmcp::service::InboundStreamOrigin::OutboundRequest(id)) => {
                calls.iter().find(|c| c.upstream_id.as_ref() == Some(id))
            }
            Some(rmcp::service::InboundStreamOrigin::Unassociated) => {
                return Err("the request came on no call's stream: an upstream may ask only while it serves a call");
            }
            None => match calls.as_slice() {
                [] => return Err("no call of any agent is in flight on this upstream: an upstream may ask only while it serves a call"),
                [one] => Some(one),
                _ => return Err("several calls are in flight on this upstream, and the request does not say which it serves"),
            },
        };
        let c = found.ok_or("the request names no call in flight on this upstream")?;
        Ok(Routed {
            who: c.who.clone(),
            redact: c.redact.clone(),
            client: c.client.clone(),
            ended: c.ended.clone(),
        })
    }
}

/// The call an upstream's request belongs to: who made it, its detectors, its client.
struct Routed {
    who: Who,
    redact: BTreeSet<String>,
    client: Option<Arc<dyn ClientSide>>,
    ended: tokio_util::sync::CancellationToken,
}

/// What one upstream's relay needs to answer its requests.
#[derive(Clone)]
pub(crate) struct Asks {
    pub(crate) upstream: String,
    pub(crate) allowed: BTreeSet<ClientRequestKind>,
    pub(crate) calls: Arc<InFlightCalls>,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) ledger: Option<Arc<Ledger>>,
    /// Longest the client may take to answer: the upstream's call timeout (the call it serves
    /// cannot outlast it anyway).
    pub(crate) wait: std::time::Duration,
}

impl Asks {
    /// An upstream's `sampling/createMessage`.
    pub(crate) async fn sample(
        &self,
        mut params: CreateMessageRequestParams,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let kind = ClientRequestKind::Sampling;
        let to = self.admit(kind, origin).await?;
        // INVARIANT (one upstream never reads another's context): the client is not asked to
        // add what other servers gave it.
        params.include_context = None;
        let params = self.redacted_or_refused(kind, &to, params).await?;
        self.forwarding(kind, &to.who).await?;
        let answer = self.within(&to.ended, to.client.sample(params)).await;
        self.answered(kind, &to.who, answer.as_ref().err()).await;
        answer
    }

    /// An upstream's `elicitation/create`.
    pub(crate) async fn elicit(
        &self,
        params: ElicitRequestParams,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<ElicitResult, ErrorData> {
        let kind = ClientRequestKind::Elicitation;
        let to = self.admit(kind, origin).await?;
        let params = self.redacted_or_refused(kind, &to, params).await?;
        self.forwarding(kind, &to.who).await?;
        let answer = self.within(&to.ended, to.client.elicit(params)).await;
        self.answered(kind, &to.who, answer.as_ref().err()).await;
        answer
    }

    /// An upstream's `roots/list`.
    pub(crate) async fn roots(
        &self,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<ListRootsResult, ErrorData> {
        let kind = ClientRequestKind::Roots;
        let to = self.admit(kind, origin).await?;
        self.forwarding(kind, &to.who).await?;
        let answer = self.within(&to.ended, to.client.roots()).await;
        self.answered(kind, &to.who, answer.as_ref().err()).await;
        answer
    }

    /// The client's answer; an error once [`Asks::wait`] has passed or the call it served
    /// has ended.
    async fn within<T>(
        &self,
        ended: &tokio_util::sync::CancellationToken,
        answer: BoxFuture<'static, Result<T, ErrorData>>,
    ) -> Result<T, ErrorData> {
        tokio::select! {
            r = tokio::time::timeout(self.wait, answer) => r.unwrap_or_else(|_| {
                Err(ErrorData::internal_error(
                    format!(
                        "the agent's client did not answer within {} ms",
                        self.wait.as_millis()
                    ),
                    None,
                ))
            }),
            () = ended.cancelled() => Err(ErrorData::internal_error(
                "the call this request served has ended",
                None,
            )),
        }
    }

    /// An upstream's log message: redacted, to the client of the one call in flight on the
    /// connection (dropped when there is none, or several).
    pub(crate) fn log(&self, params: LoggingMessageNotificationParam) {
        let target = match self.calls.route(None) {
            Ok(Routed {
                redact,
                client: Some(client),
                ..
            }) => Some(LogTarget { redact, client }),
            Ok(_) => None,
            // None in flight (not several): the call that just ended alone, within the grace.
            Err(_) if self.calls.none() => self.calls.last_alone.lock().ok().and_then(|l| {
                l.as_ref()
                    .filter(|(at, _)| at.elapsed() <= LOG_GRACE)
                    .map(|(_, t)| t.clone())
            }),
            Err(_) => None,
        };
        let Some(LogTarget { redact, client }) = target else {
            tracing::debug!(upstream = %self.upstream, "log message outside any one session's call: not passed on");
            return;
        };
        if let Ok(params) = self.redacted(params, &redact) {
            client.log(params);
        }
    }

    /// The call `kind` is asked for, if the manifest allows it, a call is in flight and a
    /// client can be asked; otherwise the refusal, recorded.
    async fn admit(
        &self,
        kind: ClientRequestKind,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<Forward, ErrorData> {
        let routed = self.calls.route(origin);
        let why = match &routed {
            _ if !self.allowed.contains(&kind) => Some(format!(
                "the manifest does not let upstream `{}` ask for {} (`client_requests`)",
                self.upstream,
                kind.as_str()
            )),
            Err(why) => Some((*why).to_owned()),
            Ok(Routed { client: None, .. }) => Some(
                "the agent's connection cannot carry requests from upstreams (a client on an \
                 earlier revision than 2026-07-28 over HTTP)"
                    .to_owned(),
            ),
            Ok(Routed {
                client: Some(c), ..
            }) if !c.declares(kind) => Some(format!(
                "the agent's client did not declare {}",
                kind.as_str()
            )),
            Ok(_) => None,
        };
        match (why, routed) {
            (
                None,
                Ok(Routed {
                    who,
                    redact,
                    client: Some(client),
                    ended,
                }),
            ) => Ok(Forward {
                who,
                redact,
                client,
                ended,
            }),
            (why, routed) => {
                let why = why.unwrap_or_default();
                let who = routed.ok().map(|r| r.who);
                self.record(kind, who.as_ref(), &format!("refused: {why}"))
                    .await;
                Err(refused(kind, &why))
            }
        }
    }

    /// `params` with the secrets and the call's detector matches redacted; what cannot be
    /// redacted in place is refused, recorded.
    async fn redacted_or_refused<T>(
        &self,
        kind: ClientRequestKind,
        to: &Forward,
        params: T,
    ) -> Result<T, ErrorData>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        match self.redacted(params, &to.redact) {
            Ok(p) => Ok(p),
            Err(e) => {
                let why = "it held secrets in a field that cannot be redacted in place";
                self.record(kind, Some(&to.who), &format!("refused: {why}"))
                    .await;
                Err(e)
            }
        }
    }

    /// `params` with the secrets and the call's detector matches redacted.
    fn redacted<T>(&self, params: T, on: &BTreeSet<String>) -> Result<T, ErrorData>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut v = serde_json::to_value(&params)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        if self.redactor.redact_json(&mut v, on) == 0 {
            return Ok(params);
        }
        // INVARIANT (INV-010, fail closed): what cannot be redacted in place is not passed on.
        serde_json::from_value(v).map_err(|_| {
            ErrorData::invalid_request(
                "Warden refused the request: it held secrets in a field that cannot be redacted in place",
                None,
            )
        })
    }

    /// Records that the request goes to the agent's client; refuses it when that cannot be
    /// recorded.
    async fn forwarding(&self, kind: ClientRequestKind, who: &Who) -> Result<(), ErrorData> {
        // INVARIANT (fail-closed, INV-003): nothing reaches the client unrecorded.
        if self
            .record(kind, Some(who), "forwarded to the agent's client")
            .await
        {
            Ok(())
        } else {
            Err(refused(kind, "it could not be recorded"))
        }
    }

    /// Records how the client answered (best effort: the request was recorded already).
    async fn answered(&self, kind: ClientRequestKind, who: &Who, error: Option<&ErrorData>) {
        let what = match error {
            None => "the agent's client answered".to_owned(),
            Some(e) => format!("the agent's client refused: {}", e.message),
        };
        self.record(kind, Some(who), &what).await;
    }

    /// Records an `upstream.<kind>` event; answers whether it was recorded (a failure is
    /// logged).
    async fn record(&self, kind: ClientRequestKind, who: Option<&Who>, what: &str) -> bool {
        let reason = format!(
            "upstream `{}` asked for {}: {what}",
            self.upstream,
            kind.as_str()
        );
        let reason = self
            .redactor
            .redact_str(&reason, &BTreeSet::new())
            .map_or(reason, |(r, _)| r);
        tracing::info!(upstream = %self.upstream, kind = kind.as_str(), "{reason}");
        // Observing an upstream (`warden upstreams pin`) runs no call: nothing to record.
        let Some(ledger) = &self.ledger else {
            return true;
        };
        let none = String::new();
        let event = Entry::Event(EventRecord {
            kind: format!("upstream.{}", kind.as_str()),
            agent: who.map_or_else(|| none.clone(), |w| w.agent.clone()),
            tenant: who.map_or_else(|| none.clone(), |w| w.tenant.clone()),
            session: who.map_or_else(|| none.clone(), |w| w.session.clone()),
            reason,
            trace_id: who.map_or_else(|| none.clone(), |w| w.trace_id.clone()),
            request_id: who.map_or(none, |w| w.request_id.clone()),
            time: crate::execution::now_ms().div_euclid(1000),
        });
        let recorded = match ledger.submit(&event) {
            Ok(t) => t.recorded().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = &recorded {
            tracing::error!(error = %e, "could not record an upstream's request");
        }
        recorded.is_ok()
    }
}

/// Where an admitted request goes.
struct Forward {
    who: Who,
    redact: BTreeSet<String>,
    client: Arc<dyn ClientSide>,
    ended: tokio_util::sync::CancellationToken,
}

fn refused(kind: ClientRequestKind, why: &str) -> ErrorData {
    ErrorData::invalid_request(
        format!("Warden refused the {} request: {why}", kind.as_str()),
        None,
    )
}

#[cfg(test)]
mod tests {
    #![expect(
        deprecated,
        reason = "logging is deprecated by SEP-2577 and still sent"
    )]
    use super::*;

    /// A client that keeps the log messages it is given.
    #[derive(Default)]
    struct Logs(Mutex<Vec<String>>);

    impl ClientSide for Logs {
        fn declares(&self, _kind: ClientRequestKind) -> bool {
            false
        }
        fn sample(
            &self,
            _params: CreateMessageRequestParams,
        ) -> BoxFuture<'static, Result<CreateMessageResult, ErrorData>> {
            Box::pin(async { Err(ErrorData::internal_error("not asked", None)) })
        }
        fn elicit(
            &self,
            _params: ElicitRequestParams,
        ) -> BoxFuture<'static, Result<ElicitResult, ErrorData>> {
            Box::pin(async { Err(ErrorData::internal_error("not asked", None)) })
        }
        fn roots(&self) -> BoxFuture<'static, Result<ListRootsResult, ErrorData>> {
            Box::pin(async { Err(ErrorData::internal_error("not asked", None)) })
        }
        fn log(&self, params: LoggingMessageNotificationParam) {
            if let Ok(mut l) = self.0.lock() {
                l.push(params.data.to_string());
            }
        }
    }

    fn who(agent: &str) -> Who {
        Who {
            agent: agent.into(),
            tenant: "t".into(),
            session: "s".into(),
            request_id: "r".into(),
            trace_id: "x".into(),
        }
    }

    fn message(text: &str) -> LoggingMessageNotificationParam {
        LoggingMessageNotificationParam::new(
            rmcp::model::LoggingLevel::Info,
            serde_json::json!(text),
        )
    }

    fn seen(l: &Logs) -> Vec<String> {
        l.0.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    #[test]
    fn a_log_goes_to_the_one_call_in_flight_or_the_one_that_just_ended_alone_and_never_a_guess() {
        let calls = Arc::new(InFlightCalls::default());
        let asks = Asks {
            upstream: "u".into(),
            allowed: BTreeSet::new(),
            calls: Arc::clone(&calls),
            redactor: Arc::new(
                Redactor::new(["s3cr3t-value"].into_iter()).unwrap_or_else(|_| unreachable!()),
            ),
            ledger: None,
            wait: std::time::Duration::from_secs(1),
        };
        let (a, b) = (Arc::new(Logs::default()), Arc::new(Logs::default()));
        // Nobody's call: dropped.
        asks.log(message("idle"));
        // One call: its client gets it, redacted.
        let first = calls.enter(who("a"), &BTreeSet::new(), Some(a.clone()));
        asks.log(message("during a: s3cr3t-value"));
        // Two calls: which one it concerns is unknown: dropped.
        let second = calls.enter(who("b"), &BTreeSet::new(), Some(b.clone()));
        asks.log(message("during both"));
        drop(first);
        // `b` is alone now; when it ends, a message handled just after still reaches it.
        drop(second);
        asks.log(message("just after b"));
        assert_eq!(seen(&a), ["\"during a: [REDACTED:secret]\""]);
        assert_eq!(seen(&b), ["\"just after b\""]);
        // Past the grace, it is nobody's.
        if let Ok(mut last) = calls.last_alone.lock() {
            if let Some((at, _)) = last.as_mut() {
                *at -= LOG_GRACE * 2;
            }
        }
        asks.log(message("much later"));
        assert_eq!(seen(&b).len(), 1);
    }
}
