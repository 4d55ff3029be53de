//! Prometheus metrics end to end (issue 24): after governed calls through the MCP gateway, the
//! admin listener's `/metrics` counts them under labels the manifest bounds, times their
//! stages, reports the ledger, holds and manifest, carries no argument value, and passes
//! `promtool check metrics`; the example alert rules pass `promtool check rules`.

use super::super::text;
use super::{call, enroll, env, operator, start_existing};
use std::process::{Command, Stdio};

/// promtool, or `None` after a notice (it is required where `WARDEN_TEST_PROMTOOL_REQUIRED=1`,
/// as `.ci/run` sets).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    if std::env::var("WARDEN_TEST_PROMTOOL_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("WARDEN_TEST_PROMTOOL_REQUIRED=1 but promtool is not installed");
    }
    eprintln!("notice: promtool is not installed; its checks are skipped");
    None
}

pub(super) fn get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of the one sample whose line starts with `series`.
pub(super) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn governed_calls_are_counted_timed_and_served_at_metrics() {
    let Some(e) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::approvals::setup(dir.path());
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);

    let secret_arg = "metrics-must-not-show-this-argument";
    for _ in 0..2 {
        let r = call(
            &e,
            &s,
            "ops-1",
            "demo.echo",
            &format!(r#"{{"text": "{secret_arg}"}}"#),
        );
        assert_ne!(r["isError"], true, "{r}");
    }
    // A tool no manifest defines: denied, and counted without its name.
    let r = call(&e, &s, "ops-1", "made.up_tool_name", "{}");
    assert_eq!(r["isError"], true, "{r}");
    let out = operator(
        &s,
        &[
            "kill",
            "--agent",
            "nobody-in-particular",
            "--reason",
            "drill",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (head, metrics) = get(&s.admin, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let allowed = metrics
        .lines()
        .find(|l| {
            l.starts_with("warden_decisions_total{outcome=\"allow\"")
                && l.contains("tool=\"demo.echo\"")
                && l.contains("tenant=\"acme\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(allowed.ends_with(" 2"), "{allowed}");
    assert!(
        metrics.contains("outcome=\"deny\",tier=\"(unknown)\",tool=\"(unknown)\""),
        "{metrics}"
    );
    assert!(!metrics.contains("made.up_tool_name"), "{metrics}");
    assert!(!metrics.contains(secret_arg), "{metrics}");
    assert!(
        !metrics.contains("ops-1"),
        "agents are never labels: {metrics}"
    );
    for stage in [
        "decide",
        "ledger_append",
        "execute",
        "upstream",
        "redaction",
        "receipt",
    ] {
        let n = sample(
            &metrics,
            &format!("warden_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
        )
        .unwrap_or_else(|| panic!("{stage}: {metrics}"));
        assert!(n >= 2.0, "{stage}: {n}");
    }
    assert!(sample(&metrics, "warden_governed_call_duration_seconds_count").unwrap() >= 3.0);
    // The starter's agent budget is 1,000 calls an hour: two calls (one, if the hour turned
    // between them) of it are used; the denied call charged nothing.
    let used = sample(
        &metrics,
        "warden_budget_use_ratio{budget=\"budget.agent.calls\"}",
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    assert!((0.0009..=0.0021).contains(&used), "{used}");
    // Every decision is synced before it is answered (one sync may cover several).
    assert!(
        sample(&metrics, "warden_ledger_sync_duration_seconds_count").unwrap() >= 2.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "warden_ledger_sync_duration_seconds_sum").unwrap() > 0.0);
    assert!(sample(&metrics, "warden_ledger_entries").unwrap() > 3.0);
    assert!(
        sample(&metrics, "warden_ledger_checkpoint_age_seconds").is_some(),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "warden_holds{kind=\"kill\"}"), Some(1.0));
    assert!(sample(&metrics, "warden_manifest_version").unwrap() >= 1.0);
    // The demo upstream served the calls; no tool was withdrawn.
    assert_eq!(
        sample(&metrics, "warden_upstream_up{upstream=\"demo\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "warden_tools_withdrawn_total"),
        Some(0.0),
        "{metrics}"
    );
    // Not on the agents' listener.
    let (head, _) = get(&s.addr, "/metrics");
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");

    let Some(promtool) = promtool() else { return };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_example_alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/alerts/warden.rules.yml");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("SUCCESS"),
        "{}",
        text(&out.stdout)
    );
}
