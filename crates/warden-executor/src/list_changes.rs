//! What upstreams announce about their lists (`notifications/tools/list_changed`,
//! `notifications/resources/list_changed`, `notifications/prompts/list_changed`), for the
//! front-ends to tell their clients to list again. An announcement carries no data: what an
//! agent then lists is still filtered by its manifest entries.

use tokio::sync::broadcast;
use warden_core::ActionKind;

/// How many announcements wait for a slow listener before it is told it lagged (and should
/// take every list as changed).
const CAPACITY: usize = 64;

/// One upstream said its list of `kind` changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListChanged {
    /// The upstream's name.
    pub upstream: String,
    /// Which list.
    pub kind: ActionKind,
}

/// Where every upstream's announcements go; each listener gets all of them from when it
/// subscribed.
#[derive(Debug, Clone)]
pub(crate) struct ListChanges(broadcast::Sender<ListChanged>);

impl Default for ListChanges {
    fn default() -> Self {
        Self(broadcast::channel(CAPACITY).0)
    }
}

impl ListChanges {
    /// Tells every listener that `upstream`'s list of `kind` changed (nobody listening is fine).
    pub(crate) fn announce(&self, upstream: &str, kind: ActionKind) {
        let _ = self.0.send(ListChanged {
            upstream: upstream.to_owned(),
            kind,
        });
    }

    /// A listener for announcements from now on.
    pub(crate) fn listen(&self) -> broadcast::Receiver<ListChanged> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_each_announcement_and_a_slow_one_learns_it_lagged() {
        let changes = ListChanges::default();
        let (mut a, mut b) = (changes.listen(), changes.listen());
        changes.announce("files", ActionKind::Resource);
        for r in [&mut a, &mut b] {
            assert_eq!(
                r.recv().await.ok(),
                Some(ListChanged {
                    upstream: "files".into(),
                    kind: ActionKind::Resource
                })
            );
        }
        for _ in 0..=CAPACITY {
            changes.announce("files", ActionKind::Prompt);
        }
        assert!(matches!(
            a.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
