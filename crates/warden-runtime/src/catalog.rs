//! What an agent may see of the upstreams' resources and prompts, and how a read or a get
//! becomes a proposal. Seed 003 as for tools: an agent sees only what a manifest entry lets it
//! use (its tenant, zone and trust level, and its credential's tool limits); every read and
//! every get is still decided, recorded and redacted on the governed path
//! ([`Runtime::propose`]).

use std::collections::BTreeSet;

use rmcp::model::{CompleteRequestParams, CompleteResult, Prompt, Resource, ResourceTemplate};
use warden_core::ActionKind;
use warden_manifest::actions::UriPattern;

use crate::caller::Caller;
use crate::runtime::Runtime;

/// Why a completion or a subscription came to nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompletionError {
    /// The resource is not one the agent may see.
    #[error("{0} is not one this agent may use")]
    NotVisible(String),
    /// The upstream could not answer a subscription.
    #[error(transparent)]
    Upstream(#[from] warden_executor::ExecError),
    /// The completion was decided deny (and recorded), or could not be decided.
    #[error("completion refused ({rule}): {reason}")]
    Refused {
        /// The deciding rule.
        rule: String,
        /// Why.
        reason: String,
    },
    /// Nothing could be decided (the ledger or the grant keys failed): nothing ran.
    #[error("completion not decided ({rule}): {reason}")]
    Undecided {
        /// The rule (`ledger.unavailable`, `grant.unavailable`).
        rule: String,
        /// Why.
        reason: String,
    },
    /// The completion was allowed, but the upstream did not complete it.
    #[error("completion failed: {0}")]
    Failed(String),
    /// The request is not a completion Warden can propose.
    #[error("{0}")]
    Invalid(String),
}

/// Who a list, completion or subscription is for: the caller's tenant, agent and session
/// key, so that a sandboxed upstream answers from that caller's runner.
struct Whose {
    tenant: String,
    agent: String,
    session_key: String,
}

impl Whose {
    fn of(caller: &Caller, session: &str) -> Self {
        let identity = caller.identity();
        Whose {
            tenant: identity.tenant.clone(),
            agent: identity.agent.clone(),
            session_key: warden_core::state::session_key(&identity.agent, session),
        }
    }

    fn boundary(&self) -> warden_executor::Boundary<'_> {
        warden_executor::Boundary {
            tenant: &self.tenant,
            agent: &self.agent,
            session_key: &self.session_key,
        }
    }
}

/// A resource or prompt entry an agent may see: its name and, for resources, its URIs.
struct Seen {
    name: String,
    uris: Vec<UriPattern>,
}

impl Seen {
    fn upstream(&self) -> Option<&str> {
        self.name.split_once('.').map(|(u, _)| u)
    }

    fn admits_uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|p| p.matches(uri))
    }
}

impl Runtime {
    /// The entries of `kind` the caller may see (its credential's tool limits apply to them
    /// by name, as to tools).
    fn entries(&self, caller: &Caller, kind: ActionKind) -> Vec<Seen> {
        let governor = self.shared.governor.get();
        let identity = caller.identity();
        governor
            .visible(&identity.agent, kind)
            .into_iter()
            .filter(|t| {
                identity
                    .tools
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(&t.name))
            })
            .map(|t| Seen {
                name: t.name.clone(),
                uris: t.uris.clone(),
            })
            .collect()
    }

    /// The names of the entries of `kind` the caller may see.
    pub(crate) fn visible_entries(&self, caller: &Caller, kind: ActionKind) -> Vec<String> {
        self.entries(caller, kind)
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn upstreams_of(entries: &[Seen]) -> BTreeSet<String> {
        entries
            .iter()
            .filter_map(|t| t.upstream().map(str::to_owned))
            .collect()
    }

    /// The resources the caller may read: those the upstreams list (as the instance serving
    /// the caller in `session` lists them) whose URIs an entry the caller may see admits (for
    /// the upstream that lists them). Names and URIs are the upstream's own (links to them in
    /// tool results stay valid).
    pub async fn visible_resources(&self, caller: &Caller, session: &str) -> Vec<Resource> {
        let entries = self.entries(caller, ActionKind::Resource);
        let whose = Whose::of(caller, session);
        let listed = self
            .shared
            .executor
            .resources(&Self::upstreams_of(&entries), whose.boundary())
            .await;
        listed
            .into_iter()
            .filter(|(up, r)| {
                entries
                    .iter()
                    .any(|e| e.upstream() == Some(up.as_str()) && e.admits_uri(&r.uri))
            })
            .map(|(_, r)| r)
            .collect()
    }

    /// The resource templates whose every URI an entry the caller may see admits (the
    /// template's text before its first `{` is under the entry's prefix).
    pub async fn visible_resource_templates(
        &self,
        caller: &Caller,
        session: &str,
    ) -> Vec<ResourceTemplate> {
        let entries = self.entries(caller, ActionKind::Resource);
        let whose = Whose::of(caller, session);
        let listed = self
            .shared
            .executor
            .resource_templates(&Self::upstreams_of(&entries), whose.boundary())
            .await;
        listed
            .into_iter()
            .filter(|(up, t)| {
                entries.iter().any(|e| {
                    e.upstream() == Some(up.as_str())
                        && e.uris.iter().any(|p| p.covers_template(&t.uri_template))
                })
            })
            .map(|(_, t)| t)
            .collect()
    }

    /// The prompts the caller may get, each named `<upstream>.<prompt>` (its entry's name).
    pub async fn visible_prompts(&self, caller: &Caller, session: &str) -> Vec<Prompt> {
        let entries = self.entries(caller, ActionKind::Prompt);
        let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let whose = Whose::of(caller, session);
        let listed = self
            .shared
            .executor
            .prompts(&Self::upstreams_of(&entries), whose.boundary())
            .await;
        listed
            .into_iter()
            .filter_map(|(up, mut p)| {
                let name = format!("{up}.{}", p.name);
                names.contains(name.as_str()).then(|| {
                    p.name = name;
                    p
                })
            })
            .collect()
    }

    /// The name a read of `uri` is proposed under: the resource entry that admits it, or, when
    /// none does, the URI itself — its secrets and credentials redacted, at most 200
    /// characters, no control characters — which the Governor then denies as unknown and the
    /// ledger records as what was asked.
    #[must_use]
    pub fn resource_action(&self, uri: &str) -> String {
        let governor = self.shared.governor.get();
        match governor.resource_entry(uri) {
            Some(entry) => entry.to_owned(),
            None => self.unlisted(uri),
        }
    }

    /// What an unlisted URI (or template) is recorded as: the URI itself, its secrets and
    /// credentials redacted, at most 200 characters, no control characters.
    fn unlisted(&self, uri: &str) -> String {
        // INVARIANT (INV-009): a URI may carry a token; what the ledger keeps of it is redacted.
        let credentials: BTreeSet<String> = warden_manifest::upstream::CREDENTIAL_DETECTORS
            .iter()
            .map(|d| (*d).to_owned())
            .collect();
        let redacted = self
            .shared
            .executor
            .redactor()
            .redact_str(uri, &credentials)
            .map_or_else(|| uri.to_owned(), |(r, _)| r);
        let name: String = redacted
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        if name.is_empty() {
            "(unlisted resource)".to_owned()
        } else {
            name
        }
    }

    /// Whether the caller may see a resource entry that admits `uri`.
    #[must_use]
    pub fn may_read(&self, caller: &Caller, uri: &str) -> bool {
        self.entries(caller, ActionKind::Resource)
            .iter()
            .any(|e| e.admits_uri(uri))
    }

    /// Whether any resource entry of the manifest admits `uri` (what a subscription's
    /// acknowledgment may name before the caller is known).
    #[must_use]
    pub fn admitted_anywhere(&self, uri: &str) -> bool {
        self.shared.governor.get().resource_entry(uri).is_some()
    }

    /// Subscribes `sink` to updates of `uri`, which a resource entry the caller may see must
    /// admit, at the upstream that serves it. Updates arrive while the subscription lives.
    ///
    /// # Errors
    /// [`CompletionError::NotVisible`] for a URI the caller may not read; the upstream's
    /// refusal.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        session: &str,
        uri: &str,
        sink: warden_executor::UpdateSink,
    ) -> Result<warden_executor::Subscription, CompletionError> {
        let entry = self
            .entries(caller, ActionKind::Resource)
            .into_iter()
            .find(|e| e.admits_uri(uri))
            .ok_or_else(|| CompletionError::NotVisible(format!("resource `{uri}`")))?;
        let upstream = entry.upstream().unwrap_or_default().to_owned();
        let whose = Whose::of(caller, session);
        Ok(self
            .shared
            .executor
            .subscribe(&upstream, whose.boundary(), uri, sink)
            .await?)
    }

    /// Completes an argument of a prompt (`ref/prompt`, by its `<upstream>.<prompt>` name) or
    /// a resource template (`ref/resource`, by its URI template): a proposal like a get or a
    /// read of that entry, decided by the Governor, recorded with its receipt, its candidates
    /// redacted and labelled as the entry's output. A completion that would need a person's
    /// approval is denied; it never waits.
    ///
    /// # Errors
    /// [`CompletionError`]: refused (recorded), failed at the upstream, or not a completion.
    pub async fn complete(
        &self,
        caller: &Caller,
        session: &str,
        params: CompleteRequestParams,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<CompleteResult, CompletionError> {
        use rmcp::model::Reference;
        let context = params
            .context
            .and_then(|c| c.arguments)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let (tool, kind, uri) = match params.r#ref {
            Reference::Prompt(p) => (p.name, ActionKind::Prompt, None),
            Reference::Resource(r) => {
                // The entry the caller may see that covers the template, else any (denied).
                let seen = self
                    .entries(caller, ActionKind::Resource)
                    .into_iter()
                    .find(|e| e.uris.iter().any(|u| u.covers_template(&r.uri)))
                    .map(|e| e.name);
                let governor = self.shared.governor.get();
                let entry = seen.or_else(|| governor.template_entry(&r.uri).map(str::to_owned));
                let tool = entry.unwrap_or_else(|| self.unlisted(&r.uri));
                (tool, ActionKind::Resource, Some(r.uri))
            }
            _ => {
                return Err(CompletionError::Invalid(
                    "a completion names a prompt (`ref/prompt`) or a resource template \
                     (`ref/resource`)"
                        .into(),
                ))
            }
        };
        let completing = warden_core::Completing {
            uri,
            argument: params.argument.name,
            value: params.argument.value,
            context,
        };
        let call = crate::governed::Call {
            session: session.to_owned(),
            tool,
            kind,
            operation: warden_core::Operation::Complete,
            arguments: completing.to_arguments(),
            trace: None,
            cancel,
            approval: None,
            wait_secs: Some(0),
            progress: None,
            client: None,
        };
        completion_of(self.propose(caller, call).await)
    }
}

/// What a completion's outcome tells the client.
fn completion_of(outcome: crate::governed::Outcome) -> Result<CompleteResult, CompletionError> {
    use crate::governed::Outcome;
    match outcome {
        Outcome::Ran { executed, .. } => match executed.result {
            warden_executor::Answer::Completion(mut answer) => {
                // An upstream on an older revision sends no `resultType`; a client on
                // 2026-07-28 requires it (rmcp strips it again for older clients).
                answer
                    .result_type
                    .get_or_insert(rmcp::model::ResultType::COMPLETE);
                Ok(answer)
            }
            _ => Err(CompletionError::Failed(
                "the upstream answered something other than completions".into(),
            )),
        },
        Outcome::Decided { decision, .. } => Err(CompletionError::Refused {
            rule: decision.rules.first().cloned().unwrap_or_default(),
            reason: decision.reason,
        }),
        Outcome::NotDecided { rule, why, .. } => Err(CompletionError::Undecided {
            rule: rule.to_owned(),
            reason: why,
        }),
        Outcome::Failed { error, .. } => Err(CompletionError::Failed(error)),
        Outcome::Invalid { why } => Err(CompletionError::Invalid(why)),
    }
}
