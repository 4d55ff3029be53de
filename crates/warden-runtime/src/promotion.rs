//! Progressive trust over time (issue 7, seed 002).
//!
//! - **Demotion is automatic**: a violation — a call a Cedar policy forbids, a tripped breaker,
//!   a lineage mismatch — sets a `demote` hold on the agent: it runs nothing on its own any more
//!   (its owner approves what its level would have let it run), recorded as `agent.demoted`.
//!   `warden resume` does not lift it.
//! - **Restoration** of a demoted agent: with `governance` set, once its approvers approve;
//!   without, by the operator (`warden agents promote ID` with the admin token), recorded.
//! - **Promotion is earned and approved**: `warden agents promote ID` checks the manifest's
//!   `promotion` criteria against the ledger (days since the agent's first call, last promotion
//!   and last violation; allowed calls since then) and asks the manifest's `governance`
//!   approvers. A demoted agent is restored to its manifest level on the approval alone (the
//!   demotion was automatic; the approvers judge whether it was a false positive); otherwise the
//!   promotion must meet the criteria and is a manifest change (its `trust` one level up, the
//!   version raised) written beside the manifest and proposed for approval like any other
//!   ([`crate::governance`]). Recorded as `agent.promoted`.

use std::path::{Path, PathBuf};

use warden_core::state::{Hold, HoldKind, HoldScope};
use warden_identity::approval::{ApprovalError, Binding, Request};
use warden_ledger::Entry;
use warden_policy::raw::TrustLevel;

use crate::runtime::Shared;

/// Demotes `agent` (once: an agent already demoted stays as it is) and records why.
pub(crate) async fn demote(app: &Shared, agent: &str, tenant: &str, why: &str) {
    let scope = HoldScope::Agent(agent.to_owned());
    let already = app
        .state
        .holds(std::slice::from_ref(&scope))
        .is_ok_and(|h| h.iter().any(|h| h.kind == HoldKind::Demote));
    if already {
        return;
    }
    let reason: String = why.chars().take(512).collect();
    if let Err(e) = app.state.set_hold(Hold {
        scope,
        kind: HoldKind::Demote,
        reason: reason.clone(),
        since: crate::now_unix(),
    }) {
        tracing::error!(error = %e, agent, "could not demote an agent after a violation");
        return;
    }
    tracing::warn!(agent, "agent demoted: {reason}");
    crate::witness::record(
        &app.ledger,
        "agent.demoted",
        crate::witness::About::agent(agent, tenant),
        format!("demoted: {reason}"),
    )
    .await;
    app.publish(
        "hold.changed",
        format!("agent `{agent}` demoted: {reason}"),
        serde_json::json!({ "action": "demote", "agent": agent }),
    );
}

/// Why an agent was not promoted or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromotionError {
    /// No such agent in the manifest in force.
    #[error("`{0}` is not an agent in the manifest")]
    UnknownAgent(String),
    /// The ledger, where the agent's standing is read, cannot be read.
    #[error("reading the agent's standing from the ledger: {0}")]
    Ledger(#[from] warden_ledger::LedgerError),
    /// The state store (its demotion) cannot be read or changed.
    #[error("{0}")]
    State(#[from] warden_core::state::StateError),
    /// The approval store refused.
    #[error("{0}")]
    Approval(#[from] ApprovalError),
    /// A promotion asked of a manifest with no governance approvers.
    #[error(
        "promotions above the manifest's level need the manifest's `governance` (who \
         approves them): none is set; raise the agent's `trust` in the manifest instead"
    )]
    Ungoverned,
    /// The agent has not earned it yet.
    #[error(
        "criteria not met for `{agent}`: {days} day(s) of {min_days} and {calls} allowed \
         call(s) of {min_calls} since {since}{last_violation}"
    )]
    Criteria {
        /// The agent.
        agent: String,
        /// Whole days of standing.
        days: i64,
        /// Days needed.
        min_days: i64,
        /// Calls since then.
        calls: u64,
        /// Calls needed.
        min_calls: u64,
        /// Since when.
        since: i64,
        /// ` (last violation at T: what)`, or empty.
        last_violation: String,
    },
    /// There is no level above.
    #[error("`{0}` is already `principal`")]
    AtTop(String),
    /// The agent's `trust` key is not in the manifest text.
    #[error("the agent's `trust` cannot be found in the manifest text")]
    TrustNotFound,
    /// The text cannot be edited without risk of raising the wrong agent.
    #[error(
        "cannot edit `trust: {}` of `{agent}` on line {line} unambiguously: raise it by hand \
         and propose it with `warden manifest propose`", from.as_str()
    )]
    Ambiguous {
        /// The level written.
        from: TrustLevel,
        /// The agent.
        agent: String,
        /// The line.
        line: usize,
    },
    /// The manifest's version line.
    #[error(transparent)]
    Version(#[from] crate::execution::VersionLineError),
    /// The proposed manifest could not be written.
    #[error("writing `{}`: {error}", path.display())]
    Write {
        /// Where.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The governance proposal was refused.
    #[error(transparent)]
    Propose(#[from] crate::governance::ChangeError),
    /// Reading the standing did not finish.
    #[error("reading the agent's standing did not finish: {0}")]
    Interrupted(String),
    /// The restoration could not be recorded in the ledger, so it was undone.
    #[error("the restoration could not be recorded in the ledger, so it was undone: {0}")]
    NotRecorded(String),
}

/// An agent's record since its last violation or promotion, from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Standing {
    /// The later of its first executed call, its last promotion and its last violation.
    pub since: i64,
    /// Whole days since then.
    pub days: i64,
    /// Calls executed successfully since then.
    pub calls: u64,
    /// Its last violation, if any: when, and what.
    pub last_violation: Option<(i64, String)>,
}

/// Entries read per hold of the ledger's store lock (appends wait no longer than one chunk).
const SCAN_CHUNK: u64 = 4096;

/// Reads the agent's standing from the ledger: its executed calls (receipts, which only the
/// authenticated, executing paths write) and its violations and promotions (events the gateway
/// records: `agent.demoted`, `breaker.tripped`, `lineage.mismatch`, `agent.promoted`).
/// Decisions are not counted: a decision alone proves no work was done. A full scan, in
/// chunks: an operator action, not the hot path.
///
/// # Errors
/// The ledger cannot be read.
pub fn standing(
    ledger: &warden_ledger::Ledger,
    agent: &str,
    now: i64,
) -> Result<Standing, warden_ledger::LedgerError> {
    #[derive(Default)]
    struct Tally {
        since: Option<i64>,
        calls: u64,
        last_violation: Option<(i64, String)>,
    }
    impl Tally {
        fn reset(&mut self, t: i64, violation: Option<String>) {
            self.since = Some(self.since.map_or(t, |s| s.max(t)));
            self.calls = 0;
            if let Some(w) = violation {
                self.last_violation = Some((t, w));
            }
        }
    }
    let size = ledger.size()?;
    let mut tally = Tally::default();
    let mut from = 0;
    while from < size {
        let to = from.saturating_add(SCAN_CHUNK).min(size);
        ledger.with_store(|s| {
            s.scan(from, to, &mut |_, bytes| {
                match Entry::from_bytes(bytes) {
                    Ok(Entry::Receipt(r))
                        if r.agent == agent && r.status == warden_ledger::ReceiptStatus::Ok =>
                    {
                        tally.since.get_or_insert(r.started_at_ms.div_euclid(1000));
                        tally.calls = tally.calls.saturating_add(1);
                    }
                    Ok(Entry::Event(v)) if v.agent == agent => match v.kind.as_str() {
                        "agent.demoted" | "breaker.tripped" | "lineage.mismatch" => {
                            tally.reset(v.time, Some(v.kind.clone()));
                        }
                        "agent.promoted" => tally.reset(v.time, None),
                        _ => {}
                    },
                    _ => {}
                }
                Ok(())
            })
            .map_err(Into::into)
        })?;
        from = to;
    }
    let Tally {
        since,
        calls,
        last_violation,
    } = tally;
    let since = since.unwrap_or(now);
    Ok(Standing {
        since,
        days: now.saturating_sub(since).div_euclid(86_400),
        calls,
        last_violation,
    })
}

/// Records `agent.promoted` for every agent whose trust level a new manifest raised (a
/// promotion applied through governance), so that its standing starts again from there.
pub async fn record_raised(
    ledger: &warden_ledger::Ledger,
    old: &warden_policy::manifest::Manifest,
    new: &warden_policy::manifest::Manifest,
) {
    for (id, a) in &new.agents {
        let Some(before) = old.agents.get(id) else {
            continue;
        };
        if a.trust.rank() > before.trust.rank() {
            let reason = format!(
                "promoted from `{}` to `{}` by manifest version {}",
                before.trust.as_str(),
                a.trust.as_str(),
                new.version
            );
            let about = crate::witness::About::agent(id, &a.tenant);
            crate::witness::record(ledger, "agent.promoted", about, reason).await;
        }
    }
}

/// What a promotion request came to.
#[derive(Debug)]
pub enum Promoted {
    /// A demoted agent was restored to its manifest level.
    Restored(Box<Request>),
    /// A demoted agent was restored by the operator: the manifest names no `governance`
    /// approvers, so whoever holds the admin token (and can change the manifest) decides.
    RestoredByOperator,
    /// The restoration awaits its approval.
    RestorePending(Box<Request>),
    /// The promotion is a manifest change written to `file`, awaiting its approval; once
    /// approved, install the file as the manifest and reload.
    Proposed {
        /// The governance request.
        request: Box<Request>,
        /// The proposed manifest.
        file: PathBuf,
        /// The level it raises the agent to.
        to: TrustLevel,
    },
}

/// Promotes (or restores) `agent`, if the criteria hold and with the governance approval.
///
/// # Errors
/// Why not, readable: unknown agent, criteria not met, no governance, already principal.
pub(crate) async fn promote(
    app: &Shared,
    manifest_path: &Path,
    agent: &str,
) -> Result<Promoted, PromotionError> {
    let governor = app.governor.get();
    let m = governor.manifest();
    let Some(a) = m.agents.get(agent) else {
        return Err(PromotionError::UnknownAgent(agent.to_owned()));
    };
    let st = {
        let (ledger, who) = (std::sync::Arc::clone(&app.ledger), agent.to_owned());
        tokio::task::spawn_blocking(move || standing(&ledger, &who, crate::now_unix()))
            .await
            .map_err(|e| PromotionError::Interrupted(e.to_string()))??
    };
    let scope = HoldScope::Agent(agent.to_owned());
    let demoted = app
        .state
        .holds(std::slice::from_ref(&scope))?
        .into_iter()
        .find(|h| h.kind == HoldKind::Demote);
    let Some(g) = &m.governance else {
        // Without governance approvers the operator is the authority over trust (as over the
        // manifest itself): a demotion is lifted by the admin token, and recorded, rather than
        // left for good.
        if let Some(hold) = demoted {
            restore(
                app,
                a,
                &hold,
                "by the operator (the manifest names no governance approvers)".into(),
            )
            .await?;
            return Ok(Promoted::RestoredByOperator);
        }
        return Err(PromotionError::Ungoverned);
    };
    let requirement = crate::governance::requirement(g);
    if let Some(hold) = demoted {
        let binding = Binding {
            agent: crate::governance::GOVERNANCE.into(),
            tenant: a.tenant.clone(),
            // The agent's owner is never the only approver of its restoration (critical).
            owner: a.owner.clone(),
            session: "promotion".into(),
            tool: "agent.restore".into(),
            arguments_hash: format!("{agent}@{}", hold.since),
            manifest_version: m.version,
        };
        let now_ms = crate::now_unix_ms();
        if let Some(r) = app
            .approvals
            .redeem(&binding, None, &requirement, true, now_ms)?
        {
            restore(
                app,
                a,
                &hold,
                format!(
                    "approved by {} (approval {})",
                    r.approved_by().join(", "),
                    r.id
                ),
            )
            .await?;
            return Ok(Promoted::Restored(Box::new(r)));
        }
        let preview = serde_json::json!({
            "summary": format!("restore agent `{agent}` to `{}` (demoted: {})", a.trust.as_str(), hold.reason),
            "standing": st,
        });
        let (r, _) = app
            .approvals
            .open(&binding, requirement, true, preview, now_ms)?;
        return Ok(Promoted::RestorePending(Box::new(r)));
    }
    // A promotion above the manifest level must be earned.
    let (min_days, min_calls) = (i64::from(m.promotion.min_days), m.promotion.min_calls);
    if st.days < min_days || st.calls < min_calls {
        return Err(PromotionError::Criteria {
            agent: agent.to_owned(),
            days: st.days,
            min_days,
            calls: st.calls,
            min_calls,
            since: st.since,
            last_violation: st.last_violation.as_ref().map_or(String::new(), |(t, w)| {
                format!(" (last violation at {t}: {w})")
            }),
        });
    }
    let Some(to) = next_level(a.trust) else {
        return Err(PromotionError::AtTop(agent.to_owned()));
    };
    // The running manifest's text (not the file, which may hold edits not yet approved).
    let text = &m.text;
    let index = m
        .raw
        .agents
        .iter()
        .position(|x| x.id == agent)
        .ok_or_else(|| PromotionError::UnknownAgent(agent.to_owned()))?;
    let new_text = raise_trust(text, index, agent, a.trust, to)?;
    let file = manifest_path.with_file_name(format!(
        "{}.promote-{agent}.yaml",
        manifest_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("manifest")
    ));
    std::fs::write(&file, new_text).map_err(|error| PromotionError::Write {
        path: file.clone(),
        error,
    })?;
    let (request, _) = crate::governance::propose(app.approvals.as_ref(), &governor, &file)?;
    Ok(Promoted::Proposed {
        request: Box::new(request),
        file,
        to,
    })
}

/// Lifts agent `a`'s demotion (`hold`) and records who restored it (`by`).
async fn restore(
    app: &Shared,
    a: &warden_policy::manifest::Agent,
    hold: &Hold,
    by: String,
) -> Result<(), PromotionError> {
    app.state
        .clear_hold(&HoldScope::Agent(a.id.clone()), HoldKind::Demote)?;
    let recorded = crate::witness::record(
        &app.ledger,
        "agent.promoted",
        crate::witness::About::agent(&a.id, &a.tenant),
        format!(
            "restored to `{}` after its demotion ({}), {by}",
            a.trust.as_str(),
            hold.reason
        ),
    )
    .await;
    // INVARIANT (a loosening stands only recorded): a restoration the ledger did not record is
    // undone (the demotion set again), and the caller told so.
    if !recorded {
        let undone = match app.state.set_hold(hold.clone()) {
            Ok(()) => "the agent stays demoted; try again".to_owned(),
            Err(e) => {
                format!("setting the demotion again failed too ({e}): the agent is NOT demoted")
            }
        };
        return Err(PromotionError::NotRecorded(undone));
    }
    Ok(())
}

fn next_level(t: TrustLevel) -> Option<TrustLevel> {
    let all = TrustLevel::ALL;
    let i = all.iter().position(|l| *l == t)?;
    all.get(i.saturating_add(1)).copied()
}

/// The manifest text with agent `index` (`agent`)'s `trust` raised from `from` to `to` and
/// `version` raised by one; every other byte as written. The edit must be unambiguous: a flow
/// entry (`{ id: a, ..., trust: junior }`) on one line naming the agent, or a block entry's own
/// `trust:` line.
fn raise_trust(
    text: &str,
    index: usize,
    agent: &str,
    from: TrustLevel,
    to: TrustLevel,
) -> Result<String, PromotionError> {
    let lines = warden_policy::lines::LineIndex::new(text);
    let at = lines
        .line_of(&format!("agents[{index}].trust"))
        .ok_or(PromotionError::TrustNotFound)?;
    let cannot = || PromotionError::Ambiguous {
        from,
        agent: agent.to_owned(),
        line: at,
    };
    let key = format!("trust: {}", from.as_str());
    let mut out = Vec::new();
    let mut version_raised = false;
    for (n, line) in text.lines().enumerate() {
        if n.saturating_add(1) == at {
            let code = line.split('#').next().unwrap_or("");
            let edited = if code.trim() == key {
                // Block style: the line is the agent's own `trust:`.
                line.replacen(&key, &format!("trust: {}", to.as_str()), 1)
            } else {
                // Flow style: one entry on the line, naming this agent, holding the key once.
                let id_at = [
                    format!("id: {agent},"),
                    format!("id: {agent} "),
                    format!("id: \"{agent}\""),
                ]
                .iter()
                .find_map(|id| code.find(id.as_str()))
                .ok_or_else(cannot)?;
                if code.matches("id:").count() != 1 || code.matches(key.as_str()).count() != 1 {
                    return Err(cannot());
                }
                let k = code.find(key.as_str()).ok_or_else(cannot)?;
                if k < id_at {
                    return Err(cannot());
                }
                line.replacen(&key, &format!("trust: {}", to.as_str()), 1)
            };
            out.push(edited);
            continue;
        }
        if !version_raised {
            if let Some(raised) = crate::execution::raise_version(line)? {
                out.push(raised);
                version_raised = true;
                continue;
            }
        }
        out.push(line.to_owned());
    }
    if !version_raised {
        return Err(crate::execution::VersionLineError::Missing.into());
    }
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_trust_edits_two_lines_and_keeps_the_rest() {
        let text = "# comment\nversion: 4 # bump\nagents:\n  - { id: a, tenant: t, owner: o, zone: z, trust: junior }\n  - id: b\n    trust: junior\n";
        let out = raise_trust(text, 1, "b", TrustLevel::Junior, TrustLevel::Senior).unwrap();
        assert_eq!(
            out,
            "# comment\nversion: 5\nagents:\n  - { id: a, tenant: t, owner: o, zone: z, trust: junior }\n  - id: b\n    trust: senior\n"
        );
        let out = raise_trust(text, 0, "a", TrustLevel::Junior, TrustLevel::Senior).unwrap();
        assert!(out.contains("zone: z, trust: senior }"), "{out}");
        assert!(raise_trust(text, 0, "a", TrustLevel::Intern, TrustLevel::Junior).is_err());
        // Two agents on one line: ambiguous, refused rather than raising the wrong one.
        let two = "version: 1\nagents: [{ id: a, trust: junior }, { id: b, trust: junior }]\n";
        assert!(raise_trust(two, 1, "b", TrustLevel::Junior, TrustLevel::Senior).is_err());
        assert_eq!(next_level(TrustLevel::Principal), None);
    }
}
