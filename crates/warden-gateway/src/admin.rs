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

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path as UrlPath;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::keyfile;
use warden_core::state::{Hold, HoldKind, HoldScope, StateStore};
use warden_ledger::Ledger;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The state store decisions consult.
    pub state: Arc<dyn StateStore>,
    /// Where holds are recorded.
    pub ledger: Arc<Ledger>,
    /// SHA-256 of the admin token.
    // INVARIANT (separate credential): only this token opens the admin API.
    pub token_hash: [u8; 32],
    /// The Executor, whose calls in flight a kill, quarantine or lockdown stops.
    pub executor: Option<Arc<warden_executor::Executor>>,
    /// Approval requests, voted on here.
    pub approvals: Arc<warden_identity::approval::Book>,
    /// The current manifest (its approvers verify votes).
    pub governor: Arc<crate::current::CurrentGovernor>,
    /// The manifest file the gateway serves (governance proposals read it).
    pub manifest_path: Option<std::path::PathBuf>,
    /// Webhooks (brake changes, governance proposals).
    pub notifier: crate::notify::Notifier,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Where the admin token lives.
#[must_use]
pub fn token_path(data: &Path) -> std::path::PathBuf {
    data.join("keys").join("admin.token")
}

/// Loads the admin token's hash, creating the token (0600) on first use.
///
/// # Errors
/// [`crate::agents::AgentsError`] if it cannot be created or read, or is readable by others.
pub fn load_token_hash(data: &Path) -> Result<[u8; 32], crate::agents::AgentsError> {
    let path = token_path(data);
    if !path.exists() {
        let raw = keyfile::random32(&path)?;
        keyfile::write_secret(&path, keyfile::hex32(&raw).as_bytes())?;
    }
    let token = read_token(data)?;
    Ok(Sha256::digest(token.trim().as_bytes()).into())
}

/// Reads the admin token (for the CLI).
///
/// # Errors
/// [`crate::agents::AgentsError`] if it cannot be read or is readable by others.
pub fn read_token(data: &Path) -> Result<zeroize::Zeroizing<String>, crate::agents::AgentsError> {
    Ok(keyfile::read_secret(&token_path(data))?)
}

/// The admin routes.
pub fn router(app: AdminState) -> Router {
    Router::new()
        .route("/admin/v1/holds", get(list).post(change))
        .route("/admin/v1/approvals", get(approvals_list))
        .route("/admin/v1/approvals/{id}", get(approvals_show))
        .route("/admin/v1/approvals/{id}/votes", post(approvals_vote))
        .route("/admin/v1/governance/proposals", post(governance_propose))
        .route("/admin/v1/agents/{id}/promote", post(agents_promote))
        .with_state(app)
}

fn authorized(app: &AdminState, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| {
            let h: [u8; 32] = Sha256::digest(t.trim().as_bytes()).into();
            h == app.token_hash
        })
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

async fn list(State(app): State<AdminState>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    match app.state.all_holds() {
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

async fn change(State(app): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    let c: Change = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let now = crate::now_unix();
    let reason = if c.reason.is_empty() {
        format!("{} by an operator", c.action)
    } else {
        c.reason.chars().take(512).collect()
    };
    let set = |kind| Hold {
        scope: c.scope.clone(),
        kind,
        reason: reason.clone(),
        since: now,
    };
    // The brake is applied first (safety before bookkeeping), then recorded.
    let applied = match (c.action.as_str(), &c.scope) {
        ("kill", _) => app.state.set_hold(set(HoldKind::Kill)).map(|()| 1),
        ("quarantine", HoldScope::Agent(_) | HoldScope::Session(_)) => {
            app.state.set_hold(set(HoldKind::Quarantine)).map(|()| 1)
        }
        ("lockdown", HoldScope::Tenant(_)) => {
            app.state.set_hold(set(HoldKind::Quarantine)).map(|()| 1)
        }
        ("resume", _) => {
            let mut n = 0;
            let mut res = Ok(0);
            for kind in [HoldKind::Kill, HoldKind::Quarantine, HoldKind::Pause] {
                match app.state.clear_hold(&c.scope, kind) {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            res.map(|_: i32| n)
        }
        (a, s) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("`{a}` does not apply to {s} (kill: any scope; quarantine: agent or session; lockdown: tenant; resume: any)"),
            )
        }
    };
    let changed = match applied {
        Ok(n) => n,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    // INVARIANT (INV-025): the hold is set first; then what is already running in scope is
    // stopped. Calls that register after this see the hold (the Executor checks it after
    // registering), so nothing in scope runs once this answers.
    let stopped = match (c.action.as_str(), &app.executor) {
        ("kill" | "quarantine" | "lockdown", Some(ex)) => ex.stop(&c.scope),
        _ => 0,
    };
    let (agent, tenant, session) = match &c.scope {
        HoldScope::Agent(a) => (a.clone(), String::new(), String::new()),
        HoldScope::Tenant(t) => (String::new(), t.clone(), String::new()),
        HoldScope::Session(s) => (String::new(), String::new(), s.clone()),
        HoldScope::Global => (String::new(), String::new(), String::new()),
    };
    let about = crate::witness::About {
        agent: &agent,
        tenant: &tenant,
        session: &session,
        ..Default::default()
    };
    let reason_text = format!("{} ({}): {reason}", c.action, c.scope);
    let recorded = crate::witness::record_event(
        &app.ledger,
        &format!("hold.{}", c.action),
        about,
        reason_text,
    )
    .await;
    app.notifier.notify(
        "hold.changed",
        format!("{} ({}): {reason}", c.action, c.scope),
        json!({ "action": c.action, "scope": c.scope, "stopped": stopped }),
    );
    Json(json!({
        "action": c.action,
        "scope": c.scope,
        "changed": changed,
        "stopped": stopped,
        "recorded": recorded,
    }))
    .into_response()
}

/// `GET /admin/v1/approvals`: every request kept, newest first (pending, then recent ones).
async fn approvals_list(State(app): State<AdminState>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    Json(json!({ "approvals": app.approvals.list(crate::now_unix_ms()) })).into_response()
}

/// `GET /admin/v1/approvals/{id}`: one request, with the exact call it is bound to and the
/// preview approvers sign against.
async fn approvals_show(
    State(app): State<AdminState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    match app.approvals.get(&id, crate::now_unix_ms()) {
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
    State(app): State<AdminState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    use warden_identity::approval::{ApprovalError, SignedVote};
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    let vote: SignedVote = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not a signed vote: {e}")),
    };
    if !warden_identity::approval::valid_id(&id) || vote.approver.len() > 128 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not an approval id (apr_ and 24 hex digits), or an approver id over 128 bytes",
        );
    }
    if vote.request != id {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("the vote is for `{}`, not `{id}`", vote.request),
        );
    }
    let governor = app.governor.get();
    let manifest = governor.manifest();
    let approvers = crate::approvals::approvers(manifest);
    let now = crate::now_unix_ms();
    let voted = app.approvals.vote(
        &vote,
        &approvers,
        |who| manifest.agents.contains_key(who),
        now,
    );
    match voted {
        Ok(v) => {
            let r = &v.request;
            let kind = match (v.decided, r.status) {
                (true, warden_identity::approval::Status::Approved) => "approval.approved",
                (true, _) => "approval.denied",
                (false, _) => "approval.vote",
            };
            let reason = format!(
                "`{}` voted {} on approval {} for `{}` ({} of {} needed)",
                vote.approver,
                vote.verdict.as_str(),
                r.id,
                r.binding.tool,
                r.approved_by().len(),
                r.requirement.needed()
            );
            // INVARIANT (fail-closed): a vote takes effect only once the ledger recorded it;
            // one it did not record is taken back and authorizes nothing.
            if !crate::approvals::record(&app.ledger, kind, &r.binding, reason, &r.id).await {
                app.approvals.withdraw(&r.id);
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the vote could not be recorded in the ledger, so it was not counted; send it again",
                );
            }
            let r = &app
                .approvals
                .commit(&r.id, crate::now_unix_ms())
                .unwrap_or_else(|| r.clone());
            Json(json!({
                "id": r.id,
                "status": r.status.as_str(),
                "approved_by": r.approved_by(),
                "needed": r.requirement.needed(),
            }))
            .into_response()
        }
        Err(e) => {
            let status = match e {
                ApprovalError::Unknown(_) => StatusCode::NOT_FOUND,
                ApprovalError::BadSignature(_) | ApprovalError::UnknownApprover(_) => {
                    StatusCode::UNAUTHORIZED
                }
                ApprovalError::NotPending { .. }
                | ApprovalError::AlreadyVoted { .. }
                | ApprovalError::Replayed(_)
                | ApprovalError::Busy(_) => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            if let Some(r) = app.approvals.get(&id, now) {
                let reason = format!(
                    "vote by `{}` on approval {id} refused: {e}",
                    vote.approver.chars().take(128).collect::<String>()
                );
                crate::approvals::record(&app.ledger, "approval.refused", &r.binding, reason, &id)
                    .await;
            }
            (
                status,
                Json(json!({ "error": e.to_string(), "rule": e.rule() })),
            )
                .into_response()
        }
    }
}

/// `POST /admin/v1/governance/proposals` (body empty, or `{"file": "NAME"}`): proposes the
/// manifest at the served path — or the staged file NAME beside it, to be installed once
/// approved — as the next version; answers the approval request (its preview is the diff).
async fn governance_propose(
    State(app): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Staged {
        file: String,
    }
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    let Some(served) = app.manifest_path.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this gateway serves no manifest file",
        );
    };
    let path = if body.iter().all(u8::is_ascii_whitespace) {
        served
    } else {
        match serde_json::from_slice::<Staged>(&body) {
            // A bare file name beside the served manifest (its policies resolve the same way):
            // the admin API reads no other file.
            Ok(s)
                if !s.file.is_empty()
                    && s.file.len() <= 255
                    && !s.file.contains(['/', '\\'])
                    && s.file != ".."
                    && s.file != "." =>
            {
                served.with_file_name(&s.file)
            }
            Ok(_) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "`file` must be a file name in the served manifest's directory",
                )
            }
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("not a proposal: {e}")),
        }
    };
    let (book, current) = (Arc::clone(&app.approvals), app.governor.get());
    let proposed =
        tokio::task::spawn_blocking(move || crate::governance::propose(&book, &current, &path))
            .await;
    match proposed {
        Ok(Ok((r, new))) => {
            if new {
                let reason = format!(
                    "approval {} proposes bundle {} to replace manifest version {}",
                    r.id, r.binding.arguments_hash, r.binding.manifest_version
                );
                if !crate::governance::record(&app.ledger, "governance.proposed", reason.clone())
                    .await
                {
                    return refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the proposal could not be recorded in the ledger",
                    );
                }
                app.notifier
                    .notify("governance.proposed", reason, json!({ "id": r.id }));
            }
            Json(r).into_response()
        }
        Ok(Err(why)) => refuse(StatusCode::UNPROCESSABLE_ENTITY, &why),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `POST /admin/v1/agents/{id}/promote`: restores a demoted agent, or proposes its promotion
/// one trust level up, as [`crate::promotion::promote`] says; call again once approved.
async fn agents_promote(
    State(app): State<AdminState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    use crate::promotion::Promoted;
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "admin token required");
    }
    let Some(path) = app.manifest_path.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this gateway serves no manifest file",
        );
    };
    match crate::promotion::promote(&app, &path, &id).await {
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
        Err(why) => refuse(StatusCode::CONFLICT, &why),
    }
}

/// Serves the admin API on `listener` until `shutdown` completes.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(crate::server::no_delay(listener), router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
