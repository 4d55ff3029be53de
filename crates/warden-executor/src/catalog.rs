//! What upstreams offer besides tools, for the front-ends' lists: resources, resource
//! templates, prompts, and argument completions. Listing runs nothing an agent asked for and
//! reads no resource; the Runtime shows each agent only what its manifest entries let it see.
//! Every text listed is redacted like a result (an upstream may print its own secrets into a
//! description).

use std::collections::BTreeSet;
use std::sync::Arc;

use rmcp::model::{
    CompleteRequestParams, CompleteResult, Prompt, Resource, ResourceTemplate, ServerCapabilities,
};

use crate::{ExecError, Executor};

/// Which list to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Resources,
    Prompts,
}

impl Executor {
    /// The resources each named upstream lists now (all pages), with the upstream's name.
    /// Upstreams that are down, or do not offer resources, or do not answer within their
    /// timeout, list nothing (and are started in the background).
    pub async fn resources(&self, upstreams: &BTreeSet<String>) -> Vec<(String, Resource)> {
        let mut out = Vec::new();
        for (name, client, timeout) in self.offering(upstreams, Kind::Resources).await {
            let listed = tokio::time::timeout(timeout, client.list_all_resources()).await;
            if let Some(listed) = answered(&name, "resources/list", listed) {
                out.extend(listed.into_iter().map(|r| (name.clone(), r)));
            }
        }
        self.redact_listed(out)
    }

    /// The resource templates each named upstream lists now, as [`Executor::resources`].
    pub async fn resource_templates(
        &self,
        upstreams: &BTreeSet<String>,
    ) -> Vec<(String, ResourceTemplate)> {
        let mut out = Vec::new();
        for (name, client, timeout) in self.offering(upstreams, Kind::Resources).await {
            let listed = tokio::time::timeout(timeout, client.list_all_resource_templates()).await;
            if let Some(listed) = answered(&name, "resources/templates/list", listed) {
                out.extend(listed.into_iter().map(|r| (name.clone(), r)));
            }
        }
        self.redact_listed(out)
    }

    /// The prompts each named upstream lists now, as [`Executor::resources`].
    pub async fn prompts(&self, upstreams: &BTreeSet<String>) -> Vec<(String, Prompt)> {
        let mut out = Vec::new();
        for (name, client, timeout) in self.offering(upstreams, Kind::Prompts).await {
            let listed = tokio::time::timeout(timeout, client.list_all_prompts()).await;
            if let Some(listed) = answered(&name, "prompts/list", listed) {
                out.extend(listed.into_iter().map(|p| (name.clone(), p)));
            }
        }
        self.redact_listed(out)
    }

    /// Asks `upstream` to complete an argument of one of its prompts or resource templates
    /// (`params` already names them as the upstream does). The values are redacted.
    ///
    /// # Errors
    /// [`ExecError::Unavailable`] when the upstream is down or offers no completions;
    /// [`ExecError::Timeout`], [`ExecError::Upstream`] as for a call.
    pub async fn complete(
        &self,
        upstream: &str,
        params: CompleteRequestParams,
    ) -> Result<CompleteResult, ExecError> {
        let unavailable = |why: &str| ExecError::Unavailable {
            upstream: upstream.to_owned(),
            why: why.to_owned(),
        };
        let up = self
            .upstreams
            .get(upstream)
            .ok_or_else(|| unavailable("no such upstream"))?;
        let timeout = std::time::Duration::from_millis(up.spec.timeout_ms);
        let (client, _) = tokio::time::timeout(timeout, up.client())
            .await
            .map_err(|_| unavailable("it did not start in time"))??;
        if capabilities(&client).is_none_or(|c| c.completions.is_none()) {
            return Err(unavailable("it offers no completions"));
        }
        let answer = tokio::time::timeout(timeout, client.peer().complete(params))
            .await
            .map_err(|_| ExecError::Timeout {
                upstream: upstream.to_owned(),
                ms: up.spec.timeout_ms,
            })?
            .map_err(|e| ExecError::Upstream {
                upstream: upstream.to_owned(),
                why: self.redacted_text(&e.to_string()),
            })?;
        Ok(self.redact_listed(vec![answer]).pop().unwrap_or_default())
    }

    /// The named upstreams that are up (or start within their timeout: a start or a new
    /// listing under way is waited for) and say they offer `kind`, with their clients and
    /// timeouts.
    async fn offering(
        &self,
        upstreams: &BTreeSet<String>,
        kind: Kind,
    ) -> Vec<(String, Arc<crate::upstream::Client>, std::time::Duration)> {
        let mut out = Vec::new();
        for name in upstreams {
            let Some(up) = self.upstreams.get(name) else {
                continue;
            };
            let timeout = std::time::Duration::from_millis(up.spec.timeout_ms);
            let Ok(Ok((client, _))) = tokio::time::timeout(timeout, up.client()).await else {
                continue;
            };
            let offers = capabilities(&client).is_some_and(|caps| match kind {
                Kind::Resources => caps.resources.is_some(),
                Kind::Prompts => caps.prompts.is_some(),
            });
            if offers {
                out.push((name.clone(), client, timeout));
            }
        }
        out
    }

    /// Each listed item redacted as JSON; an item whose redaction breaks its shape is left out.
    fn redact_listed<T>(&self, items: Vec<T>) -> Vec<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let none = BTreeSet::new();
        items
            .into_iter()
            .filter_map(|item| {
                let mut v = serde_json::to_value(&item).ok()?;
                if self.redactor.redact_json(&mut v, &none) == 0 {
                    return Some(item);
                }
                serde_json::from_value(v).ok()
            })
            .collect()
    }

    fn redacted_text(&self, text: &str) -> String {
        self.redactor
            .redact_str(text, &BTreeSet::new())
            .map_or_else(|| text.to_owned(), |(r, _)| r)
    }
}

/// A list an upstream answered, or `None` (logged: the upstream lists nothing this time).
fn answered<T>(
    upstream: &str,
    method: &str,
    r: Result<Result<Vec<T>, rmcp::ServiceError>, tokio::time::error::Elapsed>,
) -> Option<Vec<T>> {
    match r {
        Ok(Ok(listed)) => Some(listed),
        Ok(Err(e)) => {
            tracing::warn!(upstream, method, error = %e, "the upstream's list failed");
            None
        }
        Err(_) => {
            tracing::warn!(upstream, method, "the upstream did not list in time");
            None
        }
    }
}

/// What the upstream said it offers when it connected.
fn capabilities(client: &crate::upstream::Client) -> Option<ServerCapabilities> {
    client.peer().peer_info().map(|i| i.capabilities.clone())
}
