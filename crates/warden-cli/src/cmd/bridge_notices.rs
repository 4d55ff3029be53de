//! What the daemon tells a bridged desktop client outside any request: list changes
//! (`notifications/{tools,resources,prompts}/list_changed`) and resource updates
//! (`notifications/resources/updated`). The daemon sends them on the standalone stream of the
//! bridge's session (its `GET /mcp`), already filtered for the agent; the bridge passes each
//! on in the desktop client's revision — unsolicited to a client before 2026-07-28 once it has
//! initialized, and to a 2026-07-28 client only on a `subscriptions/listen` stream that asked
//! for that list or that resource.
//!
//! The desktop client's subscriptions (its `resources/subscribe`s and each listen's
//! resources) are held at the daemon once per URI, counted here: the daemon is asked to
//! subscribe at the first and to unsubscribe after the last.

use rmcp::service::SubscriptionSink;
use rmcp::{Peer, RoleServer};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use warden_core::ActionKind;

/// What the daemon told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Notice {
    /// A list of this kind changed.
    Changed(ActionKind),
    Updated(String),
}

/// Who hears the daemon's notices, and what the desktop client holds at the daemon.
#[derive(Default)]
pub(super) struct Listeners {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A client before 2026-07-28, once initialized: told everything, unsolicited.
    unsolicited: Option<Peer<RoleServer>>,
    next: u64,
    /// A 2026-07-28 client's open listens.
    listens: Vec<(u64, Listen)>,
    /// How many of the client's subscriptions hold each URI at the daemon.
    held: HashMap<String, usize>,
}

struct Listen {
    lists: Vec<ActionKind>,
    uris: BTreeSet<String>,
    sink: SubscriptionSink,
}

impl Listen {
    fn wants(&self, notice: &Notice) -> bool {
        match notice {
            Notice::Changed(list) => self.lists.contains(list),
            Notice::Updated(uri) => self.uris.contains(uri),
        }
    }
}

/// Where one notice goes.
enum Target {
    Client(Peer<RoleServer>),
    Listen(SubscriptionSink),
}

impl Listeners {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The desktop client is on an earlier revision and initialized: it is told every notice.
    pub(super) fn tell_unsolicited(&self, client: Peer<RoleServer>) {
        self.lock().unsolicited = Some(client);
    }

    /// Adds a listen (its lists and resources, and where it is told); its id.
    pub(super) fn add(
        &self,
        lists: Vec<ActionKind>,
        uris: BTreeSet<String>,
        sink: SubscriptionSink,
    ) -> u64 {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner.listens.push((id, Listen { lists, uris, sink }));
        id
    }

    /// Removes listen `id` (it ended).
    pub(super) fn remove(&self, id: u64) {
        self.lock().listens.retain(|(i, _)| *i != id);
    }

    /// Counts one more hold on `uri`; whether it is the first (the daemon is then asked to
    /// subscribe).
    pub(super) fn hold(&self, uri: &str) -> bool {
        let mut inner = self.lock();
        let n = inner.held.entry(uri.to_owned()).or_default();
        *n += 1;
        *n == 1
    }

    /// Counts one hold on `uri` less; whether it was the last (the daemon is then asked to
    /// unsubscribe).
    pub(super) fn release(&self, uri: &str) -> bool {
        let mut inner = self.lock();
        let Some(n) = inner.held.get_mut(uri) else {
            return false;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return false;
        }
        inner.held.remove(uri);
        true
    }

    /// Passes `notice` on to whoever should hear it.
    pub(super) async fn tell(&self, notice: Notice) {
        let targets: Vec<Target> = {
            let inner = self.lock();
            let listens = inner
                .listens
                .iter()
                .filter(|(_, l)| l.wants(&notice))
                .map(|(_, l)| Target::Listen(l.sink.clone()));
            inner
                .unsolicited
                .iter()
                .map(|p| Target::Client(p.clone()))
                .chain(listens)
                .collect()
        };
        // A client or listen that went is simply not told.
        for target in targets {
            match target {
                Target::Client(p) => {
                    let _ = match &notice {
                        Notice::Changed(ActionKind::Tool) => p.notify_tool_list_changed().await,
                        Notice::Changed(ActionKind::Resource) => {
                            p.notify_resource_list_changed().await
                        }
                        Notice::Changed(ActionKind::Prompt) => p.notify_prompt_list_changed().await,
                        Notice::Updated(uri) => {
                            let params =
                                rmcp::model::ResourceUpdatedNotificationParam::new(uri.clone());
                            p.notify_resource_updated(params).await
                        }
                    };
                }
                Target::Listen(s) => {
                    let _ = match &notice {
                        Notice::Changed(ActionKind::Tool) => s.notify_tool_list_changed().await,
                        Notice::Changed(ActionKind::Resource) => {
                            s.notify_resource_list_changed().await
                        }
                        Notice::Changed(ActionKind::Prompt) => s.notify_prompt_list_changed().await,
                        Notice::Updated(uri) => s.notify_resource_updated(uri.clone()).await,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_is_subscribed_at_the_daemon_once_however_many_hold_it() {
        let l = Listeners::default();
        assert!(l.hold("a://1"), "the first hold subscribes");
        assert!(!l.hold("a://1"));
        assert!(l.hold("a://2"));
        assert!(!l.release("a://1"));
        assert!(l.release("a://1"), "the last release unsubscribes");
        assert!(!l.release("a://1"), "nothing is held any more");
        assert!(l.release("a://2"));
    }
}
