//! The calls in flight, as the kill switch sees them: each registers before it checks the holds,
//! so an operator's brake either stops it or is seen by it (INV-025).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::runners::{take_runners, Runner};
use crate::{sandboxed, ExecError, Executor};

/// A call in flight: whom it serves, and how to stop it.
pub(crate) struct InFlight {
    pub(crate) tenant: String,
    pub(crate) agent: String,
    pub(crate) session_key: String,
    pub(crate) stop: CancellationToken,
}

/// Takes a call out of the in-flight registry when it ends, however it ends.
pub(crate) struct Registered<'a> {
    pub(crate) executor: &'a Executor,
    pub(crate) id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.executor.inflight.lock() {
            m.remove(&self.id);
        }
    }
}

impl Executor {
    /// Stops every call in flight within `scope` (the kill switch, quarantine, lockdown): each
    /// is cancelled at its upstream and receipted `killed`. Returns how many were stopped.
    /// Together with the hold check each call makes after registering, no call in `scope` runs
    /// after this returns, provided the hold was set before it was called.
    pub fn stop(&self, scope: &warden_core::state::HoldScope) -> usize {
        use warden_core::state::HoldScope as S;
        let Ok(m) = self.inflight.lock() else {
            return 0;
        };
        let mut n = 0;
        for c in m.values() {
            let hit = match scope {
                S::Global => true,
                S::Tenant(t) => c.tenant == *t,
                S::Agent(a) => c.agent == *a,
                S::Session(s) => c.session_key == *s,
            };
            if hit && !c.stop.is_cancelled() {
                c.stop.cancel();
                n += 1;
            }
        }
        drop(m);
        // The scope's own runners are killed and forgotten: the next call after `resume`
        // starts fresh ones.
        let (doomed, removed): (Vec<(String, String)>, Vec<Runner>) =
            take_runners(&mut self.runners(), |_, r| match scope {
                S::Global => true,
                S::Tenant(t) => r.tenant == *t,
                S::Agent(a) => r.agent == *a && !r.up.boundary.key.starts_with("tenant-"),
                S::Session(s) => r.session_key == *s && r.up.boundary.key.starts_with("session-"),
            })
            .into_iter()
            .unzip();
        let mut removed = Some(removed);
        if !doomed.is_empty() && !matches!(scope, S::Global) {
            let removed = removed.take().unwrap_or_default();
            let trees = Arc::clone(&self.trees);
            let ledger = Arc::clone(&self.ledger);
            // The runners stay alive until their trees are killed and recorded, then go.
            let kill = move || {
                let killed =
                    trees.kill_where(|n, b| doomed.iter().any(|(dn, db)| dn == n && db == b));
                drop(removed);
                killed
            };
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let killed = tokio::task::spawn_blocking(kill).await.unwrap_or_default();
                    for name in killed {
                        sandboxed::record(
                            Some(&ledger),
                            "sandbox.killed",
                            &name,
                            "a brake on its boundary ended its whole process tree".into(),
                        );
                    }
                });
            } else {
                kill();
            }
        }
        if matches!(scope, S::Global) {
            // INVARIANT (kill switch, seed 000 "Nuke"): a global kill ends every sandboxed
            // server's whole process tree, daemons and double forks included; each is started
            // again, fresh, by the first call after `resume`.
            // Off the async threads: killing waits until each tree is empty.
            let trees = Arc::clone(&self.trees);
            let ledger = Arc::clone(&self.ledger);
            // The runners stay alive until their trees are killed and recorded, then go.
            let removed = removed.take().unwrap_or_default();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let killed = tokio::task::spawn_blocking(move || {
                        let killed = trees.kill_all();
                        drop(removed);
                        killed
                    })
                    .await
                    .unwrap_or_default();
                    for name in killed {
                        sandboxed::record(
                            Some(&ledger),
                            "sandbox.killed",
                            &name,
                            "the kill switch ended its whole process tree".into(),
                        );
                    }
                });
            } else {
                trees.kill_all();
                drop(removed);
            }
        }
        // Nothing of the scope left to kill: the runners (none, or already handed over) go
        // off the async threads.
        self.dispose(removed.unwrap_or_default());
        n
    }

    /// The first hold over this call as the error that refuses it, if any; a store that cannot
    /// answer holds everything (fail closed).
    pub(crate) fn hold_error(
        &self,
        tenant: &str,
        agent: &str,
        session_key: &str,
    ) -> Option<ExecError> {
        use warden_core::state::HoldScope as S;
        let holds = self.holds.as_ref()?;
        let scopes = [
            S::Global,
            S::Tenant(tenant.to_owned()),
            S::Agent(agent.to_owned()),
            S::Session(session_key.to_owned()),
        ];
        let (scope, kind, reason) = match holds.holds(&scopes) {
            Ok(h) => {
                // A demotion is settled by the decision (its owner approves each call); it
                // does not hold an approved, granted call.
                let h = h
                    .into_iter()
                    .find(|h| h.kind != warden_core::state::HoldKind::Demote)?;
                (h.scope.to_string(), h.kind.as_str(), h.reason)
            }
            Err(e) => ("everything".into(), "unavailable", e.to_string()),
        };
        Some(ExecError::Held {
            scope,
            kind,
            reason,
        })
    }
}
