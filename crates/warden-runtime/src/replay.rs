//! `warden replay`: recorded sessions decided again under a manifest (issue 23).
//!
//! Each trace runs as a fresh session through the Governor's decision with the same evidence a
//! live call gathers (the session's flow, the argument scan of an egress tool), then feeds the
//! step's recorded output back through the same redaction and labelling a live result goes
//! through ([`crate::flows::after_result`]). After an escalation or a deny the trace goes on
//! as if the call had been approved and run, so every step gets a decision. Nothing is
//! recorded in a ledger and no upstream is called.

use crate::flows;
use serde::Deserialize;
use serde_json::Value;
use warden_core::flow::SessionFlow;
use warden_core::Proposal;
use warden_executor::Redactor;
use warden_policy::Governor;

/// One recorded call. Keys other than these (scoring labels, notes) are ignored: they can
/// never reach a decision.
#[derive(Debug, Deserialize)]
pub struct Step {
    /// The tool.
    pub tool: String,
    /// Its arguments (an object).
    #[serde(default = "empty_object")]
    pub arguments: Value,
    /// What the tool returned, as the agent saw it.
    #[serde(default)]
    pub output: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// One recorded session.
#[derive(Debug, Deserialize)]
pub struct Trace {
    /// Its id.
    pub id: String,
    /// The user's request, declared as the session's task.
    #[serde(default)]
    pub task: Option<String>,
    /// Its calls, in order.
    pub steps: Vec<Step>,
}

/// The decision on one step, as `warden replay` prints it.
#[derive(Debug, serde::Serialize)]
pub struct StepDecision {
    /// The trace.
    pub trace: String,
    /// The step's index.
    pub step: usize,
    /// The tool.
    pub tool: String,
    /// `allow`, `deny` or `escalate`.
    pub decision: &'static str,
    /// The rules that fired.
    pub rules: Vec<String>,
    /// Why.
    pub reason: String,
}

/// Why a trace could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The task could not be declared.
    #[error("trace `{trace}`: {source}")]
    Task {
        /// The trace.
        trace: String,
        /// Why.
        source: warden_policy::flow::TaskError,
    },
    /// The agent is not in the manifest.
    #[error("agent `{0}` is not in the manifest")]
    UnknownAgent(String),
}

/// Decides every step of `trace` as `agent`, at `now`, in a fresh session.
///
/// # Errors
/// [`ReplayError`]: the agent is unknown, or the task cannot be declared.
pub fn replay_trace(
    governor: &Governor,
    redactor: &Redactor,
    agent: &str,
    trace: &Trace,
    now: i64,
) -> Result<Vec<StepDecision>, ReplayError> {
    if !governor.manifest().agents.contains_key(agent) {
        return Err(ReplayError::UnknownAgent(agent.to_owned()));
    }
    let state = warden_state::MemoryState::new();
    let mut flow = SessionFlow::default();
    if let Some(task) = &trace.task {
        warden_policy::flow::declare_task(&mut flow, task).map_err(|source| ReplayError::Task {
            trace: trace.id.clone(),
            source,
        })?;
    }
    let mut out = Vec::with_capacity(trace.steps.len());
    for (i, step) in trace.steps.iter().enumerate() {
        let proposal = Proposal {
            agent: agent.to_owned(),
            session: "replay".to_owned(),
            tool: step.tool.clone(),
            arguments: step.arguments.clone(),
            tenant: None,
            kind: warden_core::ActionKind::Tool,
            operation: warden_core::Operation::Use,
        };
        let found = flows::egress_findings(governor, redactor, &proposal);
        let evidence = warden_policy::Evidence {
            found: &found,
            flow: Some(&flow),
            ..warden_policy::Evidence::default()
        };
        let d = governor.decide_with(&proposal, &state, now, &evidence);
        out.push(StepDecision {
            trace: trace.id.clone(),
            step: i,
            tool: step.tool.clone(),
            decision: d.decision.as_str(),
            rules: d.rules,
            reason: d.reason,
        });
        let text = match &step.output {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        flows::after_result(governor, redactor, agent, &mut flow, &proposal, &text, None);
    }
    Ok(out)
}
