//! Who is calling: the front-ends hand the Runtime what the request carried (a credential, a
//! signature, a session's lineage) and get back a [`Caller`] or a [`Refusal`] naming the rule.
//!
//! A `Caller` is made only here, from a credential the Governor signed, so a front-end cannot
//! propose a call in anyone's name but the authenticated agent's ([`crate::governed`] builds the
//! proposal from it).

use warden_identity::Identity;

use crate::runtime::Runtime;

/// An authenticated agent. Only [`Runtime::authenticate`] and
/// [`Runtime::authenticate_signed`] make one.
#[derive(Debug, Clone)]
pub struct Caller {
    identity: Identity,
}

impl Caller {
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The agent.
    #[must_use]
    pub fn agent(&self) -> &str {
        &self.identity.agent
    }

    /// Its tenant.
    #[must_use]
    pub fn tenant(&self) -> &str {
        &self.identity.tenant
    }

    /// The id of the credential it presented.
    #[must_use]
    pub fn credential(&self) -> &str {
        &self.identity.credential
    }

    /// The credentials (its own, then its parents') and the delegation chain it speaks for: what
    /// a revocation is matched against.
    #[must_use]
    pub fn lineage(&self) -> (Vec<String>, Vec<String>) {
        (
            self.identity.credentials.clone(),
            self.identity.chain.clone(),
        )
    }
}

/// How a refusal is to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Something Warden depends on is down (fail closed): 503.
    Unavailable,
    /// No or a bad credential, signature or lineage: 401.
    Unauthenticated,
    /// Authenticated, but not allowed to do this: 403.
    Forbidden,
    /// The request itself is malformed: 400.
    BadRequest,
    /// Warden could not do its part (nothing was done): 500.
    Internal,
}

/// A request refused before any decision, with the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {why}")]
pub struct Refusal {
    /// How to answer it.
    pub kind: RefusalKind,
    /// The rule (`identity.invalid`, `request.signature`, `lineage.mismatch`, ...).
    pub rule: &'static str,
    /// Why, for the caller.
    pub why: String,
}

/// What a refused request of `who` in `session` is recorded about.
fn about<'a>(who: &'a Identity, session: &'a str, trace: &'a str) -> crate::witness::About<'a> {
    crate::witness::About {
        agent: &who.agent,
        tenant: &who.tenant,
        session,
        trace_id: trace,
        request_id: None,
    }
}

fn refusal(kind: RefusalKind, rule: &'static str, why: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        rule,
        why: why.into(),
    }
}

/// A signed native-API request, as it came (RFC 9421 over method, path and `Content-Digest`).
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The `Warden-Credential` header.
    pub credential: Option<&'a str>,
    /// The path that was signed (`/v1/proposals`).
    pub path: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// The `Content-Digest` header.
    pub content_digest: Option<&'a str>,
    /// The `Signature-Input` header.
    pub signature_input: Option<&'a str>,
    /// The `Signature` header.
    pub signature: Option<&'a str>,
    /// The trace id, for what is recorded.
    pub trace: &'a str,
}

/// A session opened on the native API: the Governor-signed lineage to present with each
/// proposal in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedSession {
    /// The lineage token.
    pub lineage: String,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
}

/// Session lifetime granted by `/v1/sessions` (bounded by the credential's expiry).
const SESSION_SECS: i64 = 8 * 3600;

impl Runtime {
    /// Verifies a credential token: the revocation list is current, the Governor signed it, it
    /// is unexpired and unrevoked, and the current manifest lists its agent as the credential
    /// says.
    ///
    /// # Errors
    /// The [`Refusal`]: `identity.unavailable` (503), `identity.missing` or
    /// `identity.invalid` (401), `identity.not_in_manifest` (403).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller, Refusal> {
        let s = &self.shared;
        // INVARIANT (fail-closed): if the revocation list cannot be read, nobody is
        // authenticated.
        if let Err(e) = s.identity.refresh() {
            return Err(refusal(
                RefusalKind::Unavailable,
                "identity.unavailable",
                e.to_string(),
            ));
        }
        let Some(token) = token else {
            return Err(refusal(
                RefusalKind::Unauthenticated,
                "identity.missing",
                "no credential: enrol the agent with `warden agents enroll` and present its \
                 credential",
            ));
        };
        let identity = s
            .identity
            .verifier
            .verify_token(token, crate::now_unix())
            .map_err(|e| {
                refusal(
                    RefusalKind::Unauthenticated,
                    "identity.invalid",
                    e.to_string(),
                )
            })?;
        // INVARIANT (no impersonation): the credential's agent must be in the current manifest
        // with the same tenant, owner and zone, and no more trust than the credential carries —
        // the Governor decides by the manifest's entry for that name.
        let governor = s.governor.get();
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
            return Err(refusal(
                RefusalKind::Forbidden,
                "identity.not_in_manifest",
                format!(
                    "agent `{}` is not in the manifest with this credential's tenant, owner, \
                     zone and trust",
                    identity.agent
                ),
            ));
        }
        Ok(Caller { identity })
    }

    /// Authenticates a signed request: credential, then RFC 9421 signature, nonce and time
    /// window. A refusal of a request the key holder really signed (replayed, stale) is
    /// recorded.
    ///
    /// # Errors
    /// The [`Refusal`], as [`Runtime::authenticate`], or `request.signature` (401).
    pub async fn authenticate_signed(&self, req: SignedRequest<'_>) -> Result<Caller, Refusal> {
        let caller = match self.authenticate(req.credential) {
            Ok(c) => c,
            Err(r) if req.credential.is_none() => {
                return Err(refusal(
                    r.kind,
                    r.rule,
                    "no Warden-Credential header: enrol the agent with `warden agents enroll`",
                ))
            }
            Err(r) => return Err(r),
        };
        let identity = &caller.identity;
        if let Err(e) = warden_identity::request::verify(
            &identity.subject_key,
            &identity.credential,
            "POST",
            req.path,
            req.body,
            req.content_digest,
            req.signature_input,
            req.signature,
            crate::now_unix(),
            self.shared.identity.nonces.as_ref(),
        ) {
            // A request the key holder really signed but that is refused (replayed, stale) is
            // evidence: record it. Anything else could be anyone's, and is not written.
            if e.is_authentic() {
                let about = about(identity, "", req.trace);
                crate::witness::record(
                    &self.shared.ledger,
                    "request.refused",
                    about,
                    e.to_string(),
                )
                .await;
            }
            return Err(refusal(
                RefusalKind::Unauthenticated,
                "request.signature",
                e.to_string(),
            ));
        }
        Ok(caller)
    }

    /// Opens `session` for `caller` on the native API: the Governor-signed lineage it must
    /// present with every proposal in it.
    ///
    /// # Errors
    /// `session.invalid` (400) for an id that is empty, over 256 bytes or has control
    /// characters; `session.error` (500) if the lineage cannot be signed.
    pub fn open_session(&self, caller: &Caller, session: &str) -> Result<OpenedSession, Refusal> {
        if session.is_empty()
            || session.len() > warden_core::proposal::MAX_ID_BYTES
            || session.chars().any(char::is_control)
        {
            return Err(refusal(
                RefusalKind::BadRequest,
                "session.invalid",
                "session must be 1 to 256 characters without control characters",
            ));
        }
        let identity = &caller.identity;
        let expires_at = (crate::now_unix() + SESSION_SECS).min(identity.expires_at);
        self.shared
            .identity
            .open_session(identity, &identity.credential, session, expires_at)
            .map(|lineage| OpenedSession {
                lineage,
                expires_at,
            })
            .map_err(|e| refusal(RefusalKind::Internal, "session.error", e.to_string()))
    }

    /// Checks the lineage a proposal in `session` carries against its caller.
    ///
    /// # Errors
    /// `lineage.missing` or `lineage.expired` (401); `lineage.mismatch` (403), for which the
    /// agent is also revoked, demoted and the mismatch recorded.
    pub async fn check_lineage(
        &self,
        caller: &Caller,
        lineage: Option<&str>,
        session: &str,
        trace: &str,
    ) -> Result<(), Refusal> {
        let identity = &caller.identity;
        let Some(lineage) = lineage else {
            return Err(refusal(
                RefusalKind::Unauthenticated,
                "lineage.missing",
                "no Warden-Lineage header: open the session with POST /v1/sessions",
            ));
        };
        let mismatch = match self
            .shared
            .identity
            .lineage
            .verify(lineage, crate::now_unix())
        {
            Err(warden_identity::lineage::LineageError::Expired) => {
                return Err(refusal(
                    RefusalKind::Unauthenticated,
                    "lineage.expired",
                    "the session's lineage expired: open the session again",
                ));
            }
            Err(e) => e.to_string(),
            Ok(c) if c.session != session => {
                format!("the lineage is for another session than `{session}`")
            }
            Ok(c)
                if c.agent != identity.agent
                    || c.owner != identity.owner
                    || c.chain != identity.chain
                    || c.credential != identity.credential =>
            {
                "the lineage names another agent, owner, chain or credential".into()
            }
            Ok(_) => return Ok(()),
        };
        // INVARIANT (global revocation, seed 000): a lineage that does not match its session
        // revokes the agent and everything derived from it, and is recorded.
        let revoked = self
            .shared
            .identity
            .revoke_now(&identity.agent, &identity.credential);
        let reason = format!("{mismatch}; agent `{}` revoked", identity.agent);
        let about = about(identity, session, trace);
        crate::witness::record(
            &self.shared.ledger,
            "lineage.mismatch",
            about,
            reason.clone(),
        )
        .await;
        if let Err(e) = revoked {
            tracing::error!(error = %e, "could not persist a revocation");
        }
        crate::promotion::demote(
            &self.shared,
            &identity.agent,
            &identity.tenant,
            "a lineage mismatch",
        )
        .await;
        Err(refusal(RefusalKind::Forbidden, "lineage.mismatch", reason))
    }

    /// The revocation list, read again now: whether a session of these credentials and this
    /// chain is revoked. `None` if the list cannot be read (every request is refused then
    /// anyway).
    #[must_use]
    pub fn revocations(&self) -> Option<impl Fn(&[String], &[String]) -> bool + '_> {
        let identity = &self.shared.identity;
        identity.refresh().ok().map(|()| {
            |credentials: &[String], agents: &[String]| identity.revoked(credentials, agents)
        })
    }
}

/// A fresh random id (32 hex digits), for sessions; `None` only without randomness.
#[must_use]
pub fn random_id() -> Option<String> {
    warden_identity::credential::random_id().ok()
}
