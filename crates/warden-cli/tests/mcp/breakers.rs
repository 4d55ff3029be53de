//! Circuit breakers end to end (issue 7): an agent whose calls fail three times in a row is
//! paused until an operator resumes it, and demoted until restored; the trip is recorded.

use super::super::text;
use super::{call, enroll, env, first_text, ledger_tail, operator, start_existing};

#[test]
fn three_failures_in_a_row_pause_the_agent_until_an_operator_resumes_it() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::approvals::setup(dir.path());
    // ops-1 (senior) runs medium-tier `demo.add` itself; the window is lifted so the test does
    // not depend on the time of day.
    let text_m = std::fs::read_to_string(&m).unwrap();
    let lifted = text_m.replace(
        r#"{ mode: window, window: "08:00-22:00", utc_offset: "+00:00" }"#,
        "{ mode: auto }",
    );
    assert_ne!(lifted, text_m);
    std::fs::write(&m, lifted).unwrap();
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);

    // A success, then three failures in a row (the sum overflows: an error result).
    assert_eq!(
        first_text(&call(&e, &s, "ops-1", "demo.add", r#"{"a": 1, "b": 1}"#)),
        "2"
    );
    for b in 1..=3 {
        let r = call(
            &e,
            &s,
            "ops-1",
            "demo.add",
            &format!(r#"{{"a": 9223372036854775807, "b": {b}}}"#),
        );
        assert_eq!(r["isError"], true, "{r}");
        assert!(first_text(&r).contains("overflows"), "{r}");
    }
    // Tripped: every call of the agent now waits for a human.
    let r = call(&e, &s, "ops-1", "demo.echo", r#"{"text": "hi"}"#);
    let answer = first_text(&r);
    assert!(answer.contains("agent.paused"), "{answer}");
    assert!(answer.contains("3 consecutive failures"), "{answer}");
    assert!(ledger_tail(&s.data, 10).contains("breaker.tripped"));

    // Resetting is an operator action; the trip also demoted the agent (a violation), so its
    // calls need its owner until it is promoted again (tests/mcp/promotion.rs).
    assert!(ledger_tail(&s.data, 10).contains("agent.demoted"));
    let out = operator(&s, &["resume", "--agent", "ops-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = call(&e, &s, "ops-1", "demo.echo", r#"{"text": "hi"}"#);
    let answer = first_text(&r);
    assert!(!answer.contains("agent.paused"), "{answer}");
    assert!(answer.contains("trust.demoted"), "{answer}");
    // This manifest names no `governance` approvers: the operator restores the agent, and it
    // runs on its own again; recorded.
    let out = operator(&s, &["agents", "promote", "ops-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"restored\""),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        first_text(&call(&e, &s, "ops-1", "demo.echo", r#"{"text": "back"}"#)),
        "back"
    );
    assert!(ledger_tail(&s.data, 10).contains("by the operator"));
}

#[test]
fn spend_over_a_cost_budget_trips_the_breaker() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::approvals::setup(dir.path());
    // `demo.echo` costs 1; the agent may spend 2 a day.
    let text_m = std::fs::read_to_string(&m).unwrap();
    let tight = text_m
        .replace(
            "    description: returns its text",
            "    cost: 1\n    description: returns its text",
        )
        .replace(
            "agent:  { calls: 1000/h, cost: 500/d }",
            "agent:  { calls: 1000/h, cost: 2/d }",
        );
    assert_eq!(tight.matches("cost: 2/d").count(), 1);
    std::fs::write(&m, tight).unwrap();
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);
    let echo = |n: u32| {
        call(
            &e,
            &s,
            "ops-1",
            "demo.echo",
            &format!(r#"{{"text": "{n}"}}"#),
        )
    };
    assert_eq!(first_text(&echo(1)), "1");
    assert_eq!(first_text(&echo(2)), "2");
    let over = first_text(&echo(3));
    assert!(over.contains("budget.agent.cost"), "{over}");
    let paused = first_text(&echo(4));
    assert!(
        paused.contains("agent.paused") && paused.contains("spend over budget"),
        "{paused}"
    );
    assert!(ledger_tail(&s.data, 10).contains("breaker.tripped"));
}

/// Issue 18: only the agent's own conduct costs it trust. An upstream that cannot start fails
/// every call as unavailable; that is the gateway's state, not the agent's failure: however many
/// calls fail so, the agent is neither paused nor demoted.
#[test]
fn an_upstream_that_cannot_start_neither_pauses_nor_demotes_the_agent() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::approvals::setup(dir.path());
    let text_m = std::fs::read_to_string(&m).unwrap();
    let broken = text_m.replace("command: [warden, demo-server]", "command: [/bin/false]");
    assert_ne!(broken, text_m);
    std::fs::write(&m, broken).unwrap();
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);
    for n in 0..5 {
        let r = call(
            &e,
            &s,
            "ops-1",
            "demo.echo",
            &format!(r#"{{"text": "{n}"}}"#),
        );
        let answer = first_text(&r);
        assert!(answer.contains("unavailable"), "call {n}: {answer}");
        assert!(!answer.contains("agent.paused"), "call {n}: {answer}");
        assert!(!answer.contains("trust.demoted"), "call {n}: {answer}");
    }
    let tail = ledger_tail(&s.data, 40);
    assert!(!tail.contains("breaker.tripped"), "{tail}");
    assert!(!tail.contains("agent.demoted"), "{tail}");
    // The failed starts are counted for the operator.
    let (_, metrics) = super::metrics::get(&s.admin, "/metrics");
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warden_upstream_connect_failures_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(failures.is_some_and(|n| n >= 1), "{metrics}");
}
