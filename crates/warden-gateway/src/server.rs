//! The HTTP API: `GET /healthz`, `GET /v1/manifest`, `POST /v1/decide` (a dry run, see
//! [`crate::dry_run`]), `POST /v1/sessions` and `POST /v1/proposals` (signed, on the governed
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
use std::sync::Arc;
use warden_core::proposal::MAX_PROPOSAL_BYTES;
use warden_core::state::StateStore;
use warden_core::{Proposal, Verdict};
use warden_ledger::Ledger;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The Governor for the current manifest version.
    pub governor: Arc<crate::current::CurrentGovernor>,
    /// Counters, session history and holds.
    pub state: Arc<dyn StateStore>,
    /// The Witness ledger every decision is recorded in.
    pub ledger: Arc<Ledger>,
    /// Credentials, revocations and request nonces for `/v1/proposals`.
    pub identity: Arc<crate::agents::IdentityState>,
    /// The Executor: with one, an allowed signed proposal is run (and its result returned)
    /// instead of its grant being handed out.
    pub executor: Option<Arc<warden_executor::Executor>>,
    /// Approval requests of escalated calls (issue 7).
    pub approvals: Arc<warden_identity::approval::Book>,
    /// Consecutive failures per agent (circuit breakers).
    pub breakers: Arc<crate::breakers::Breakers>,
    /// Webhooks (approval requests, tripped breakers).
    pub notifier: crate::notify::Notifier,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("manifest_version", &self.governor.get().manifest().version)
            .finish_non_exhaustive()
    }
}

/// The API's routes.
pub fn router(app: AppState) -> Router {
    router_with(app, true)
}

/// The routes; the unauthenticated `/v1/decide` only when `unauthenticated_decide` (the gateway
/// serves it on loopback only: anyone who can reach it could speak for any agent).
pub fn router_with(app: AppState, unauthenticated_decide: bool) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/manifest", get(manifest))
        .route("/v1/sessions", post(sessions))
        .route("/v1/proposals", post(proposals));
    if unauthenticated_decide {
        r = r.route("/v1/decide", post(decide));
    }
    r.layer(DefaultBodyLimit::max(MAX_PROPOSAL_BYTES))
        .with_state(app)
}

async fn manifest(State(app): State<AppState>) -> Json<serde_json::Value> {
    let g = app.governor.get();
    let m = g.manifest();
    Json(json!({
        "manifest_version": m.version,
        "policy_hash": g.policy_hash(),
        "agents": m.agents.len(),
        "tools": m.tools.len(),
        "policies": g.cedar().policy_count,
    }))
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`), if valid.
pub(crate) fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

/// A fresh request id: 16 random bytes in hex.
fn request_id() -> String {
    let mut b = [0u8; 16];
    // Without randomness the id still must be unique per process: fall back to time and a
    // counter (uniqueness, not secrecy, is what the id needs).
    if getrandom::fill(&mut b).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = crate::now_unix().unsigned_abs();
        b = ((u128::from(t) << 64) | u128::from(n)).to_le_bytes();
    }
    let mut s = String::with_capacity(32);
    warden_core::canonical::push_hex(&mut s, &b);
    s
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
    let governor = app.governor.get();
    let found = crate::path::egress_findings(&governor, app.executor.as_deref(), &proposal);
    // INVARIANT (a dry run spends nothing): anyone on the host can name any agent here, so the
    // decision is made over read-only state and is neither recorded nor acted on.
    let decision = governor.decide_scanned(
        &proposal,
        &crate::dry_run::ReadOnly(app.state.as_ref()),
        crate::now_unix(),
        &found,
    );
    let status = match decision.decision {
        Verdict::Allow => StatusCode::OK,
        Verdict::Deny => StatusCode::FORBIDDEN,
        Verdict::Escalate => StatusCode::ACCEPTED,
    };
    let mut body = serde_json::to_value(&decision).unwrap_or_else(|_| json!({}));
    if let Some(obj) = body.as_object_mut() {
        obj.insert("dry_run".into(), true.into());
        obj.insert("note".into(), crate::dry_run::NOTE.into());
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

/// Who sent a signed request.
struct Caller {
    identity: warden_identity::Identity,
    credential: String,
}

/// Authenticates a signed request to `path`: credential, then RFC 9421 signature, nonce and
/// time window. Refusals by an authenticated agent are recorded in the ledger.
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<Caller, Response> {
    let now = crate::now_unix();
    let token = headers
        .get("warden-credential")
        .and_then(|v| v.to_str().ok());
    let identity = match verify_credential(app, token) {
        Ok(i) => i,
        Err((status, rule, _)) if token.is_none() => {
            return Err(error(
                status,
                rule,
                "no Warden-Credential header: enrol the agent with `warden agents enroll`".into(),
            ))
        }
        Err((status, rule, why)) => return Err(error(status, rule, why)),
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // The verified (and cached) identity names its credential: no second parse per request.
    let credential = identity.credential.clone();
    if let Err(e) = warden_identity::request::verify(
        &identity.subject_key,
        &credential,
        "POST",
        path,
        body,
        h("content-digest"),
        h("signature-input"),
        h("signature"),
        now,
        app.identity.nonces.as_ref(),
    ) {
        // A request the key holder really signed but that is refused (replayed, stale) is
        // evidence: record it. Anything else could be anyone's, and is not written.
        if e.is_authentic() {
            record_event(
                app,
                "request.refused",
                &identity,
                "",
                &e.to_string(),
                headers,
            )
            .await;
        }
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "request.signature",
            e.to_string(),
        ));
    }
    Ok(Caller {
        identity,
        credential,
    })
}

/// Verifies a credential token: the revocation list is current, the Governor signed it, it is
/// unexpired and unrevoked, and the current manifest lists its agent as the credential says.
pub(crate) fn verify_credential(
    app: &AppState,
    token: Option<&str>,
) -> Result<warden_identity::Identity, (StatusCode, &'static str, String)> {
    // INVARIANT (fail-closed): if the revocation list cannot be read, nobody is authenticated.
    if let Err(e) = app.identity.refresh() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "identity.unavailable",
            e.to_string(),
        ));
    }
    let Some(token) = token else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "identity.missing",
            "no credential: enrol the agent with `warden agents enroll` and present its credential"
                .into(),
        ));
    };
    let identity = app
        .identity
        .verifier
        .verify_token(token, crate::now_unix())
        .map_err(|e| (StatusCode::UNAUTHORIZED, "identity.invalid", e.to_string()))?;
    // INVARIANT (no impersonation): the credential's agent must be in the current manifest with
    // the same tenant, owner and zone, and no more trust than the credential carries — the
    // Governor decides by the manifest's entry for that name.
    let governor = app.governor.get();
    let listed = governor
        .manifest()
        .agents
        .get(&identity.agent)
        .is_some_and(|a| {
            a.tenant == identity.tenant
                && a.owner == identity.owner
                && a.zone == identity.zone
                && warden_identity::credential::trust_rank(a.trust.as_str())
                    <= warden_identity::credential::trust_rank(&identity.trust)
        });
    if !listed {
        return Err((
            StatusCode::FORBIDDEN,
            "identity.not_in_manifest",
            format!(
                "agent `{}` is not in the manifest with this credential's tenant, owner, zone and trust",
                identity.agent
            ),
        ));
    }
    Ok(identity)
}

/// Appends a security event (best effort: the request is refused whether or not it lands).
async fn record_event(
    app: &AppState,
    kind: &str,
    who: &warden_identity::Identity,
    session: &str,
    reason: &str,
    headers: &HeaderMap,
) {
    let trace = trace_id(headers);
    let about = crate::witness::About {
        agent: &who.agent,
        tenant: &who.tenant,
        session,
        trace_id: &trace,
        request_id: None,
    };
    crate::witness::record_event(&app.ledger, kind, about, reason.to_owned()).await;
}

/// Session lifetime granted by `/v1/sessions` (bounded by the credential's expiry).
const SESSION_SECS: i64 = 8 * 3600;

/// `POST /v1/sessions` (signed, body `{"session": "<id>"}`): the Governor-signed lineage the
/// agent must present with every proposal in that session.
async fn sessions(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match authenticate(&app, &headers, "/v1/sessions", &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Open {
        session: String,
    }
    let open: Open = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, "session.invalid", e.to_string()),
    };
    if open.session.is_empty()
        || open.session.len() > warden_core::proposal::MAX_ID_BYTES
        || open.session.chars().any(char::is_control)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "session.invalid",
            "session must be 1 to 256 characters without control characters".into(),
        );
    }
    let expires_at = (crate::now_unix() + SESSION_SECS).min(caller.identity.expires_at);
    match app.identity.open_session(
        &caller.identity,
        &caller.credential,
        &open.session,
        expires_at,
    ) {
        Ok(lineage) => Json(json!({
            "session": open.session,
            "lineage": lineage,
            "expires_at": expires_at,
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "session.error",
            e.to_string(),
        ),
    }
}

/// `POST /v1/proposals`: a proposal signed by an enrolled agent (credential in
/// `Warden-Credential`, RFC 9421 signature over method, path and `Content-Digest`), carrying its
/// session's lineage in `Warden-Lineage`.
async fn proposals(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Caller {
        identity,
        credential,
    } = match authenticate(&app, &headers, "/v1/proposals", &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let proposal = match Proposal::from_json_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "proposal.invalid", e.to_string()),
    };
    if proposal.agent != identity.agent {
        return error(
            StatusCode::FORBIDDEN,
            "identity.mismatch",
            format!(
                "the credential is for agent `{}`, the proposal names `{}`",
                identity.agent, proposal.agent
            ),
        );
    }
    let Some(lineage) = headers.get("warden-lineage").and_then(|v| v.to_str().ok()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "lineage.missing",
            "no Warden-Lineage header: open the session with POST /v1/sessions".into(),
        );
    };
    let mismatch = match app.identity.lineage.verify(lineage, crate::now_unix()) {
        Err(warden_identity::lineage::LineageError::Expired) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "lineage.expired",
                "the session's lineage expired: open the session again".into(),
            );
        }
        Err(e) => Some(e.to_string()),
        Ok(c) if c.session != proposal.session => Some(format!(
            "the lineage is for another session than `{}`",
            proposal.session
        )),
        Ok(c)
            if c.agent != identity.agent
                || c.owner != identity.owner
                || c.chain != identity.chain
                || c.credential != credential =>
        {
            Some("the lineage names another agent, owner, chain or credential".into())
        }
        Ok(_) => None,
    };
    if let Some(why) = mismatch {
        // INVARIANT (global revocation, seed 000): a lineage that does not match its session
        // revokes the agent and everything derived from it, and is recorded.
        let revoked = app.identity.revoke_now(&identity.agent, &credential);
        let reason = format!("{why}; agent `{}` revoked", identity.agent);
        record_event(
            &app,
            "lineage.mismatch",
            &identity,
            &proposal.session,
            &reason,
            &headers,
        )
        .await;
        if let Err(e) = revoked {
            tracing::error!(error = %e, "could not persist a revocation");
        }
        crate::promotion::demote(
            &app,
            &identity.agent,
            &identity.tenant,
            "a lineage mismatch",
        )
        .await;
        return error(StatusCode::FORBIDDEN, "lineage.mismatch", reason);
    }
    if let Some(executor) = &app.executor {
        // The same path as MCP calls: decide, record, grant, execute, receipt.
        let trace = trace_id(&headers);
        let run = crate::path::Run {
            identity: &identity,
            proposal: &proposal,
            trace: &trace,
            cancel: tokio_util::sync::CancellationToken::new(),
            // `Warden-Approval: apr_…` names the approval this call redeems (it must be for
            // this exact call; without it, an approved request for the same call is used).
            approval: headers.get("warden-approval").and_then(|v| v.to_str().ok()),
        };
        // `Warden-Wait: N` waits up to N seconds (at most the manifest's `wait_seconds`) for a
        // pending approval, then runs the call on it; without it the answer is at once (202).
        let max_wait = app.governor.get().manifest().approvals.wait_secs;
        let wait = headers
            .get("warden-wait")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(max_wait);
        let outcome = crate::path::propose_wait_and_run(&app, executor, run, wait, None).await;
        return outcome_response(outcome);
    }
    decide_and_record(
        &app,
        &proposal,
        &trace_id(&headers),
        identity.chain.clone(),
        identity.tools.as_ref(),
    )
    .await
}

/// The native API's answer for a proposal that went down the whole governed path: the
/// decision, and for an allowed call the (redacted) MCP result and its receipt's ledger index.
fn outcome_response(outcome: crate::path::Outcome) -> Response {
    use crate::path::Outcome;
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
            } else {
                StatusCode::FORBIDDEN
            };
            let mut body = decided(&decision, request_id, index);
            if let (Some(a), Some(obj)) = (approval, body.as_object_mut()) {
                obj.insert("approval".into(), approval_json(&a));
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
                obj.insert(
                    "result".into(),
                    serde_json::to_value(&executed.result).unwrap_or_default(),
                );
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
    }
}

/// What the governed path made of one proposal.
#[derive(Debug)]
pub enum Governed {
    /// The ledger could not record the decision: deny (INV-003).
    LedgerDown {
        /// Request id.
        request_id: String,
        /// Why.
        why: String,
    },
    /// Decided and recorded.
    Decided {
        /// The decision.
        decision: Box<warden_core::Decision>,
        /// Request id.
        request_id: String,
        /// Ledger index of the decision record.
        index: u64,
        /// The grant, when asked for and the decision allows.
        grant: Option<String>,
        /// The approval request an escalated call waits on.
        approval: Option<Box<warden_identity::approval::Request>>,
    },
    /// Allowed and recorded, but no grant could be minted: nothing may run.
    GrantDown {
        /// Why.
        why: String,
    },
}

/// Decides, records the decision in the ledger (with the delegation chain) and, if allowed,
/// mints the grant. Only the authenticated paths (`/mcp`, signed `/v1/proposals`) come here.
/// The caller's credential's tool list, the argument scan's findings and whether the call
/// awaits its approval are evidence the Governor decides on. An escalated call redeems its
/// approval (`approval_id`, or the approved request for the same call) or opens one
/// ([`crate::approvals`]).
#[expect(
    clippy::too_many_arguments,
    reason = "the governed path's inputs, each from a different source"
)]
pub async fn govern(
    app: &AppState,
    governor: &warden_policy::Governor,
    proposal: &Proposal,
    trace: &str,
    chain: Vec<String>,
    credential_tools: Option<&std::collections::BTreeSet<String>>,
    found: &[&str],
    approval_id: Option<&str>,
) -> Governed {
    // The whole decision runs under the one Governor snapshot the caller took (the same one its
    // argument scan used). Evidence: what the approval book holds for this call (claimed: an
    // approved request is held for it until finished below).
    let claimed = crate::approvals::claim(
        &app.approvals,
        governor,
        proposal,
        approval_id,
        crate::now_unix_ms(),
    );
    let evidence = warden_policy::Evidence {
        found,
        awaiting_approval: claimed.awaits(),
        credential_tools,
        approval: claimed.evidence(),
    };
    let decision = governor.decide_with(proposal, app.state.as_ref(), crate::now_unix(), &evidence);
    let redact = |s: &str| match &app.executor {
        Some(x) => x
            .redactor()
            .redact_str(s, &std::collections::BTreeSet::new())
            .map_or_else(|| s.to_owned(), |(r, _)| r),
        None => s.to_owned(),
    };
    tracing::info!(
        agent = %decision.agent,
        tool = %decision.tool,
        decision = decision.decision.as_str(),
        rules = ?decision.rules,
        "decision"
    );
    let request_id = request_id();
    let redeemed = crate::approvals::redeemed(&decision);
    // INVARIANT (fail-closed, INV-003): a decision the ledger did not durably record is
    // answered as a deny, whatever the Governor said. The lineage: the owner, then the
    // delegation chain down to the caller.
    let recorded = match app
        .ledger
        .record_decision(decision, trace, &request_id, chain)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "ledger append failed; answering deny");
            // The approval a redeeming call used stays used: the call did not run and must be
            // approved again (fail closed). The decision moved into the failed record; what
            // it redeemed is known from the claim.
            claimed.finish(
                &app.approvals,
                governor,
                proposal,
                redeemed,
                None,
                &redact,
                crate::now_unix_ms(),
            );
            return Governed::LedgerDown {
                request_id,
                why: e.to_string(),
            };
        }
    };
    let (index, decision) = (recorded.index(), recorded.decision());
    let pending = claimed.finish(
        &app.approvals,
        governor,
        proposal,
        redeemed,
        Some(decision),
        &redact,
        crate::now_unix_ms(),
    );
    // A call a Cedar policy forbids is a violation: the agent is demoted (seed 002).
    if decision.decision == Verdict::Deny
        && decision
            .rules
            .first()
            .is_some_and(|r| r.starts_with("policy:"))
    {
        crate::promotion::demote(
            app,
            &decision.agent,
            &decision.tenant,
            &format!(
                "a call to `{}` forbidden by {}",
                decision.tool,
                decision.rules.first().map_or("", String::as_str)
            ),
        )
        .await;
    }
    if let Some((r, true)) = &pending {
        let text = crate::approvals::requirement_text(&r.requirement, r.critical);
        crate::approvals::record(
            &app.ledger,
            "approval.requested",
            &r.binding,
            format!(
                "approval {} for `{}` (decision {index}) needs {text}",
                r.id, r.binding.tool
            ),
            &r.id,
        )
        .await;
        app.notifier.notify(
            "approval.requested",
            format!(
                "agent `{}` asks to call `{}`: needs {text} (approval {})",
                r.binding.agent, r.binding.tool, r.id
            ),
            json!({
                "id": r.id,
                "agent": r.binding.agent,
                "tenant": r.binding.tenant,
                "tool": r.binding.tool,
                "requires": text,
                "preview": r.preview,
                "expires_ms": r.expires_ms,
            }),
        );
    }
    let mut grant = None;
    // An allowed, recorded call gets its single-use grant (docs/grants.md).
    if decision.is_allow() {
        let now_ms = crate::now_unix_ms();
        match app
            .identity
            .grants
            .mint(&recorded, now_ms, warden_identity::grant::DEFAULT_TTL_MS)
        {
            Ok(g) => grant = Some(g),
            // INVARIANT (fail-closed): without a grant nothing can run; say so.
            Err(e) => return Governed::GrantDown { why: e.to_string() },
        }
    }
    Governed::Decided {
        decision: Box::new(recorded.into_decision()),
        request_id,
        index,
        grant,
        approval: pending.map(|(r, _)| Box::new(r)),
    }
}

/// Decides, records and answers over HTTP.
async fn decide_and_record(
    app: &AppState,
    proposal: &Proposal,
    trace: &str,
    chain: Vec<String>,
    credential_tools: Option<&std::collections::BTreeSet<String>>,
) -> Response {
    // No execution follows this API, so there is nothing to scan arguments against.
    let governor = app.governor.get();
    match govern(
        app,
        &governor,
        proposal,
        trace,
        chain,
        credential_tools,
        &[],
        None,
    )
    .await
    {
        Governed::LedgerDown { request_id, why } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "decision": "deny",
                "rules": ["ledger.unavailable"],
                "reason": why,
                "request_id": request_id,
            })),
        )
            .into_response(),
        Governed::GrantDown { why } => {
            error(StatusCode::SERVICE_UNAVAILABLE, "grant.unavailable", why)
        }
        Governed::Decided {
            decision,
            request_id,
            index,
            grant,
            approval,
        } => {
            let status = match decision.decision {
                Verdict::Allow => StatusCode::OK,
                Verdict::Deny => StatusCode::FORBIDDEN,
                Verdict::Escalate => StatusCode::ACCEPTED,
            };
            let mut body = serde_json::to_value(&*decision).unwrap_or_else(|_| json!({}));
            if let Some(obj) = body.as_object_mut() {
                obj.insert("request_id".into(), request_id.into());
                obj.insert("ledger_index".into(), index.into());
                if let Some(g) = grant {
                    obj.insert("grant".into(), g.into());
                }
                if let Some(a) = approval {
                    obj.insert("approval".into(), approval_json(&a));
                }
            }
            (status, Json(body)).into_response()
        }
    }
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
    serve_with(listener, app, None, shutdown).await
}

/// [`serve`], with more routes (the MCP front-end) merged in.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: AppState,
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

/// What an agent is told of the approval its call waits on (never the votes' signatures).
pub(crate) fn approval_json(r: &warden_identity::approval::Request) -> serde_json::Value {
    json!({
        "id": r.id,
        "status": r.status.as_str(),
        "requires": crate::approvals::requirement_text(&r.requirement, r.critical),
        "approvals": r.approved_by().len(),
        "expires_ms": r.expires_ms,
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
