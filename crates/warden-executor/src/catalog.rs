//! What upstreams offer besides tools, for the front-ends' lists: resources, resource
//! templates and prompts. Listing runs nothing an agent asked for and
//! reads no resource; the Runtime shows each agent only what its manifest entries let it see.
//! Every text listed is redacted like a result (an upstream may print its own secrets into a
//! description).

use std::collections::BTreeSet;
use std::sync::Arc;

use rmcp::model::{Prompt, Resource, ResourceTemplate, ServerCapabilities};

use crate::{ExecError, Executor, Redactor};

/// Which list to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Resources,
    Prompts,
}

impl Executor {
    /// The resources each named upstream lists now (all pages), with the upstream's name, as
    /// the instance that serves `caller` lists them (a sandboxed upstream's runner for the
    /// caller's boundary: what that process alone holds is listed to that boundary only).
    /// Upstreams that are down, or do not offer resources, or do not answer within their
    /// timeout, list nothing.
    pub async fn resources(
        &self,
        upstreams: &BTreeSet<String>,
        caller: Boundary<'_>,
    ) -> Vec<(String, Resource)> {
        let reached = self.offering(upstreams, Kind::Resources, caller).await;
        let out = gather(&self.redactor, reached, "resources/list", |c| async move {
            c.list_all_resources().await
        })
        .await;
        self.redact_listed(out)
    }

    /// The resource templates each named upstream lists now, as [`Executor::resources`].
    pub async fn resource_templates(
        &self,
        upstreams: &BTreeSet<String>,
        caller: Boundary<'_>,
    ) -> Vec<(String, ResourceTemplate)> {
        let reached = self.offering(upstreams, Kind::Resources, caller).await;
        let out = gather(
            &self.redactor,
            reached,
            "resources/templates/list",
            |c| async move { c.list_all_resource_templates().await },
        )
        .await;
        self.redact_listed(out)
    }

    /// The prompts each named upstream lists now, as [`Executor::resources`].
    pub async fn prompts(
        &self,
        upstreams: &BTreeSet<String>,
        caller: Boundary<'_>,
    ) -> Vec<(String, Prompt)> {
        let reached = self.offering(upstreams, Kind::Prompts, caller).await;
        let out = gather(&self.redactor, reached, "prompts/list", |c| async move {
            c.list_all_prompts().await
        })
        .await;
        self.redact_listed(out)
    }

    /// The named upstreams whose instance serving `caller` is up (or starts within its
    /// timeout: a start or a new listing under way is waited for) and says it offers `kind`,
    /// with their clients and timeouts.
    async fn offering(
        &self,
        upstreams: &BTreeSet<String>,
        kind: Kind,
        caller: Boundary<'_>,
    ) -> Vec<(String, Arc<crate::upstream::Client>, std::time::Duration)> {
        // All at once: one slow upstream delays the list by its own timeout, not the sum.
        let reached = upstreams.iter().filter_map(|name| {
            let up = self.instance(name, caller).ok()?;
            let timeout = std::time::Duration::from_millis(up.spec.timeout_ms);
            Some(async move {
                let Ok(Ok((client, _))) = tokio::time::timeout(timeout, up.client()).await else {
                    return None;
                };
                let offers = capabilities(&client).is_some_and(|caps| match kind {
                    Kind::Resources => caps.resources.is_some(),
                    Kind::Prompts => caps.prompts.is_some(),
                });
                offers.then(|| (name.clone(), client, timeout))
            })
        });
        futures::future::join_all(reached)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Each listed item redacted as JSON; an item whose redaction breaks its shape is left out.
    fn redact_listed<T>(&self, items: Vec<T>) -> Vec<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        items
            .into_iter()
            .filter_map(|item| self.redactor.without_secrets_in(item))
            .collect()
    }

    fn redacted_text(&self, text: &str) -> String {
        self.redactor
            .redact_str(text, &BTreeSet::new())
            .map_or_else(|| text.to_owned(), |(r, _)| r)
    }
}

/// Each reached upstream's list, read all at once (one slow upstream delays the answer by its
/// own timeout, not the sum), each item with its upstream's name.
async fn gather<T, F, Fut>(
    redactor: &Redactor,
    reached: Vec<(String, Arc<crate::upstream::Client>, std::time::Duration)>,
    method: &str,
    list: F,
) -> Vec<(String, T)>
where
    F: Fn(Arc<crate::upstream::Client>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, rmcp::ServiceError>>,
{
    let lists = reached.into_iter().map(|(name, client, timeout)| {
        let listing = list(client);
        async move {
            let listed = tokio::time::timeout(timeout, listing).await;
            answered(redactor, &name, method, listed)
                .map(|items| {
                    items
                        .into_iter()
                        .map(|i| (name.clone(), i))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    });
    futures::future::join_all(lists)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A list an upstream answered, or `None` (logged: the upstream lists nothing this time).
fn answered<T>(
    redactor: &Redactor,
    upstream: &str,
    method: &str,
    r: Result<Result<Vec<T>, rmcp::ServiceError>, tokio::time::error::Elapsed>,
) -> Option<Vec<T>> {
    match r {
        Ok(Ok(listed)) => Some(listed),
        Ok(Err(e)) => {
            // The upstream's error message may quote a secret (a header it was refused with).
            let error = redactor.without_secrets(e.to_string());
            tracing::warn!(upstream, method, %error, "the upstream's list failed");
            None
        }
        Err(_) => {
            tracing::warn!(upstream, method, "the upstream did not list in time");
            None
        }
    }
}

/// Who a completion or a subscription is for: a sandboxed upstream serves it from that
/// caller's runner (its boundary's process), never another boundary's.
#[derive(Debug, Clone, Copy)]
pub struct Boundary<'a> {
    /// The caller's tenant.
    pub tenant: &'a str,
    /// The caller's agent.
    pub agent: &'a str,
    /// The caller's session key ([`warden_core::state::session_key`]).
    pub session_key: &'a str,
}

impl Executor {
    /// The instance of `upstream` that serves `caller`: a sandboxed upstream's runner for the
    /// caller's boundary, or the upstream itself.
    fn instance(
        &self,
        upstream: &str,
        caller: Boundary<'_>,
    ) -> Result<Arc<crate::upstream::Upstream>, ExecError> {
        let template = self
            .upstreams
            .get(upstream)
            .ok_or_else(|| ExecError::Unavailable {
                upstream: upstream.to_owned(),
                why: "no such upstream".to_owned(),
            })?;
        // INVARIANT (seed 000 §1-2): a caller's completions and subscriptions go to its own
        // boundary's process.
        self.runner(template, caller.tenant, caller.agent, caller.session_key)
    }
}

/// What the upstream said it offers when it connected.
fn capabilities(client: &crate::upstream::Client) -> Option<ServerCapabilities> {
    client.peer().peer_info().map(|i| i.capabilities.clone())
}

/// Whether the upstream said it offers `completion/complete`.
pub(crate) fn offers_completions(client: &crate::upstream::Client) -> bool {
    client
        .peer()
        .peer_info()
        .is_some_and(|i| i.capabilities.completions.is_some())
}

/// Where `notifications/resources/updated` for one URI goes.
pub type UpdateSink = Arc<dyn Fn(&str) + Send + Sync>;

/// The subscribers of one upstream's resources, by URI.
#[derive(Default)]
pub(crate) struct Updates {
    sinks: std::sync::Mutex<std::collections::HashMap<String, Vec<(u64, UpdateSink)>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Updates {
    /// Tells every subscriber of `uri` it changed.
    pub(crate) fn updated(&self, uri: &str) {
        let sinks: Vec<UpdateSink> = self
            .sinks
            .lock()
            .ok()
            .and_then(|m| {
                m.get(uri)
                    .map(|v| v.iter().map(|(_, s)| Arc::clone(s)).collect())
            })
            .unwrap_or_default();
        for sink in sinks {
            sink(uri);
        }
    }

    /// The URIs that have subscribers.
    pub(crate) fn uris(&self) -> Vec<String> {
        self.sinks
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a subscriber; answers its id and whether it is the URI's first.
    fn add(&self, uri: &str, sink: UpdateSink) -> (u64, bool) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut m) = self.sinks.lock() else {
            return (id, false);
        };
        let list = m.entry(uri.to_owned()).or_default();
        list.push((id, sink));
        (id, list.len() == 1)
    }

    /// Removes a subscriber; answers whether it was the URI's last.
    fn remove(&self, uri: &str, id: u64) -> bool {
        let Ok(mut m) = self.sinks.lock() else {
            return false;
        };
        let Some(list) = m.get_mut(uri) else {
            return false;
        };
        list.retain(|(i, _)| *i != id);
        let last = list.is_empty();
        if last {
            m.remove(uri);
        }
        last
    }
}

/// One subscriber's subscription to one resource; dropping it ends it (and the upstream's
/// subscription, when it was the last for that URI).
pub struct Subscription {
    up: Arc<crate::upstream::Upstream>,
    uri: String,
    id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("upstream", &self.up.spec.name)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.up.relay.updates.remove(&self.uri, self.id) {
            return;
        }
        let (up, uri) = (Arc::clone(&self.up), std::mem::take(&mut self.uri));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(client) = up.client_if_connected() {
                    let params = rmcp::model::UnsubscribeRequestParams::new(uri);
                    #[expect(
                        deprecated,
                        reason = "resources/unsubscribe is what upstreams on earlier revisions take"
                    )]
                    let _ = client.peer().unsubscribe(params).await;
                }
            });
        }
    }
}

impl Executor {
    /// Subscribes `sink` to updates of `uri` on `upstream` (subscribing the upstream on the
    /// URI's first subscriber). Updates arrive while the returned [`Subscription`] lives.
    ///
    /// # Errors
    /// [`ExecError::Unavailable`] when the upstream is down or does not offer subscriptions;
    /// [`ExecError::Upstream`] when it refuses.
    pub async fn subscribe(
        &self,
        upstream: &str,
        caller: Boundary<'_>,
        uri: &str,
        sink: UpdateSink,
    ) -> Result<Subscription, ExecError> {
        let unavailable = |why: &str| ExecError::Unavailable {
            upstream: upstream.to_owned(),
            why: why.to_owned(),
        };
        let up = &self.instance(upstream, caller)?;
        let timeout = std::time::Duration::from_millis(up.spec.timeout_ms);
        let (client, _) = tokio::time::timeout(timeout, up.client())
            .await
            .map_err(|_| unavailable("it did not start in time"))??;
        let offers = capabilities(&client)
            .and_then(|c| c.resources)
            .is_some_and(|r| r.subscribe == Some(true));
        if !offers {
            return Err(unavailable("it offers no resource subscriptions"));
        }
        let (id, first) = up.relay.updates.add(uri, sink);
        let subscription = Subscription {
            up: Arc::clone(up),
            uri: uri.to_owned(),
            id,
        };
        if first {
            let params = rmcp::model::SubscribeRequestParams::new(uri);
            #[expect(
                deprecated,
                reason = "resources/subscribe is what upstreams on earlier revisions take"
            )]
            let asked = client.peer().subscribe(params);
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(ExecError::Upstream {
                        upstream: upstream.to_owned(),
                        why: self.redacted_text(&e.to_string()),
                    })
                }
                Err(_) => {
                    return Err(ExecError::Timeout {
                        upstream: upstream.to_owned(),
                        ms: up.spec.timeout_ms,
                    })
                }
            }
        }
        Ok(subscription)
    }
}
