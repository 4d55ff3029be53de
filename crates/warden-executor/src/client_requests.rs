//! Requests an upstream sends the agent's client while it serves a call — sampling
//! (`sampling/createMessage`), elicitation (`elicitation/create`), roots (`roots/list`) — and the
//! log messages it sends (`notifications/message`).
//!
//! Each reaches the client of the session whose call the upstream is serving, and only:
//! - when the manifest lets that upstream ask it (`client_requests`; Warden offers the
//!   capability to the upstream only then);
//! - while one of that session's calls is in flight on the connection (an upstream may not
//!   ask outside a call it serves); a request on a Streamable HTTP upstream names its call by
//!   the stream it came on, on stdio it must be the only session with a call in flight there;
//! - when the client declared the capability (the front-end says).
//!
//! What goes to the client is redacted (exact secrets and the call's detectors); every request
//! is recorded in the ledger, forwarded or refused, with why.

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
    session_key: String,
    who: Who,
    redact: BTreeSet<String>,
    client: Option<Arc<dyn ClientSide>>,
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
        if let Ok(mut calls) = self.calls.calls.lock() {
            calls.retain(|c| c.seq != self.seq);
        }
    }
}

impl InFlightCalls {
    /// Registers a call before it is sent (an upstream may ask before the send returns).
    pub(crate) fn enter(
        self: &Arc<Self>,
        session_key: &str,
        who: Who,
        redact: &BTreeSet<String>,
        client: Option<Arc<dyn ClientSide>>,
    ) -> ServingGuard {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Serving {
                seq,
                upstream_id: None,
                session_key: session_key.to_owned(),
                who,
                redact: redact.clone(),
                client,
            });
        }
        ServingGuard {
            calls: Arc::clone(self),
            seq,
        }
    }

    /// The call a request from the upstream belongs to: the one it names by its stream (a
    /// Streamable HTTP upstream), else the latest call in flight when every call in flight is
    /// one session's.
    fn route(
        &self,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<Routed, &'static str> {
        let calls = self
            .calls
            .lock()
            .map_err(|_| "the gateway's call table is unusable")?;
        let found = match origin {
            Some(rmcp::service::InboundStreamOrigin::OutboundRequest(id)) => {
                calls.iter().find(|c| c.upstream_id.as_ref() == Some(id))
            }
            _ => {
                let Some(last) = calls.last() else {
                    return Err("no call of any agent is in flight on this upstream: an upstream may ask only while it serves a call");
                };
                if calls.iter().any(|c| c.session_key != last.session_key) {
                    return Err("calls of several sessions are in flight on this upstream, and the request does not say which it serves");
                }
                Some(last)
            }
        };
        let c = found.ok_or("the request names no call in flight on this upstream")?;
        Ok(Routed {
            who: c.who.clone(),
            redact: c.redact.clone(),
            client: c.client.clone(),
        })
    }
}

/// The call an upstream's request belongs to: who made it, its detectors, its client.
struct Routed {
    who: Who,
    redact: BTreeSet<String>,
    client: Option<Arc<dyn ClientSide>>,
}

/// What one upstream's relay needs to answer its requests.
#[derive(Clone)]
pub(crate) struct Asks {
    pub(crate) upstream: String,
    pub(crate) allowed: BTreeSet<ClientRequestKind>,
    pub(crate) calls: Arc<InFlightCalls>,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) ledger: Option<Arc<Ledger>>,
}

impl Asks {
    /// An upstream's `sampling/createMessage`.
    pub(crate) async fn sample(
        &self,
        params: CreateMessageRequestParams,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let (who, on, client) = self.admit(ClientRequestKind::Sampling, origin).await?;
        let params = self.redacted(params, &on)?;
        let answer = client.sample(params).await;
        self.forwarded(ClientRequestKind::Sampling, &who, answer.as_ref().err())
            .await;
        answer
    }

    /// An upstream's `elicitation/create`.
    pub(crate) async fn elicit(
        &self,
        params: ElicitRequestParams,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<ElicitResult, ErrorData> {
        let (who, on, client) = self.admit(ClientRequestKind::Elicitation, origin).await?;
        let params = self.redacted(params, &on)?;
        let answer = client.elicit(params).await;
        self.forwarded(ClientRequestKind::Elicitation, &who, answer.as_ref().err())
            .await;
        answer
    }

    /// An upstream's `roots/list`.
    pub(crate) async fn roots(
        &self,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<ListRootsResult, ErrorData> {
        let (who, _, client) = self.admit(ClientRequestKind::Roots, origin).await?;
        let answer = client.roots().await;
        self.forwarded(ClientRequestKind::Roots, &who, answer.as_ref().err())
            .await;
        answer
    }

    /// An upstream's log message: redacted, to the client of the call it serves (dropped when
    /// it serves none, or the session cannot be told apart).
    pub(crate) fn log(&self, params: LoggingMessageNotificationParam) {
        let Ok(Routed {
            redact: on,
            client: Some(client),
            ..
        }) = self.calls.route(None)
        else {
            tracing::debug!(upstream = %self.upstream, "log message outside any one session's call: not passed on");
            return;
        };
        if let Ok(params) = self.redacted(params, &on) {
            client.log(params);
        }
    }

    /// The call `kind` is asked for, if the manifest allows it, a call is in flight and a
    /// client can be asked; otherwise the refusal, recorded.
    async fn admit(
        &self,
        kind: ClientRequestKind,
        origin: Option<&rmcp::service::InboundStreamOrigin>,
    ) -> Result<(Who, BTreeSet<String>, Arc<dyn ClientSide>), ErrorData> {
        let routed = self.calls.route(origin);
        let why = match &routed {
            _ if !self.allowed.contains(&kind) => Some(format!(
                "the manifest does not let upstream `{}` ask for {} (`client_requests`)",
                self.upstream,
                kind.as_str()
            )),
            Err(why) => Some((*why).to_owned()),
            Ok(Routed { client: None, .. }) => Some(
                "the agent's connection cannot carry requests from upstreams (only a stdio client can)"
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
                }),
            ) => Ok((who, redact, client)),
            (why, routed) => {
                let why = why.unwrap_or_default();
                let who = routed.ok().map(|r| r.who);
                self.record(kind, who.as_ref(), &format!("refused: {why}"))
                    .await;
                Err(ErrorData::invalid_request(
                    format!("Warden refused the {} request: {why}", kind.as_str()),
                    None,
                ))
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

    async fn forwarded(&self, kind: ClientRequestKind, who: &Who, error: Option<&ErrorData>) {
        let what = match error {
            None => "forwarded to the agent's client, which answered".to_owned(),
            Some(e) => format!(
                "forwarded to the agent's client, which refused: {}",
                e.message
            ),
        };
        self.record(kind, Some(who), &what).await;
    }

    /// Records an `upstream.<kind>` event (best effort: logged when the ledger refuses).
    async fn record(&self, kind: ClientRequestKind, who: Option<&Who>, what: &str) {
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
        let Some(ledger) = &self.ledger else { return };
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
        match ledger.submit(&event) {
            Ok(t) => {
                if let Err(e) = t.recorded().await {
                    tracing::error!(error = %e, "could not record an upstream's request");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not record an upstream's request"),
        }
    }
}
