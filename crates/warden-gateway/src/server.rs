//! The HTTP API: `GET /healthz`, `GET /v1/manifest`, `POST /v1/decide`.
//!
//! `/v1/decide` takes a proposal and answers the Governor's decision. It is decision-only: it
//! executes nothing and mints no grant (those come with the Executor). Bodies over
//! [`warden_core::proposal::MAX_PROPOSAL_BYTES`] are refused before parsing; malformed bodies get
//! a 400 whose `error` names what was wrong; the server keeps serving.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use warden_core::proposal::MAX_PROPOSAL_BYTES;
use warden_core::state::StateStore;
use warden_core::{Proposal, Verdict};
use warden_policy::Governor;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The Governor for the current manifest version.
    pub governor: Arc<Governor>,
    /// Counters, session history and holds.
    pub state: Arc<dyn StateStore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("manifest_version", &self.governor.manifest().version)
            .finish_non_exhaustive()
    }
}

/// The API's routes.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/manifest", get(manifest))
        .route("/v1/decide", post(decide))
        .layer(DefaultBodyLimit::max(MAX_PROPOSAL_BYTES))
        .with_state(app)
}

async fn manifest(State(app): State<AppState>) -> Json<serde_json::Value> {
    let m = app.governor.manifest();
    Json(json!({
        "manifest_version": m.version,
        "policy_hash": app.governor.policy_hash(),
        "agents": m.agents.len(),
        "tools": m.tools.len(),
        "policies": app.governor.cedar().policy_count,
    }))
}

async fn decide(State(app): State<AppState>, body: Bytes) -> Response {
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
    let decision = app
        .governor
        .decide(&proposal, app.state.as_ref(), crate::now_unix());
    tracing::info!(
        agent = %decision.agent,
        tool = %decision.tool,
        decision = decision.decision.as_str(),
        rules = ?decision.rules,
        "decision"
    );
    let status = match decision.decision {
        Verdict::Allow => StatusCode::OK,
        Verdict::Deny => StatusCode::FORBIDDEN,
        Verdict::Escalate => StatusCode::ACCEPTED,
    };
    (status, Json(decision)).into_response()
}

/// Serves the API on `listener` until `shutdown` completes.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
