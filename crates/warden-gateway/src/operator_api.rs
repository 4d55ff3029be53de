//! The admin listener: the brakes (kill switch, quarantine, lockdown, resume), on its own
//! address with its own credential (`DATA/keys/admin.token`, 0600), never reachable with an
//! agent credential (INV-025).
//!
//! `POST /admin/v1/holds` with `{"action": "kill"|"quarantine"|"lockdown"|"resume", "scope":
//! {"scope": "global"|"tenant"|"agent"|"session", "id": "..."}, "reason": "..."}`; `GET
//! /admin/v1/holds` lists them. A hold is written to the state store, which every decision
//! consults, so it takes effect with the next decision; it is recorded in the ledger.
//!
//! Approvals: `GET /admin/v1/approvals`, `GET /admin/v1/approvals/{id}`, and `POST
//! /admin/v1/approvals/{id}/votes` with a vote signed by an approver's own key (the admin token
//! opens the door; only the approver's signature counts as a vote).

use axum::body::Bytes;
use axum::extract::Path as UrlPath;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use warden_core::state::HoldScope;
use warden_runtime::operator::{Brake, Operator, OperatorError, SignedVote};

/// The admin routes, and `GET /metrics` (Prometheus; no token: it holds counts and names from
/// the manifest, never a secret or an argument, and a scraper must not hold the admin token).
pub fn router(app: Operator) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .with_state(app.clone());
    Router::new()
        .route("/admin/v1/holds", get(list).post(change))
        .route("/admin/v1/approvals", get(approvals_list))
        .route("/admin/v1/approvals/{id}", get(approvals_show))
        .route("/admin/v1/approvals/{id}/votes", post(approvals_vote))
        .route("/admin/v1/governance/proposals", post(governance_propose))
        .route("/admin/v1/agents/{id}/promote", post(agents_promote))
        // Every route, before its handler reads anything of the request.
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authorized,
        ))
        .with_state(app)
        .merge(metrics)
}

/// `GET /metrics`: the Prometheus text exposition (format 0.0.4); 404 when metrics are off.
async fn metrics(State(app): State<Operator>) -> Response {
    let Some(exposition) = app.metrics().await else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            "metrics are off (warden serve --no-metrics)\n",
        )
            .into_response();
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exposition,
    )
        .into_response()
}

/// Lets a request through only with the admin token.
async fn authorized(
    State(app): State<Operator>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let admitted = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        // INVARIANT (separate credential, INV-025): only the admin token opens the admin API.
        .is_some_and(|t| app.admits(t));
    if !admitted {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    next.run(req).await
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

async fn list(State(app): State<Operator>) -> Response {
    match app.holds() {
        Ok(h) => Json(json!({ "holds": h })).into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    action: String,
    scope: HoldScope,
    #[serde(default)]
    reason: String,
}

async fn change(State(app): State<Operator>, body: Bytes) -> Response {
    let c: Change = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(brake) = Brake::parse(&c.action) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!(
                "`{}` is not a brake (kill, quarantine, lockdown, resume)",
                c.action
            ),
        );
    };
    match app.brake(brake, &c.scope, &c.reason).await {
        Ok(b) => Json(json!({
            "action": brake.as_str(),
            "scope": c.scope,
            "changed": b.changed,
            "stopped": b.stopped,
            "recorded": b.recorded,
        }))
        .into_response(),
        Err(e @ OperatorError::Scope { .. }) => refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /admin/v1/approvals`: every request kept, newest first (pending, then recent ones).
async fn approvals_list(State(app): State<Operator>) -> Response {
    Json(json!({ "approvals": app.approvals() })).into_response()
}

/// `GET /admin/v1/approvals/{id}`: one request, with the exact call it is bound to and the
/// preview approvers sign against.
async fn approvals_show(State(app): State<Operator>, UrlPath(id): UrlPath<String>) -> Response {
    match app.approval(&id) {
        Some(r) => Json(r).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            &format!("no approval request `{id}`"),
        ),
    }
}

/// `POST /admin/v1/approvals/{id}/votes` with a [`warden_identity::approval::SignedVote`]:
/// counts an approver's signed vote; a refused one is recorded and answered with its rule.
async fn approvals_vote(
    State(app): State<Operator>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let vote: SignedVote = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not a signed vote: {e}")),
    };
    match app.vote(&id, &vote).await {
        Ok(r) => Json(json!({
            "id": r.id,
            "status": r.status.as_str(),
            "approved_by": r.approved_by(),
            "needed": r.requirement.needed(),
        }))
        .into_response(),
        Err(OperatorError::Vote(e)) => {
            use warden_runtime::operator::ApprovalError;
            let status = match e {
                ApprovalError::Unknown(_) => StatusCode::NOT_FOUND,
                ApprovalError::BadSignature(_) | ApprovalError::UnknownApprover(_) => {
                    StatusCode::UNAUTHORIZED
                }
                ApprovalError::NotPending { .. }
                | ApprovalError::AlreadyVoted { .. }
                | ApprovalError::Replayed(_)
                | ApprovalError::Busy(_) => StatusCode::CONFLICT,
                ApprovalError::Unavailable(_) | ApprovalError::NoRandomness => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::FORBIDDEN,
            };
            (
                status,
                Json(json!({ "error": e.to_string(), "rule": e.rule() })),
            )
                .into_response()
        }
        Err(e @ OperatorError::BadVote(_)) => refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /admin/v1/governance/proposals` (body empty, or `{"file": "NAME"}`): proposes the
/// manifest at the served path — or the staged file NAME beside it, to be installed once
/// approved — as the next version; answers the approval request (its preview is the diff).
async fn governance_propose(State(app): State<Operator>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Staged {
        file: String,
    }
    let staged = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Staged>(&body) {
            Ok(s) => Some(s.file),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not a proposal: {e}")),
        }
    };
    match app.propose_manifest(staged.as_deref()).await {
        Ok(r) => Json(r).into_response(),
        Err(e @ OperatorError::NotRecorded(_)) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e @ OperatorError::BadFile) => refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

/// `POST /admin/v1/agents/{id}/promote`: restores a demoted agent, or proposes its promotion
/// one trust level up (see `warden_runtime::promotion`); call again once approved.
async fn agents_promote(State(app): State<Operator>, UrlPath(id): UrlPath<String>) -> Response {
    use warden_runtime::promotion::Promoted;
    match app.promote(&id).await {
        Ok(Promoted::Restored(r)) => Json(json!({
            "status": "restored",
            "agent": id,
            "approved_by": r.approved_by(),
        }))
        .into_response(),
        Ok(Promoted::RestoredByOperator) => Json(json!({
            "status": "restored",
            "agent": id,
            "approved_by": [],
            "by": "the operator (the manifest names no governance approvers)",
        }))
        .into_response(),
        Ok(Promoted::RestorePending(r)) => Json(json!({
            "status": "pending",
            "agent": id,
            "approval": r,
            "next": "have it approved (warden approvals approve ID), then run warden agents promote again",
        }))
        .into_response(),
        Ok(Promoted::Proposed { request, file, to }) => Json(json!({
            "status": "proposed",
            "agent": id,
            "to": to.as_str(),
            "file": file.display().to_string(),
            "approval": request,
            "next": "have it approved (warden approvals approve ID), install the file as the manifest, then reload (SIGHUP)",
        }))
        .into_response(),
        Err(e) => refuse(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Serves the admin API on `listener` until `shutdown` completes.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Operator,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(crate::native_api::no_delay(listener), router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
