//! The standalone stream of a `/mcp` session (an HTTP `GET` with its `Mcp-Session-Id`), for a
//! client on a revision before 2026-07-28: what the server tells it outside any request —
//! `notifications/{tools,resources,prompts}/list_changed` when a list it may see changed (an
//! upstream announced it, or a new manifest came into force), and
//! `notifications/resources/updated` for what it subscribed to (`resources/subscribe`, kept
//! with the session).
//!
//! One stream per session: a later `GET` replaces the earlier one (a client reconnecting after
//! its connection broke is not refused for a stream the server has not yet seen end). The
//! stream ends when its session ends (`DELETE`, expiry, a revocation's sweep), when its
//! credential is revoked or expires (checked at every keep-alive, every 15 s, and before each
//! message), or when the client goes. While it is open the session counts as in use: it does
//! not expire under a client that listens without calling.
//!
//! In a fleet the instance holding a session's subscription may not hold its stream: what the
//! one cannot deliver it publishes on the fleet's notice bus, and every instance relays what it
//! hears to the sessions open on it ([`publish`], [`relay_notices`]).
//!
//! A 2026-07-28 client has no such stream (it listens with `subscriptions/listen`): its `GET`
//! is answered 405, as is a `GET` outside a session Warden issued.

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use warden_core::sessions::{NoticeBus, SessionNotice};
use warden_core::ActionKind;
use warden_runtime::catalog_changes::CatalogChanges;
use warden_runtime::{Caller, Runtime};

use crate::mcp_sessions::Sessions;

/// How often an idle stream carries an SSE comment (so that no proxy's idle timeout cuts it)
/// and its session and credential are checked again.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Who opened a stream, and on which session.
pub(crate) struct Opener {
    pub(crate) app: Runtime,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) caller: Caller,
    pub(crate) credential: String,
    /// The bearer token of the `GET`, checked again before each message.
    pub(crate) token: String,
    pub(crate) session: String,
}

/// Whether a `GET` asks for the standalone stream of a revision that has one: a
/// `MCP-Protocol-Version` of 2026-07-28 or later does not.
pub(crate) fn wanted(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v < "2026-07-28")
}

/// The answer to a session's `GET`: its standalone stream, or why not.
pub(crate) fn respond(opener: Opener, accept: Option<&str>) -> Response {
    if !accept.is_some_and(|a| a.contains("text/event-stream")) {
        return crate::mcp::refuse(
            StatusCode::NOT_ACCEPTABLE,
            "stream.not_acceptable",
            "a session's stream is text/event-stream: send Accept: text/event-stream".into(),
        );
    }
    let Some((number, messages)) = opener.sessions.open_stream(&opener.session) else {
        return crate::mcp::refuse(
            StatusCode::NOT_FOUND,
            "session.unknown",
            "no such MCP session (it ended or expired): initialize a new one".into(),
        );
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = Standalone {
        changes: opener.app.catalog_changes(),
        opener,
        number,
        messages,
        tick,
    };
    let body = futures::stream::unfold(stream, |mut s| async move {
        let next = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(next), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// One open stream: what it sends next, until it ends.
struct Standalone {
    opener: Opener,
    number: u64,
    messages: tokio::sync::mpsc::Receiver<serde_json::Value>,
    changes: CatalogChanges,
    tick: tokio::time::Interval,
}

impl Standalone {
    /// Whether the stream's credential is still good.
    fn allowed(&self) -> bool {
        // INVARIANT (revocation is immediate): a revoked credential is told nothing more.
        self.opener
            .app
            .authenticate(Some(&self.opener.token))
            .is_ok()
    }

    /// The next bytes of the stream; `None` once it ends.
    async fn next(&mut self) -> Option<Bytes> {
        let message = tokio::select! {
            // `None`: the session ended, or a later `GET` took its place.
            queued = self.messages.recv() => queued?,
            kind = self.changes.next(&self.opener.caller) => list_changed(kind?),
            _ = self.tick.tick() => {
                let o = &self.opener;
                // Checking the session marks it used (and notices its end elsewhere in a
                // fleet).
                if !self.allowed() || o.sessions.check(&o.session, &o.credential).is_err() {
                    return None;
                }
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
        };
        if !self.allowed() {
            return None;
        }
        Some(Bytes::from(format!("event: message\ndata: {message}\n\n")))
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.opener
            .sessions
            .close_stream(&self.opener.session, self.number);
    }
}

/// Publishes `notice` to the fleet's other instances, off the async runtime (the bus's client
/// blocks); a bus that cannot be reached is said in the log, and the notice is lost (an
/// update says only "read it again"; an unsubscription's subscription ends with its session).
pub(crate) fn publish(bus: Arc<dyn NoticeBus>, notice: SessionNotice) {
    let send = move || {
        if let Err(e) = bus.publish(&notice) {
            tracing::warn!(error = %e, "a session notice could not reach the fleet's other instances");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(send)),
        Err(_) => send(),
    }
}

/// Hands what the fleet's other instances publish to this instance's sessions, on a thread of
/// its own, until the sessions go: an update to the session's stream if it is open here, an
/// unsubscription to the subscription if this instance holds it. A bus that fails is listened
/// to again a second later.
pub(crate) fn relay_notices(bus: Arc<dyn NoticeBus>, sessions: std::sync::Weak<Sessions>) {
    // A subscription ended here unsubscribes its upstream on the runtime.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let spawned = std::thread::Builder::new()
        .name("warden-notices".into())
        .spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let gone = || sessions.strong_count() == 0;
            while !gone() {
                let heard = bus.listen(
                    &mut |notice| {
                        if let Some(s) = sessions.upgrade() {
                            take_notice(&s, notice);
                        }
                    },
                    &gone,
                );
                if let Err(e) = heard {
                    tracing::warn!(error = %e, "the fleet's session notices cannot be heard; listening again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the listener of the fleet's session notices");
    }
}

/// What one notice does to this instance's sessions (nothing for a session not open here).
fn take_notice(sessions: &Sessions, notice: SessionNotice) {
    match notice {
        SessionNotice::Updated { session, uri } => {
            sessions.notify(&session, resource_updated(&uri));
        }
        SessionNotice::Unsubscribed {
            session,
            uri,
            at_ms,
        } => {
            sessions.release_made_before(&session, &uri, at_ms);
        }
    }
}

/// `notifications/<list>/list_changed` for a list of `kind`.
pub(crate) fn list_changed(kind: ActionKind) -> serde_json::Value {
    let list = match kind {
        ActionKind::Tool => "tools",
        ActionKind::Resource => "resources",
        ActionKind::Prompt => "prompts",
    };
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": format!("notifications/{list}/list_changed"),
    })
}

/// `notifications/resources/updated` for `uri`.
pub(crate) fn resource_updated(uri: &str) -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": { "uri": uri },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_for_revisions_before_2026_07_28() {
        let mut h = axum::http::HeaderMap::new();
        assert!(wanted(&h));
        h.insert("mcp-protocol-version", "2025-11-25".parse().unwrap());
        assert!(wanted(&h));
        h.insert("mcp-protocol-version", "2026-07-28".parse().unwrap());
        assert!(!wanted(&h));
    }

    #[test]
    fn the_messages_are_the_notifications_mcp_names() {
        assert_eq!(
            list_changed(ActionKind::Prompt)["method"],
            "notifications/prompts/list_changed"
        );
        let u = resource_updated("file:///a");
        assert_eq!(u["method"], "notifications/resources/updated");
        assert_eq!(u["params"]["uri"], "file:///a");
    }
}
