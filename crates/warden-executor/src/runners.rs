//! The runners of sandboxed upstreams: one per boundary (tenant, agent or session), made on
//! first use, bounded per tenant, and destroyed — workspace and all — when their session ends,
//! when they idle, or when a brake covers them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{upstream, ExecError, Executor};

/// One runner of a sandboxed upstream, and whom it serves.
pub(crate) struct Runner {
    pub(crate) up: Arc<upstream::Upstream>,
    pub(crate) tenant: String,
    pub(crate) agent: String,
    pub(crate) session_key: String,
    pub(crate) last_used: std::time::Instant,
}

/// A per-session runner unused this long is destroyed (its session is over).
const SESSION_RUNNER_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// A boundary's key, also its directory name: the kind and the SHA-256 of the ids that
/// identify it (ids from callers never become paths; an agent's and a session's keys include
/// their tenant, so a reload that moves an agent never hands it another tenant's runner).
fn boundary_key(kind: &str, ids: &[&str]) -> String {
    // Each id length-prefixed: no id can be shifted into its neighbour.
    let framed: String = ids.iter().map(|i| format!("{}:{i}", i.len())).collect();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(framed.as_bytes());
    let mut out = format!("{kind}-");
    warden_core::canonical::push_hex(&mut out, &digest);
    out
}

/// Sandboxed runners one tenant may have of one upstream (agent and session runners): beyond
/// it, calls are refused (a caller cannot start sandboxes without end).
const MAX_RUNNERS_PER_TENANT: usize = 64;

/// A runner's key: (upstream name, boundary).
pub(crate) type RunnerKey = (String, String);

/// Removes from `runners` those `pick` selects, with their keys.
pub(crate) fn take_runners(
    runners: &mut HashMap<RunnerKey, Runner>,
    pick: impl Fn(&RunnerKey, &Runner) -> bool,
) -> Vec<(RunnerKey, Runner)> {
    let keys: Vec<RunnerKey> = runners
        .iter()
        .filter(|(k, r)| pick(k, r))
        .map(|(k, _)| k.clone())
        .collect();
    keys.into_iter()
        .filter_map(|k| runners.remove(&k).map(|r| (k, r)))
        .collect()
}

impl Executor {
    /// The runner that serves this caller: for a sandboxed upstream, the one of the caller's
    /// tenant, agent or session (made on first use); otherwise the upstream itself.
    pub(crate) fn runner(
        &self,
        template: &Arc<upstream::Upstream>,
        tenant: &str,
        agent: &str,
        session_key: &str,
    ) -> Result<Arc<upstream::Upstream>, ExecError> {
        use warden_manifest::raw::RawRunner;
        let Some(sb) = &template.spec.sandbox else {
            return Ok(Arc::clone(template));
        };
        // INVARIANT (seed 000 §1-2): callers of different boundaries never share a process,
        // a workspace or a network path.
        let boundary = match sb.runner {
            RawRunner::Tenant => boundary_key("tenant", &[tenant]),
            RawRunner::Agent => boundary_key("agent", &[tenant, agent]),
            RawRunner::Session => boundary_key("session", &[tenant, agent, session_key]),
        };
        // What the runner's records name: only what all its callers share.
        let owner = crate::sandboxed::Boundary {
            key: boundary.clone(),
            tenant: tenant.to_owned(),
            agent: match sb.runner {
                RawRunner::Tenant => String::new(),
                RawRunner::Agent | RawRunner::Session => agent.to_owned(),
            },
            session: match sb.runner {
                RawRunner::Session => session_key
                    .split_once('/')
                    .map_or(session_key, |(_, s)| s)
                    .to_owned(),
                RawRunner::Tenant | RawRunner::Agent => String::new(),
            },
        };
        let name = template.spec.name.clone();
        let now = std::time::Instant::now();
        let mut m = self.runners();
        // Sessions end without telling the Executor: an idle session runner (no call in
        // flight) is destroyed, workspace and all.
        let reaped: Vec<Runner> = take_runners(&mut m, |(_, b), r| {
            b.starts_with("session-")
                && Arc::strong_count(&r.up) == 1
                && now.duration_since(r.last_used) > SESSION_RUNNER_IDLE
        })
        .into_iter()
        .map(|(_, r)| r)
        .collect();
        let key = (name.clone(), boundary.clone());
        if !m.contains_key(&key) && !boundary.starts_with("tenant-") {
            let mine = m
                .iter()
                .filter(|((n, b), r)| *n == name && !b.starts_with("tenant-") && r.tenant == tenant)
                .count();
            if mine >= MAX_RUNNERS_PER_TENANT {
                drop(m);
                self.dispose(reaped);
                return Err(ExecError::Unavailable {
                    upstream: name,
                    why: format!(
                        "tenant `{tenant}` already has {MAX_RUNNERS_PER_TENANT} sandboxed runners of this upstream"
                    ),
                });
            }
        }
        let r = m.entry(key).or_insert_with(|| Runner {
            up: Arc::new(upstream::Upstream::new(
                template.spec.clone(),
                Arc::clone(&self.secrets),
                Arc::clone(&self.redactor),
                Some(Arc::clone(&self.ledger)),
                self.sandbox.clone(),
                // A runner's announcements reach nobody: lists are read from the shared
                // instance.
                upstream::Common {
                    trees: Arc::clone(&self.trees),
                    counters: Arc::clone(&self.counters),
                    changes: crate::list_changes::ListChanges::default(),
                },
                owner,
            )),
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
            session_key: session_key.to_owned(),
            last_used: now,
        });
        r.last_used = now;
        let up = Arc::clone(&r.up);
        drop(m);
        self.dispose(reaped);
        Ok(up)
    }

    /// Destroys the per-session runners of `session_key` (its session ended), workspace and
    /// all.
    pub fn end_session(&self, session_key: &str) {
        let removed: Vec<Runner> = take_runners(&mut self.runners(), |(_, b), r| {
            b.starts_with("session-") && r.session_key == session_key
        })
        .into_iter()
        .map(|(_, r)| r)
        .collect();
        self.dispose(removed);
    }

    /// The runners, by (upstream, boundary).
    pub(crate) fn runners(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerKey, Runner>> {
        // A poisoned map is still the map: recovering keeps boundaries apart (fail closed).
        self.runners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Destroys removed runners off the async threads (killing a tree waits until it is
    /// empty); a session runner's directory goes with it.
    pub(crate) fn dispose(&self, removed: Vec<Runner>) {
        if removed.is_empty() {
            return;
        }
        let dir = self.sandbox.as_ref().map(|c| c.dir.clone());
        let work = move || {
            for r in removed {
                let ephemeral = r.up.boundary.key.starts_with("session-");
                let path = dir
                    .as_ref()
                    .map(|d| d.join(&r.up.spec.name).join(&r.up.boundary.key));
                drop(r);
                if let (true, Some(p)) = (ephemeral, path) {
                    let _ = std::fs::remove_dir_all(p);
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::boundary_key;

    #[test]
    fn boundary_keys_separate_kinds_tenants_and_ids() {
        let t = boundary_key("tenant", &["acme"]);
        assert!(t.starts_with("tenant-") && t.len() == "tenant-".len() + 64);
        // The same agent id under two tenants: two runners.
        assert_ne!(
            boundary_key("agent", &["acme", "a"]),
            boundary_key("agent", &["globex", "a"])
        );
        // Ids cannot be shifted between fields.
        assert_ne!(
            boundary_key("session", &["a", "b\u{0}c", "d"]),
            boundary_key("session", &["a", "b", "c\u{0}d"])
        );
        // Nothing of the id reaches the directory name.
        assert!(!boundary_key("session", &["../../etc"]).contains(".."));
    }
}
