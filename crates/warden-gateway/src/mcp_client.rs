//! The agent's MCP client as an upstream's requests reach it ([`ClientSide`]): over stdio, the
//! connection carries requests both ways, so an upstream's sampling, elicitation and roots
//! requests (and its log messages) go to the client on the connection of the call the upstream
//! serves — each only if the client declared the capability when it made the call.

#![expect(
    deprecated,
    reason = "sampling, roots and logging are deprecated by SEP-2577 and still what upstreams send (issue 20)"
)]

use std::future::Future;
use std::pin::Pin;

use rmcp::model::{
    ClientCapabilities, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
    ElicitResult, ListRootsResult, LoggingLevel, LoggingMessageNotificationParam,
};
use rmcp::{ErrorData, Peer, RoleServer};
use warden_runtime::{ClientRequestKind, ClientSide};

/// The least severe level of log messages a stdio client asked for (`logging/setLevel`);
/// `None`: every message.
pub(crate) type LogLevel = std::sync::Arc<std::sync::Mutex<Option<LoggingLevel>>>;

/// Sets it from a `logging/setLevel` request.
pub(crate) fn set_level(level: &LogLevel, request: &rmcp::model::SetLevelRequestParams) {
    if let Ok(mut l) = level.lock() {
        *l = Some(request.level);
    }
}

/// The server's capabilities as Warden offers them: tools, resources, prompts, completions,
/// and log messages.
pub(crate) fn capabilities() -> rmcp::model::ServerCapabilities {
    rmcp::model::ServerCapabilities::builder()
        .enable_tools()
        .enable_tool_list_changed()
        .enable_resources()
        .enable_resources_subscribe()
        .enable_resources_list_changed()
        .enable_prompts()
        .enable_prompts_list_changed()
        .enable_completions()
        .enable_logging()
        .build()
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<T, ErrorData>> + Send + 'static>>;

/// The client on one stdio connection, with the capabilities it declared for the call.
pub(crate) struct PeerClient {
    pub(crate) peer: Peer<RoleServer>,
    pub(crate) capabilities: Option<ClientCapabilities>,
    /// The least severe log level the client asked for (`logging/setLevel`); `None`: every
    /// message.
    pub(crate) level: Option<LoggingLevel>,
}

/// Whether a client with these capabilities can answer `kind`.
pub(crate) fn declares(capabilities: Option<&ClientCapabilities>, kind: ClientRequestKind) -> bool {
    capabilities.is_some_and(|c| match kind {
        ClientRequestKind::Sampling => c.sampling.is_some(),
        ClientRequestKind::Elicitation => c.elicitation.is_some(),
        ClientRequestKind::Roots => c.roots.is_some(),
    })
}

fn undeclared(what: &str) -> ErrorData {
    ErrorData::invalid_request(
        format!("Warden refused the request: the agent's client did not declare {what}"),
        None,
    )
}

fn from_service(e: rmcp::ServiceError) -> ErrorData {
    match e {
        rmcp::ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("the agent's client: {other}"), None),
    }
}

/// Severity order of MCP log levels (RFC 5424, least severe first).
#[must_use]
pub fn severity(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

impl ClientSide for PeerClient {
    fn declares(&self, kind: ClientRequestKind) -> bool {
        declares(self.capabilities.as_ref(), kind)
    }

    fn sample(&self, params: CreateMessageRequestParams) -> Answer<CreateMessageResult> {
        let declared = self
            .capabilities
            .as_ref()
            .is_some_and(|c| c.sampling.is_some());
        let peer = self.peer.clone();
        Box::pin(async move {
            if !declared {
                return Err(undeclared("sampling"));
            }
            peer.create_message(params).await.map_err(from_service)
        })
    }

    fn elicit(&self, params: ElicitRequestParams) -> Answer<ElicitResult> {
        let declared = self
            .capabilities
            .as_ref()
            .is_some_and(|c| c.elicitation.is_some());
        let peer = self.peer.clone();
        Box::pin(async move {
            if !declared {
                return Err(undeclared("elicitation"));
            }
            peer.create_elicitation(params).await.map_err(from_service)
        })
    }

    fn roots(&self) -> Answer<ListRootsResult> {
        let declared = self
            .capabilities
            .as_ref()
            .is_some_and(|c| c.roots.is_some());
        let peer = self.peer.clone();
        Box::pin(async move {
            if !declared {
                return Err(undeclared("roots"));
            }
            peer.list_roots().await.map_err(from_service)
        })
    }

    fn log(&self, params: LoggingMessageNotificationParam) {
        if self
            .level
            .is_some_and(|least| severity(params.level) < severity(least))
        {
            return;
        }
        let peer = self.peer.clone();
        tokio::spawn(async move {
            let _ = peer.notify_logging_message(params).await;
        });
    }
}

/// A client on an earlier revision than 2026-07-28 over HTTP, in a session Warden issued: a
/// request goes out on the stream of the call it serves (the POST's SSE answer), and the
/// client's reply comes back as a POST of its own, which the `/mcp` gate hands to the request
/// waiting for it ([`crate::mcp_sessions::Sessions::reply`]).
pub(crate) struct HttpClient {
    pub(crate) peer: Peer<RoleServer>,
    pub(crate) sessions: std::sync::Arc<crate::mcp_sessions::Sessions>,
    pub(crate) session: String,
    pub(crate) capabilities: Option<ClientCapabilities>,
    /// The id the call's next request gets: rmcp numbers the requests of each POST's peer
    /// from 0, and only this client sends requests on it (one at a time: see `sending`).
    pub(crate) next_id: std::sync::Arc<tokio::sync::Mutex<u32>>,
    /// This instance in its fleet: a reply that lands on another instance finds its way here.
    pub(crate) here: Option<std::sync::Arc<crate::mcp_forward::Here>>,
}

/// Gives up a reserved wait, however it ends; tells the client a request it was sent is no
/// longer awaited.
struct Forget {
    sessions: std::sync::Arc<crate::mcp_sessions::Sessions>,
    session: String,
    request: String,
    number: u64,
    /// The request, when it was sent and not yet answered.
    unanswered: Option<(Peer<RoleServer>, rmcp::model::RequestId)>,
    /// This instance in its fleet, when the fleet's directory holds the wait's reservation.
    here: Option<std::sync::Arc<crate::mcp_forward::Here>>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.sessions
            .forget_reply(&self.session, &self.request, self.number);
        if let Some(here) = &self.here {
            here.forget_waiting(&self.session, &self.request, self.number);
        }
        if let Some((peer, id)) = self.unanswered.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = peer
                        .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                            Some(id),
                            Some("Warden no longer waits for this answer".to_owned()),
                        ))
                        .await;
                });
            }
        }
    }
}

impl HttpClient {
    fn ask<T>(&self, request: rmcp::model::ServerRequest) -> Answer<T>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let (peer, sessions, session, next_id, here) = (
            self.peer.clone(),
            std::sync::Arc::clone(&self.sessions),
            self.session.clone(),
            std::sync::Arc::clone(&self.next_id),
            self.here.clone(),
        );
        Box::pin(async move {
            // One request of the call at a time: its id is known before it is sent.
            let mut next = next_id.lock().await;
            let predicted = rmcp::model::RequestId::Number(i64::from(*next));
            let key = serde_json::to_string(&predicted).unwrap_or_default();
            // INVARIANT (a reply reaches only the request it answers): the wait is reserved
            // before the request leaves, under an id no other call of the session waits on.
            let waiting = sessions.expect_reply(&session, &key).ok_or_else(|| {
                ErrorData::internal_error(
                    "the agent's session has ended, waits for too many replies, or another of \
                     its calls waits for a reply under the same id: not asked",
                    None,
                )
            })?;
            let mut forget = Forget {
                sessions,
                session,
                request: key,
                number: waiting.number,
                unanswered: None,
                here: None,
            };
            if let Some(here) = here {
                // Asked off the async runtime: the directory's client blocks.
                let reserve = {
                    let (here, session, request) = (
                        std::sync::Arc::clone(&here),
                        forget.session.clone(),
                        forget.request.clone(),
                    );
                    let wait = forget.number;
                    tokio::task::spawn_blocking(move || here.note_waiting(&session, &request, wait))
                };
                if !reserve.await.unwrap_or(true) {
                    return Err(ErrorData::internal_error(
                        "another of the session's calls, on another Warden instance, waits for \
                         a reply under the same id: not asked",
                        None,
                    ));
                }
                forget.here = Some(here);
            }
            let handle = peer
                .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
                .await
                .map_err(from_service)?;
            *next += 1;
            drop(next);
            if handle.id != predicted {
                return Err(ErrorData::internal_error(
                    "the request was sent under another id than reserved: its reply is not awaited",
                    None,
                ));
            }
            forget.unanswered = Some((peer.clone(), handle.id.clone()));
            let message = waiting
                .reply
                .await
                .map_err(|_| ErrorData::internal_error("the agent's session ended", None))?;
            forget.unanswered = None;
            drop(handle);
            if let Some(e) = message.get("error") {
                return Err(
                    serde_json::from_value::<ErrorData>(e.clone()).unwrap_or_else(|_| {
                        ErrorData::internal_error("the agent's client answered with an error", None)
                    }),
                );
            }
            let result = message.get("result").cloned().unwrap_or_default();
            serde_json::from_value(result).map_err(|e| {
                ErrorData::invalid_params(format!("the agent's client answered: {e}"), None)
            })
        })
    }
}

impl ClientSide for HttpClient {
    fn declares(&self, kind: ClientRequestKind) -> bool {
        declares(self.capabilities.as_ref(), kind)
    }

    fn sample(&self, params: CreateMessageRequestParams) -> Answer<CreateMessageResult> {
        self.ask(rmcp::model::ServerRequest::CreateMessageRequest(
            rmcp::model::CreateMessageRequest::new(params),
        ))
    }

    fn elicit(&self, params: ElicitRequestParams) -> Answer<ElicitResult> {
        self.ask(rmcp::model::ServerRequest::ElicitRequest(
            rmcp::model::ElicitRequest::new(params),
        ))
    }

    fn roots(&self) -> Answer<ListRootsResult> {
        self.ask(rmcp::model::ServerRequest::ListRootsRequest(
            rmcp::model::ListRootsRequest::default(),
        ))
    }

    fn log(&self, params: LoggingMessageNotificationParam) {
        // On the call's stream while it is open; a message that comes after the call's result
        // closed it (an upstream's notifications are handled apart from its responses) goes on
        // the session's own stream, if the client opened one here.
        let (peer, sessions, session) = (
            self.peer.clone(),
            std::sync::Arc::clone(&self.sessions),
            self.session.clone(),
        );
        tokio::spawn(async move {
            let late = serde_json::json!({
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": &params,
            });
            if peer.notify_logging_message(params).await.is_err() {
                sessions.notify(&session, late);
            }
        });
    }
}
