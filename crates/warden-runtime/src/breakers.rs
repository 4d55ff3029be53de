//! Circuit breakers (INV-021, issue 7): an agent whose calls fail `breakers.consecutive_failures`
//! times in a row (timeouts, or a tool result marked as an error), whose call meets an error of
//! a kind tools do not report (a protocol-level error from the upstream), or whose decision is
//! denied for exhausting a cost budget, trips its breaker. An upstream that cannot start, a
//! sandbox that cannot be set up and a withdrawn tool are not the agent's conduct and count for
//! nothing (issue 18). A tripped breaker: the agent is paused (every call escalates with `agent.paused`) until an
//! operator resumes it (`warden resume --agent A`). The trip is recorded (`breaker.tripped`).
//!
//! Consecutive-failure counts are kept behind the [`FailureCounts`] port: in this gateway's
//! memory, or in a fleet's Redis (counted together by every instance); a success resets an
//! agent's count.

use std::sync::Arc;

use warden_core::breakers::FailureCounts;
use warden_core::state::{Hold, HoldKind, HoldScope};

/// Consecutive failures per agent.
pub struct Breakers {
    counts: Arc<dyn FailureCounts>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers").finish_non_exhaustive()
    }
}

/// What a call's outcome means to the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// It ran and succeeded: the count resets.
    Success,
    /// It failed (the reason, for the record).
    Failure(String),
    /// Spend over a cost budget: trips at once.
    OverBudget(String),
    /// An error of a kind tools do not report (a protocol-level error from the upstream instead
    /// of an error result): trips at once.
    Unknown(String),
    /// Says nothing about the agent's health (refused, cancelled, held).
    Neutral,
}

impl Breakers {
    /// Breakers counting through `counts`.
    #[must_use]
    pub fn new(counts: Arc<dyn FailureCounts>) -> Self {
        Breakers { counts }
    }

    /// Counts one outcome; the reason to trip, if this one trips the agent's breaker. A count
    /// that cannot be kept is logged and counts nothing (the decisions that depend on the same
    /// store fail closed meanwhile). A trip for failures in a row leaves the count where it is:
    /// [`trip`] resets it once the agent's pause is written, so a pause that could not be
    /// written is tried again at the next failure.
    pub fn observe(&self, agent: &str, what: Observed, limit: u32) -> Option<String> {
        match what {
            Observed::Neutral => None,
            Observed::Success => {
                self.reset(agent);
                None
            }
            Observed::OverBudget(why) => {
                self.reset(agent);
                Some(format!("spend over budget: {why}"))
            }
            Observed::Unknown(why) => {
                self.reset(agent);
                Some(format!("an unknown error type: {why}"))
            }
            Observed::Failure(why) => match self.counts.failed(agent) {
                Ok(n) if n >= limit.max(1) => {
                    Some(format!("{n} consecutive failures, the last: {why}"))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, agent, "could not count a failure for a breaker");
                    None
                }
            },
        }
    }

    /// Starts `agent`'s count again from zero.
    fn reset(&self, agent: &str) {
        if let Err(e) = self.counts.reset(agent) {
            tracing::warn!(error = %e, agent, "could not reset a breaker's count");
        }
    }
}

/// Trips `agent`'s breaker: pauses the agent and records why.
pub(crate) async fn trip(app: &crate::runtime::Shared, agent: &str, tenant: &str, why: &str) {
    app.metrics.breaker_tripped();
    let reason = format!("breaker tripped: {why}");
    let hold = Hold {
        scope: HoldScope::Agent(agent.to_owned()),
        kind: HoldKind::Pause,
        reason: reason.chars().take(512).collect(),
        since: crate::now_unix(),
    };
    // INVARIANT (the record says what holds): a pause that could not be written is recorded
    // and announced as not in force, and the failure count is kept, so the next failure trips
    // the breaker again; the count starts again only under a written pause.
    let (reason, text) = match app.state.set_hold(hold) {
        Ok(()) => {
            app.breakers.reset(agent);
            (reason, format!("agent `{agent}` paused: {why}"))
        }
        Err(e) => {
            tracing::error!(error = %e, agent, "could not pause an agent whose breaker tripped");
            (
                format!("{reason}; the pause could not be written ({e}): the agent is not paused"),
                format!("agent `{agent}`'s breaker tripped ({why}) but the pause could not be written: not paused"),
            )
        }
    };
    tracing::warn!(agent, "{reason}");
    let about = crate::witness::About::agent(agent, tenant);
    crate::witness::record(&app.ledger, "breaker.tripped", about, reason).await;
    // A tripped breaker is a violation: the agent is demoted too (seed 002).
    crate::promotion::demote(app, agent, tenant, &format!("its breaker tripped ({why})")).await;
    app.publish(
        "breaker.tripped",
        text,
        serde_json::json!({ "agent": agent, "tenant": tenant }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_the_nth_failure_in_a_row_and_resets_on_success() {
        let b = Breakers::new(Arc::new(warden_state::MemoryFailures::new()));
        let fail = || Observed::Failure("timeout".into());
        assert_eq!(b.observe("a", fail(), 3), None);
        assert_eq!(b.observe("a", fail(), 3), None);
        assert_eq!(b.observe("a", Observed::Success, 3), None);
        assert_eq!(b.observe("a", fail(), 3), None);
        assert_eq!(b.observe("b", fail(), 3), None, "counted per agent");
        assert_eq!(b.observe("a", Observed::Neutral, 3), None);
        assert_eq!(b.observe("a", fail(), 3), None);
        let tripped = b.observe("a", fail(), 3).unwrap();
        assert!(tripped.starts_with("3 consecutive failures"), "{tripped}");
        // Until the pause is written (`trip` resets the count), each failure trips again.
        let again = b.observe("a", fail(), 3).unwrap();
        assert!(again.starts_with("4 consecutive failures"), "{again}");
        b.reset("a");
        assert_eq!(b.observe("a", fail(), 3), None);
        assert!(b
            .observe("c", Observed::OverBudget("cost".into()), 3)
            .is_some());
        assert!(b
            .observe("d", Observed::Unknown("protocol error".into()), 3)
            .unwrap()
            .starts_with("an unknown error type"));
    }
}
