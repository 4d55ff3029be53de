//! The HTTP API: `GET /healthz`, `GET /v1/manifest`, `POST /v1/decide` (a dry run, see
//! `warden_runtime::dry_run`), `POST /v1/sessions` and `POST /v1/proposals` (signed, on the governed
//! path).
//!
//! `/v1/decide` takes a proposal and answers what the Governor would decide now; it charges,
//! records and runs nothing. Bodies over [`warden_core::proposal::MAX_PROPOSAL_BYTES`] are
//! refused before parsing; malformed bodies get a 400 whose `error` names what was wrong; the
//! server keeps serving.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use warden_core::proposal::MAX_PROPOSAL_BYTES;
use warden_core::trace::TraceParent;
use warden_core::{Proposal, Verdict};
use warden_runtime::caller::SignedRequest;
use warden_runtime::{Call, Outcome, Refusal, RefusalKind, Runtime};

/// The API's routes.
pub fn router(app: Runtime) -> Router {
    router_with(app, true)
}

/// The routes; the unauthenticated `/v1/decide` only when `unauthenticated_decide` (the gateway
/// serves it on loopback only: anyone who can reach it could speak for any agent).
pub fn router_with(app: Runtime, unauthenticated_decide: bool) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/manifest", get(manifest))
        .route("/v1/sessions", post(sessions))
        .route("/v1/proposals", post(proposals));
    if unauthenticated_decide {
        r = r.route("/v1/decide", post(decide));
    }
    r.layer(DefaultBodyLimit::max(MAX_PROPOSAL_BYTES))
        .with_state(app)
}

async fn manifest(State(app): State<Runtime>) -> Json<warden_runtime::runtime::Summary> {
    Json(app.summary())
}

/// The caller's W3C `traceparent` header, if it sent exactly one valid one (an invalid one, or
/// several, are ignored).
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut all = headers.get_all("traceparent").iter();
    let (Some(one), None) = (all.next(), all.next()) else {
        return None;
    };
    one.to_str().ok().and_then(TraceParent::parse)
}

async fn decide(State(app): State<Runtime>, body: Bytes) -> Response {
    let proposal = match Proposal::from_json_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    let decision = app.dry_run(&proposal);
    let status = match decision.decision {
        Verdict::Allow => StatusCode::OK,
        Verdict::Deny if decision.governance_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        Verdict::Deny => StatusCode::FORBIDDEN,
        Verdict::Escalate => StatusCode::ACCEPTED,
    };
    let mut body = serde_json::to_value(&decision).unwrap_or_else(|_| json!({}));
    if let Some(obj) = body.as_object_mut() {
        obj.insert("dry_run".into(), true.into());
        obj.insert("note".into(), warden_runtime::dry_run::NOTE.into());
    }
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, rule: &str, why: String) -> Response {
    (
        status,
        Json(json!({ "decision": "deny", "rules": [rule], "reason": why })),
    )
        .into_response()
}

/// The HTTP status of a refusal before any decision.
pub(crate) fn status_of(kind: RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        RefusalKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        RefusalKind::Forbidden => StatusCode::FORBIDDEN,
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        RefusalKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP answer for a refusal before any decision.
fn refused(r: Refusal) -> Response {
    error(status_of(r.kind), r.rule, r.why)
}

/// Authenticates a signed request to `path`: credential, then RFC 9421 signature, nonce and
/// time window (the Runtime records refusals of authentic requests).
async fn authenticate(
    app: &Runtime,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<warden_runtime::Caller, Response> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = traceparent(headers).map_or_else(String::new, |t| t.trace_id_hex());
    app.authenticate_signed(SignedRequest {
        credential: h("warden-credential"),
        path,
        body,
        content_digest: h("content-digest"),
        signature_input: h("signature-input"),
        signature: h("signature"),
        trace: &trace,
    })
    .await
    .map_err(refused)
}

/// `POST /v1/sessions` (signed, body `{"session": "<id>"}`): the Governor-signed lineage the
/// agent must present with every proposal in that session.
async fn sessions(State(app): State<Runtime>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match authenticate(&app, &headers, "/v1/sessions", &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Open {
        session: String,
        /// The user's request: the session's task (trusted input, `docs/ifc.md`).
        #[serde(default)]
        task: Option<String>,
    }
    let open: Open = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, "session.invalid", e.to_string()),
    };
    let opened = match app.open_session(&caller, &open.session) {
        Ok(s) => s,
        Err(r) => return refused(r),
    };
    let task = match &open.task {
        None => None,
        Some(t) => match app.declare_task(&caller, &open.session, t).await {
            Ok(t) => Some(json!({"hash": t.hash, "len": t.len})),
            Err(e) => return error(StatusCode::CONFLICT, "session.task_refused", e.to_string()),
        },
    };
    Json(json!({
        "session": open.session,
        "lineage": opened.lineage,
        "expires_at": opened.expires_at,
        "task": task,
    }))
    .into_response()
}

/// `GET /readyz`: 200 `ready` when everything a decision needs answers (the ledger, the state
/// store, the sessions' flows); otherwise 503 with the parts that do not, for a load balancer
/// to take this instance out of rotation while they are down.
async fn readyz(State(app): State<Runtime>) -> Response {
    let down = app.readiness().await;
    if down.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "ready": false, "unavailable": down })),
    )
        .into_response()
}

/// `POST /v1/proposals`: a proposal signed by an enrolled agent (credential in
/// `Warden-Credential`, RFC 9421 signature over method, path and `Content-Digest`), carrying its
/// session's lineage in `Warden-Lineage`, down the governed path: decided, recorded and, if
/// allowed, run; the answer carries the (redacted) result and its receipt, never a grant.
async fn proposals(State(app): State<Runtime>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match authenticate(&app, &headers, "/v1/proposals", &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let proposal = match Proposal::from_json_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "proposal.invalid", e.to_string()),
    };
    if proposal.agent != caller.agent() {
        return error(
            StatusCode::FORBIDDEN,
            "identity.mismatch",
            format!(
                "the credential is for agent `{}`, the proposal names `{}`",
                caller.agent(),
                proposal.agent
            ),
        );
    }
    let trace = traceparent(&headers);
    let lineage = headers.get("warden-lineage").and_then(|v| v.to_str().ok());
    if let Err(r) = app
        .check_lineage(
            &caller,
            lineage,
            &proposal.session,
            &trace.map_or_else(String::new, |t| t.trace_id_hex()),
        )
        .await
    {
        return refused(r);
    }
    // `Warden-Approval: apr_…` names the approval this call redeems (it must be for this exact
    // call; without it, an approved request for the same call is used).
    let approval = headers
        .get("warden-approval")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // `Warden-Wait: N` waits up to N seconds (at most the manifest's `wait_seconds`) for a
    // pending approval, then runs the call on it; without it the answer is at once (202).
    let wait_secs = headers
        .get("warden-wait")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let cancel = tokio_util::sync::CancellationToken::new();
    // INVARIANT (a granted call ends recorded): the server drops this handler when its client
    // hangs up. The call runs in a task of its own, so it is never dropped half way (it would
    // run on with no receipt, out of the kill switch's and the breakers' reach); the client
    // gone, the guard cancels it instead, as an MCP client's cancellation does: the Executor
    // stops the upstream's call and records it as killed.
    let hang_up = cancel.clone().drop_guard();
    let run = tokio::spawn(async move {
        let call = Call {
            session: proposal.session,
            tool: proposal.tool,
            kind: proposal.kind,
            operation: proposal.operation,
            arguments: proposal.arguments,
            trace,
            cancel,
            approval: approval.as_deref(),
            wait_secs: Some(wait_secs),
            progress: None,
            client: None,
        };
        app.propose(&caller, call).await
    });
    let outcome = run.await;
    hang_up.disarm();
    match outcome {
        Ok(outcome) => outcome_response(outcome),
        Err(e) => {
            tracing::error!(error = %e, "a proposal's task ended without an outcome");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the call ended without an outcome (see the gateway's log)".into(),
            )
        }
    }
}

/// The native API's answer for a proposal that went down the whole governed path: the
/// decision, and for an allowed call the (redacted) MCP result and its receipt's ledger index.
fn outcome_response(outcome: Outcome) -> Response {
    let decided = |decision: &warden_core::Decision, request_id: String, index: u64| {
        let mut body = serde_json::to_value(decision).unwrap_or_else(|_| json!({}));
        if let Some(obj) = body.as_object_mut() {
            obj.insert("request_id".into(), request_id.into());
            obj.insert("ledger_index".into(), index.into());
        }
        body
    };
    match outcome {
        Outcome::NotDecided {
            rule,
            why,
            request_id,
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "decision": "deny",
                "rules": [rule],
                "reason": why,
                "request_id": request_id,
            })),
        )
            .into_response(),
        Outcome::Decided {
            decision,
            request_id,
            index,
            approval,
        } => {
            let status = if decision.decision == Verdict::Escalate {
                StatusCode::ACCEPTED
            } else if decision.governance_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            };
            let mut body = decided(&decision, request_id, index);
            if let (Some(a), Some(obj)) = (approval, body.as_object_mut()) {
                obj.insert(
                    "approval".into(),
                    serde_json::to_value(a).unwrap_or_default(),
                );
            }
            (status, Json(body)).into_response()
        }
        Outcome::Ran {
            decision,
            request_id,
            index,
            executed,
        } => {
            let mut body = decided(&decision, request_id, index);
            if let Some(obj) = body.as_object_mut() {
                obj.insert("result".into(), executed.result.to_value());
                obj.insert("receipt_index".into(), executed.receipt_index.into());
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Outcome::Failed {
            decision,
            request_id,
            index,
            error,
        } => {
            let mut body = decided(&decision, request_id, index);
            if let Some(obj) = body.as_object_mut() {
                obj.insert("error".into(), error.to_string().into());
            }
            (StatusCode::BAD_GATEWAY, Json(body)).into_response()
        }
        Outcome::Invalid { why } => error(StatusCode::BAD_REQUEST, "proposal.invalid", why),
    }
}

/// Serves the API on `listener` until `shutdown` completes.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Runtime,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, None, shutdown).await
}

/// [`serve`], with more routes (the MCP front-end) merged in.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Runtime,
    more: Option<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // INVARIANT (no anonymous agents off the host): `/v1/decide` names its agent without proof,
    // so it is served only when the listener is on loopback.
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        tracing::warn!("not on loopback: /v1/decide is disabled; agents use /v1/proposals");
    }
    let mut routes = router_with(app, loopback);
    if let Some(more) = more {
        routes = routes.merge(more);
    }
    axum::serve(no_delay(listener), routes)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Accepted connections with `TCP_NODELAY`: an answer written in parts (headers, then the
/// body or SSE events) goes out at once instead of waiting, under Nagle's algorithm, for the
/// client's delayed ACK of the first part — up to 40 ms per call on a kept-alive connection.
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acks() {
        use axum::serve::Listener as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let mut listener = super::no_delay(listener);
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is set");
        // The control: a plain accept does not set it.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (raw, _) = plain.accept().await.unwrap();
        assert!(!raw.nodelay().unwrap());
        drop(client.await.unwrap().unwrap());
    }
}
