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

/// Why a completion or a subscription was not asked of an upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompletionError {
    /// The prompt or template is not one the agent may see.
    #[error("{0} is not one this agent may use")]
    NotVisible(String),
    /// The upstream could not answer.
    #[error(transparent)]
    Upstream(#[from] warden_executor::ExecError),
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
        if let Some(entry) = governor.resource_entry(uri) {
            return entry.to_owned();
        }
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

    /// Completes an argument of a prompt (`ref/prompt`, by its `<upstream>.<prompt>` name) or a
    /// resource template (`ref/resource`, by its URI template) the caller may see, asked of
    /// the upstream that serves it; the values are redacted.
    ///
    /// # Errors
    /// [`CompletionError`].
    pub async fn complete(
        &self,
        caller: &Caller,
        session: &str,
        mut params: CompleteRequestParams,
    ) -> Result<CompleteResult, CompletionError> {
        use rmcp::model::Reference;
        let upstream = match &mut params.r#ref {
            Reference::Prompt(p) => {
                let entry = self
                    .entries(caller, ActionKind::Prompt)
                    .into_iter()
                    .find(|e| e.name == p.name)
                    .ok_or_else(|| CompletionError::NotVisible(format!("prompt `{}`", p.name)))?;
                let (up, name) = entry
                    .name
                    .split_once('.')
                    .ok_or_else(|| CompletionError::NotVisible(format!("prompt `{}`", p.name)))?;
                p.name = name.to_owned();
                up.to_owned()
            }
            Reference::Resource(r) => {
                let entry = self
                    .entries(caller, ActionKind::Resource)
                    .into_iter()
                    .find(|e| e.uris.iter().any(|u| u.covers_template(&r.uri)))
                    .ok_or_else(|| {
                        CompletionError::NotVisible(format!("resource template `{}`", r.uri))
                    })?;
                entry.upstream().unwrap_or_default().to_owned()
            }
            _ => {
                return Err(CompletionError::NotVisible(
                    "a reference of another kind".into(),
                ))
            }
        };
        let whose = Whose::of(caller, session);
        let mut answer = self
            .shared
            .executor
            .complete(&upstream, whose.boundary(), params)
            .await?;
        // An upstream on an older revision sends no `resultType`; a client on 2026-07-28
        // requires it (rmcp strips it again for older clients).
        answer
            .result_type
            .get_or_insert(rmcp::model::ResultType::COMPLETE);
        Ok(answer)
    }
}
