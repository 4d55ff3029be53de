//! Requests only another instance of a fleet can serve (issue 20). A 2026-07-28 client's call
//! that waits between input-required rounds is parked on the instance that runs it — its
//! upstream request is open there — and the client's retry carries no session a load balancer
//! could stick to. Each instance therefore names itself in the `requestState`s it issues
//! (`wrs_<instance>_<random>`); a retry that reaches another instance is passed, as it came
//! (the same bearer credential, body and protocol headers), to the instance it names, and
//! that instance's answer — JSON or an SSE stream — is passed back as it comes.
//!
//! A legacy client's reply to what an upstream asked on a call's stream is bound to the
//! instance running that call too, and a balancer without stickiness may send it elsewhere:
//! the instance that sends the request notes in the directory that the session's call waits
//! there (`<prefix>mcp-replies:<session>`), and a reply that finds no call waiting for it where
//! it lands is passed there.
//!
//! Where an instance takes such requests is what it published in the fleet's directory
//! (`warden serve --advertise URL`, refreshed every 10 s, forgotten 30 s after the instance
//! stops): a client never chooses where a request goes, only which published instance. The
//! instance that receives a forwarded request authenticates it again and serves it as its own;
//! it never passes it on again (`Warden-Forwarded-By`), so a state naming an instance that
//! restarted is refused, not bounced around.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warden_core::sessions::SessionDirectory;
use warden_runtime::Runtime;

/// The header a forwarded request carries: the instance that forwarded it.
pub(crate) const FORWARDED_BY: &str = "warden-forwarded-by";

/// How often an instance publishes where it takes forwarded requests.
const PUBLISH_EVERY: Duration = Duration::from_secs(10);

/// How long the directory keeps that after the last publication.
const PUBLISHED_FOR: Duration = Duration::from_secs(30);

/// The headers passed on with a forwarded request (the rest belong to the hop).
const PASSED: [&str; 6] = [
    "authorization",
    "content-type",
    "accept",
    "mcp-protocol-version",
    "mcp-session-id",
    "traceparent",
];

/// How long the directory says where a session's call waits for its client's reply (longer
/// than any upstream's timeout for such a request is likely to be).
const WAITING_FOR: Duration = Duration::from_secs(600);

/// Why a request could not be passed to the instance it belongs to.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("has stopped, or takes no forwarded requests (`warden serve --advertise`)")]
    Unpublished,
    #[error("cannot be found now ({0})")]
    Directory(warden_core::state::StateError),
    /// The URL and the error are logged, never told to the client: an instance's address is
    /// the fleet's, and a URL can carry a credential.
    #[error("cannot be reached now")]
    At,
}

/// This instance's place in a fleet.
pub(crate) struct Here {
    app: Runtime,
    /// This instance's id (random, new at each start).
    pub(crate) instance: String,
    directory: Option<Arc<dyn SessionDirectory>>,
    /// A client per instance URL, made on first use.
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl Here {
    /// This instance in its fleet (`None` for an instance alone); with `advertise`, it
    /// publishes there where the others reach it.
    pub(crate) fn new(app: &Runtime, advertise: Option<String>) -> Option<Arc<Here>> {
        let directory = app.session_directory()?;
        let instance = warden_runtime::caller::random_id()?;
        let here = Arc::new(Here {
            app: app.clone(),
            instance,
            directory: Some(directory),
            clients: Mutex::default(),
        });
        if let (Some(url), Ok(rt)) = (advertise, tokio::runtime::Handle::try_current()) {
            let weak = Arc::downgrade(&here);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                loop {
                    tick.tick().await;
                    let Some(here) = weak.upgrade() else { break };
                    if let Some(d) = &here.directory {
                        if let Err(e) = d.publish_instance(&here.instance, &url, PUBLISHED_FOR) {
                            tracing::warn!(error = %e, "could not publish where this instance takes forwarded MCP requests");
                        }
                    }
                }
            });
        }
        Some(here)
    }

    /// The instance that parked the call `state` resumes, when it is another one and the
    /// request was not forwarded already.
    pub(crate) fn elsewhere<'s>(&self, state: &'s str, headers: &HeaderMap) -> Option<&'s str> {
        elsewhere(&self.instance, state, headers)
    }

    /// Passes a retry (its `headers` and `body`, JSON-RPC id `id`) to `instance`, and its
    /// answer back; a JSON-RPC error naming why when the instance cannot be reached.
    pub(crate) async fn forward_retry(
        &self,
        instance: &str,
        headers: &HeaderMap,
        body: Bytes,
        id: &serde_json::Value,
    ) -> Response {
        tracing::info!(to = %instance, "passed a retry to the instance its call waits on");
        self.pass(instance, headers, body)
            .await
            .unwrap_or_else(|e| {
                crate::mcp::rpc_error(
                    StatusCode::OK,
                    id,
                    -32602,
                    format!(
                        "invalid params: the call this requestState continues waits on Warden \
                     instance {instance}, which {e}: call again without it"
                    ),
                )
            })
    }

    /// The instance (another one) whose call of session `session` waits for its client's
    /// reply to `request`, unless the reply was forwarded already.
    pub(crate) fn replies_elsewhere(
        &self,
        session: &str,
        request: &str,
        headers: &HeaderMap,
    ) -> Option<String> {
        if headers.contains_key(FORWARDED_BY) {
            return None;
        }
        let instance = self.directory.as_ref()?.waiting(session, request).ok()??;
        (instance != self.instance).then_some(instance)
    }

    /// Passes a client's reply (POSTed in its session) to `instance`, where the call that
    /// asked waits; `502 session.reply_lost` naming why when it cannot be reached.
    pub(crate) async fn forward_reply(
        &self,
        instance: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        tracing::info!(to = %instance, "passed a reply to the instance its call waits on");
        self.pass(instance, headers, body).await.unwrap_or_else(|e| {
            crate::mcp::refuse(
                StatusCode::BAD_GATEWAY,
                "session.reply_lost",
                format!("the call this reply answers waits on Warden instance {instance}, which {e}"),
            )
        })
    }

    /// Reserves in the fleet's directory the reply of session `session`'s client to `request`
    /// for a call waiting here; `false` when a call on another instance waits for a reply
    /// under the same id (then it is not asked). A directory that cannot be reached reserves
    /// nothing and says so (a reply that lands elsewhere is then lost, and the call waits until
    /// its upstream's timeout).
    pub(crate) fn note_waiting(&self, session: &str, request: &str, wait: u64) -> bool {
        let Some(d) = &self.directory else {
            return true;
        };
        match d.note_waiting(session, request, &self.instance, wait, WAITING_FOR) {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!(error = %e, "could not note in the fleet's directory where a call waits for its client's reply");
                true
            }
        }
    }

    /// Gives up this instance's reservation of session `session`'s reply to `request`, off
    /// the async runtime (the directory's client blocks).
    pub(crate) fn forget_waiting(&self, session: &str, request: &str, wait: u64) {
        let Some(d) = self.directory.clone() else {
            return;
        };
        let (session, request, instance) = (
            session.to_owned(),
            request.to_owned(),
            self.instance.clone(),
        );
        let forget = move || {
            if let Err(e) = d.forget_waiting(&session, &request, &instance, wait) {
                tracing::debug!(error = %e, "could not give up a reply's reservation in the fleet's directory (it expires)");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(forget)),
            Err(_) => forget(),
        }
    }

    /// Passes a request (its `headers` and `body`) to `instance` as it came, and its answer
    /// (JSON or an SSE stream) back as it comes.
    async fn pass(
        &self,
        instance: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, Unreachable> {
        let url = match self.directory.as_ref().map(|d| d.instance(instance)) {
            Some(Ok(Some(url))) => url,
            Some(Ok(None)) | None => return Err(Unreachable::Unpublished),
            Some(Err(e)) => return Err(Unreachable::Directory(e)),
        };
        let client = match self.cached(&url) {
            Some(c) => c,
            None => match self.app.fleet_client(&url) {
                Ok(c) => self.keep(&url, c),
                Err(e) => return Err(unreachable(instance, &url, &e)),
            },
        };
        let mut request = client
            .post(&url)
            .header(FORWARDED_BY, &self.instance)
            .body(body);
        for name in PASSED {
            for value in headers.get_all(name) {
                request = request.header(name, value);
            }
        }
        let answer = request
            .send()
            .await
            .map_err(|e| unreachable(instance, &url, &e))?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            if let Some(v) = answer.headers().get(name.as_str()) {
                response = response.header(name, v.as_bytes());
            }
        }
        response
            .body(axum::body::Body::from_stream(answer.bytes_stream()))
            .map_err(|e| unreachable(instance, &url, &e))
    }

    fn cached(&self, url: &str) -> Option<reqwest::Client> {
        self.clients.lock().ok()?.get(url).cloned()
    }

    fn keep(&self, url: &str, client: reqwest::Client) -> reqwest::Client {
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(url.to_owned(), client.clone());
        }
        client
    }
}

/// Logs why instance `instance` at `url` could not be reached (for the operator only).
fn unreachable(instance: &str, url: &str, e: &dyn std::fmt::Display) -> Unreachable {
    tracing::warn!(%instance, %url, error = %e, "could not pass a request to the fleet instance it belongs to");
    Unreachable::At
}

/// The instance (other than `me`) that parked the call `state` resumes, unless the request was
/// forwarded already.
fn elsewhere<'s>(me: &str, state: &'s str, headers: &HeaderMap) -> Option<&'s str> {
    let instance = crate::mcp_rounds::instance_of(state)?;
    (instance != me && !headers.contains_key(FORWARDED_BY)).then_some(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_instances_state_not_yet_forwarded_goes_elsewhere() {
        let mut h = HeaderMap::new();
        assert_eq!(elsewhere("me", "wrs_other_123", &h), Some("other"));
        assert_eq!(elsewhere("me", "wrs_me_123", &h), None);
        assert_eq!(elsewhere("me", "wrs_123", &h), None);
        h.insert(FORWARDED_BY, "other".parse().unwrap());
        assert_eq!(elsewhere("me", "wrs_other_123", &h), None);
    }
}
