//! Which lists a client should read again: an upstream announced a change to a list of
//! something the caller may see, or a new manifest came into force (then anything it sees may
//! have changed). The front-ends turn each into `notifications/tools/list_changed`,
//! `notifications/resources/list_changed` or `notifications/prompts/list_changed` — unsolicited
//! on a stdio connection of an earlier revision, on a `subscriptions/listen` stream that asked
//! for them on 2026-07-28. A notification carries nothing but "list again"; what the caller
//! then lists is filtered by its entries as always.

use tokio::sync::{broadcast, watch};
use warden_core::ActionKind;
use warden_executor::ListChanged;

use crate::caller::Caller;
use crate::runtime::Runtime;

/// Every kind of list, in the order a manifest swap announces them.
const ALL: [ActionKind; 3] = [ActionKind::Tool, ActionKind::Resource, ActionKind::Prompt];

/// Changes to the lists of one listener, from when it was made.
pub struct CatalogChanges {
    runtime: Runtime,
    announced: broadcast::Receiver<ListChanged>,
    swaps: watch::Receiver<u64>,
    /// Kinds due to be told, without repeats.
    due: std::collections::VecDeque<ActionKind>,
}

impl std::fmt::Debug for CatalogChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogChanges")
            .field("due", &self.due)
            .finish_non_exhaustive()
    }
}

impl CatalogChanges {
    fn owe(&mut self, kind: ActionKind) {
        if !self.due.contains(&kind) {
            self.due.push_back(kind);
        }
    }

    /// The next list `caller` should read again (waits for it). `None` once nothing can change
    /// any more. The caller is passed each time so that a front-end can
    /// check it again (a revoked credential is not told anything).
    pub async fn next(&mut self, caller: &Caller) -> Option<ActionKind> {
        loop {
            if let Some(kind) = self.due.pop_front() {
                return Some(kind);
            }
            let heard = tokio::select! {
                swapped = self.swaps.changed() => {
                    swapped.ok()?;
                    None
                }
                heard = self.announced.recv() => Some(heard),
            };
            match heard {
                // A new manifest: anything the caller sees may have changed.
                None => ALL.into_iter().for_each(|k| self.owe(k)),
                Some(Ok(c)) => {
                    if self.runtime.sees_any(caller, c.kind, &c.upstream) {
                        self.owe(c.kind);
                    }
                }
                // Fell behind: some of what was missed may have been the caller's.
                Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                    ALL.into_iter().for_each(|k| self.owe(k));
                }
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }
}

impl Runtime {
    /// Changes to the lists of one listener from now on.
    #[must_use]
    pub fn catalog_changes(&self) -> CatalogChanges {
        CatalogChanges {
            runtime: self.clone(),
            announced: self.shared.executor.list_changes(),
            swaps: self.shared.governor.swaps(),
            due: std::collections::VecDeque::new(),
        }
    }

    /// Whether `caller` may see anything of `kind` from `upstream` (so that its list changing
    /// concerns it): an entry of that kind for that upstream, whatever the upstream lists now.
    fn sees_any(&self, caller: &Caller, kind: ActionKind, upstream: &str) -> bool {
        self.visible_entries(caller, kind)
            .iter()
            .any(|n| n.split_once('.').is_some_and(|(u, _)| u == upstream))
    }
}
