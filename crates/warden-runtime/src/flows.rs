//! The information-flow steps of the governed path (issue 23, `docs/ifc.md`): the evidence a
//! decision reads about what the session has read, and the labelling of each result the agent
//! sees. The live path ([`crate::governed`]) and `warden replay` ([`crate::replay`]) share them.

use std::borrow::Cow;
use std::collections::BTreeSet;
use warden_core::flow::SessionFlow;
use warden_core::Proposal;
use warden_executor::Redactor;
use warden_policy::Governor;

/// What the Executor's detectors find in the arguments of an egress tool (exact secrets, and
/// the tool's `redact` set): the Governor decides on it (INV-011). Nothing for other tools.
#[must_use]
pub fn egress_findings(
    governor: &Governor,
    redactor: &Redactor,
    proposal: &Proposal,
) -> Vec<&'static str> {
    match governor.manifest().tools.get(&proposal.tool) {
        Some(t) if !t.egress.is_empty() => redactor
            .scan(&proposal.arguments, &t.redact)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// `text` as the agent may see it: redacted with the Executor's detectors (exact secrets, and
/// the tool's `redact` set), as a live result is.
#[must_use]
pub fn redacted<'t>(
    governor: &Governor,
    redactor: &Redactor,
    tool: &str,
    text: &'t str,
) -> Cow<'t, str> {
    let empty = BTreeSet::new();
    let on = governor
        .manifest()
        .tools
        .get(tool)
        .map_or(&empty, |t| &t.redact);
    redactor
        .redact_str(text, on)
        .map_or(Cow::Borrowed(text), |(r, _)| Cow::Owned(r))
}

/// Records a result of `proposal` in the session's `flow`, labelled as the manifest says:
/// `text` is what the agent saw (the redacted result), `structured` its structured form if it
/// has one (else `text` is parsed as JSON when it is an object or an array).
pub fn after_result(
    governor: &Governor,
    redactor: &Redactor,
    agent: &str,
    flow: &mut SessionFlow,
    proposal: &Proposal,
    text: &str,
    structured: Option<&serde_json::Value>,
) {
    let shown = redacted(governor, redactor, &proposal.tool, text);
    // Only an object or an array counts, so text that cannot start one is not parsed.
    let parsed: Option<serde_json::Value> = match structured {
        Some(_) => None,
        None if !shown.trim_start().starts_with(['{', '[']) => None,
        None => serde_json::from_str::<serde_json::Value>(&shown)
            .ok()
            .filter(|v| v.is_object() || v.is_array()),
    };
    governor.label_output(
        agent,
        flow,
        &proposal.tool,
        &proposal.arguments,
        &shown,
        structured.or(parsed.as_ref()),
    );
}

/// The flow of `session_key`; if the store does not answer, a flow that judges every value
/// not known to be clean as tainted (fail closed: stricter, never looser).
#[must_use]
pub fn load(
    store: &dyn warden_core::flow::FlowStore,
    session_key: &str,
) -> std::sync::Arc<SessionFlow> {
    store.load(session_key).unwrap_or_else(|e| {
        tracing::error!(error = %e, "session flow unavailable; judging as if everything read was untrusted");
        std::sync::Arc::new(SessionFlow {
            saturated: true,
            read_untrusted: true,
            ..SessionFlow::default()
        })
    })
}

/// Labels a live result (as redacted for the agent) in its session's flow.
///
/// # Errors
/// Why the flow could not be written (the result is then withheld).
pub fn record_result(
    store: &dyn warden_core::flow::FlowStore,
    governor: &Governor,
    redactor: &Redactor,
    session_key: &str,
    proposal: &Proposal,
    result: &warden_executor::Answer,
) -> Result<(), String> {
    use warden_executor::Answer;
    let text = seen_text(result);
    let structured = match result {
        Answer::Tool(r) => r.structured_content.as_ref(),
        Answer::Resource(_) | Answer::Prompt(_) | Answer::Completion(_) => None,
    };
    store
        .update(session_key, &mut |flow| {
            after_result(
                governor,
                redactor,
                &proposal.agent,
                flow,
                proposal,
                &text,
                structured,
            );
            Ok(())
        })
        .map_err(|e| format!("the result could not be labelled in the session's flow: {e}"))
}

/// The text the agent sees in `result`, one line per string: every kind of content — text, an
/// embedded resource's text, a resource link's URI and name, a resource's contents, a prompt's
/// messages — but for binary payloads (`data`, `blob`) and type tags.
fn seen_text(result: &warden_executor::Answer) -> Cow<'_, str> {
    use warden_executor::Answer;
    // Plain text blocks (no annotations, no `_meta`) hold no other string: their texts are
    // what the walk below would find, read in place.
    if let Answer::Tool(r) = result {
        let plain: Option<Vec<&str>> = r
            .content
            .iter()
            .map(|block| match block {
                rmcp::model::ContentBlock::Text(t)
                    if t.meta.is_none() && t.annotations.is_none() =>
                {
                    Some(t.text.as_str())
                }
                _ => None,
            })
            .collect();
        match plain.as_deref() {
            Some([one]) => return Cow::Borrowed(one),
            Some(texts) => return Cow::Owned(texts.join("\n")),
            None => {}
        }
    }
    Cow::Owned(walked_text(result))
}

/// [`seen_text`] the long way: every string of the content's JSON form.
fn walked_text(result: &warden_executor::Answer) -> String {
    use warden_executor::Answer;
    let mut parts = Vec::new();
    let content = match result {
        Answer::Tool(r) => serde_json::to_value(&r.content),
        Answer::Resource(r) => serde_json::to_value(&r.contents),
        Answer::Prompt(r) => serde_json::to_value((&r.description, &r.messages)),
        Answer::Completion(r) => serde_json::to_value(&r.completion.values),
    };
    if let Ok(v) = content {
        content_text(&v, &mut parts);
    }
    parts.join("\n")
}

/// The strings of MCP content, but for binary payloads and type tags.
fn content_text(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| content_text(x, out)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                if !matches!(k.as_str(), "type" | "data" | "blob" | "mimeType") {
                    content_text(x, out);
                }
            }
        }
        _ => {}
    }
}

/// Declares `task` for the session `session_key`.
///
/// # Errors
/// The task is fixed already, too long, or the store did not answer.
pub fn declare(
    store: &dyn warden_core::flow::FlowStore,
    session_key: &str,
    task: &str,
) -> Result<warden_core::flow::Task, TaskRefused> {
    let mut declared = None;
    store
        .update(session_key, &mut |flow| {
            warden_policy::flow::declare_task(flow, task)
                .map_err(|e| warden_core::flow::FlowError::TaskFixed(task_reason(&e)))?;
            declared.clone_from(&flow.task);
            Ok(())
        })
        .map_err(|e| TaskRefused(e.to_string()))?;
    declared.ok_or_else(|| TaskRefused("the task was not kept".into()))
}

fn task_reason(e: &warden_policy::flow::TaskError) -> &'static str {
    match e {
        warden_policy::flow::TaskError::AfterOutput => "the session has already read tool output",
        warden_policy::flow::TaskError::Different => "a different task was declared",
        warden_policy::flow::TaskError::TooLong(_) => "the task is longer than 64 KiB",
    }
}

/// Why a task was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task refused: {0}")]
pub struct TaskRefused(pub String);

impl crate::Runtime {
    /// Declares the user's request as `caller`'s session's task (trusted input for information
    /// flow): fixed once the session has read any output; recorded in the ledger as its hash
    /// and length (`session.task`), never its text.
    ///
    /// # Errors
    /// [`TaskRefused`]: fixed already, too long, or the store or the ledger did not answer.
    pub async fn declare_task(
        &self,
        caller: &crate::caller::Caller,
        session: &str,
        task: &str,
    ) -> Result<warden_core::flow::Task, TaskRefused> {
        let s = &self.shared;
        let identity = caller.identity();
        let key = warden_core::state::session_key(&identity.agent, session);
        // Checked on a copy first: only a task that will be kept is recorded, and it is
        // recorded before it counts.
        let now = s.flows.load(&key).map_err(|e| TaskRefused(e.to_string()))?;
        let mut probe = SessionFlow {
            task: now.task.clone(),
            outputs: now.outputs,
            ..SessionFlow::default()
        };
        warden_policy::flow::declare_task(&mut probe, task)
            .map_err(|e| TaskRefused(task_reason(&e).to_owned()))?;
        let declared = probe
            .task
            .ok_or_else(|| TaskRefused("the task was not kept".into()))?;
        let about = crate::witness::About {
            agent: &identity.agent,
            tenant: &identity.tenant,
            session,
            ..crate::witness::About::default()
        };
        let mut reason = format!("task {} ({} bytes)", declared.hash, declared.len);
        // The text only where the manifest asks for it, redacted like a result.
        if s.governor.get().manifest().flow.record_task_text {
            let text = s
                .executor
                .redactor()
                .redact_str(task, &std::collections::BTreeSet::new())
                .map_or_else(|| task.to_owned(), |(r, _)| r);
            reason.push_str(": ");
            reason.push_str(&text);
        }
        // INVARIANT (recorded): a task the ledger did not take is not acknowledged.
        if !crate::witness::record(&s.ledger, "session.task", about, reason).await {
            return Err(TaskRefused("the ledger did not record the task".into()));
        }
        declare(s.flows.as_ref(), &key, task)?;
        Ok(declared)
    }
}

impl crate::Runtime {
    /// What a decision needs that does not answer now: `ledger`, `state`, `flows` (each with
    /// why). Empty: ready. Each part is asked once, off the async threads.
    pub async fn readiness(&self) -> Vec<String> {
        let s = std::sync::Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let mut down = Vec::new();
            if let Err(e) = s.ledger.size() {
                down.push(format!("ledger: {e}"));
            }
            if let Err(e) = s.state.holds(&[warden_core::state::HoldScope::Global]) {
                down.push(format!("state: {e}"));
            }
            if let Err(e) = s.flows.load("readyz/probe") {
                down.push(format!("flows: {e}"));
            }
            if let Some(why) = s.fleet.as_ref().and_then(|f| f.behind.why()) {
                down.push(format!("manifest: {why}"));
            }
            down
        })
        .await
        .unwrap_or_else(|e| vec![format!("readiness check failed: {e}")])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::{seen_text, walked_text};
    use std::borrow::Cow;
    use warden_executor::Answer;

    fn tool(result: serde_json::Value) -> Answer {
        Answer::Tool(serde_json::from_value(result).unwrap())
    }

    #[test]
    fn plain_text_is_read_in_place_and_every_result_reads_as_its_json_walk_does() {
        // One plain text block: borrowed, not copied.
        let one = tool(serde_json::json!({"content": [{"type": "text", "text": "Echo: hi"}]}));
        assert!(matches!(seen_text(&one), Cow::Borrowed("Echo: hi")));
        let shapes = [
            serde_json::json!({"content": []}),
            serde_json::json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            serde_json::json!({"content": [{"type": "text", "text": "a", "annotations": {"audience": ["user"]}}]}),
            serde_json::json!({"content": [{"type": "text", "text": "a", "_meta": {"note": "in meta"}}]}),
            serde_json::json!({"content": [
                {"type": "image", "data": "aGk=", "mimeType": "image/png"},
                {"type": "text", "text": "after an image"}
            ]}),
            serde_json::json!({"content": [{"type": "resource", "resource": {"uri": "file:///x", "text": "inside"}}]}),
            serde_json::json!({"content": [{"type": "text", "text": "t"}], "structuredContent": {"k": "v"}}),
        ];
        for shape in shapes {
            let answer = tool(shape.clone());
            assert_eq!(seen_text(&answer), walked_text(&answer), "{shape}");
        }
        // What only the walk finds is found: annotations' and `_meta`'s strings.
        let meta = tool(
            serde_json::json!({"content": [{"type": "text", "text": "a", "_meta": {"note": "in meta"}}]}),
        );
        assert!(seen_text(&meta).contains("in meta"));
    }
}
