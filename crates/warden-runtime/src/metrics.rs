//! Prometheus metrics (issue 24; docs/observability.md): counters and histograms the governed
//! path updates as it goes, gauges read at scrape time, written in the text exposition format
//! (version 0.0.4) for `GET /metrics` on the admin listener.
//!
//! Cost on the governed path: a few relaxed atomic adds per stage, and one short lock to count
//! the decision under its labels. INVARIANT (bounded cardinality): a decision's labels are its
//! outcome (3 values), its tier (the manifest's four), its tool and its tenant, and a tool or
//! tenant the manifest does not define is counted as `(unknown)`, so the series are bounded by
//! the manifest, never by what agents send; past [`MAX_SERIES`] label sets, further ones are
//! counted under `(other)`. Agents and sessions are never labels (10,000 agents would be 10,000
//! series per metric): per-agent questions go to the ledger.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Most distinct label sets of `warden_decisions_total` before further ones are pooled.
pub const MAX_SERIES: usize = 10_000;

/// Histogram bucket bounds, in seconds: 50 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// A latency histogram: cumulative buckets, a count and a sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            if let Some(b) = self.buckets.get(i) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// The stages of a governed call, each with its latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The Governor's decision (`decide`, with its one state-store call).
    Decide,
    /// Recording the decision in the ledger (durable before the answer).
    LedgerAppend,
    /// The Executor: the upstream's answer, redaction and the receipt.
    Execute,
    /// Within `execute`: the upstream's `tools/call`, from sending it to its answer.
    Upstream,
    /// Within `execute`: redacting the result.
    Redaction,
    /// Within `execute`: recording the receipt (written, or synced under `--receipts strict`,
    /// before the answer).
    Receipt,
}

impl Stage {
    const ALL: [Stage; 6] = [
        Stage::Decide,
        Stage::LedgerAppend,
        Stage::Execute,
        Stage::Upstream,
        Stage::Redaction,
        Stage::Receipt,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Decide => "decide",
            Stage::LedgerAppend => "ledger_append",
            Stage::Execute => "execute",
            Stage::Upstream => "upstream",
            Stage::Redaction => "redaction",
            Stage::Receipt => "receipt",
        }
    }
}

/// A decision's labels.
type Labels = (&'static str, String, String, String);

/// What the governed path counts (everything, unless made with [`Metrics::off`]).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Nothing is counted or timed (`warden serve --no-metrics`, `warden stdio`).
    off: bool,
    decisions: Mutex<BTreeMap<Labels, u64>>,
    stages: [Histogram; 6],
    governed: Histogram,
    /// The ledger's syncs (shared with the ledger, which reports them).
    ledger_syncs: std::sync::Arc<Histogram>,
    /// Per limit (its rule), the counter closest to it in the limit's current window.
    budgets: Mutex<BTreeMap<String, Peak>>,
    breakers_tripped: AtomicU64,
    calls_failed: AtomicU64,
    ledger_failures: AtomicU64,
}

/// The counter closest to one limit in its current window.
#[derive(Debug, Clone, Copy)]
struct Peak {
    used: u64,
    limit: u64,
    window_ends: i64,
}

impl Peak {
    /// Whether `self` uses more of its limit than `other` does of its.
    fn above(&self, other: &Peak) -> bool {
        u128::from(self.used) * u128::from(other.limit)
            > u128::from(other.used) * u128::from(self.limit)
    }
}

/// The label a tool or tenant gets: itself if the manifest defines it.
fn known(value: &str, defined: bool) -> String {
    if defined {
        value.to_owned()
    } else {
        "(unknown)".to_owned()
    }
}

impl Metrics {
    /// Metrics that count and time nothing.
    #[must_use]
    pub fn off() -> Metrics {
        Metrics {
            off: true,
            ..Metrics::default()
        }
    }

    /// Whether anything is counted.
    #[must_use]
    pub fn on(&self) -> bool {
        !self.off
    }

    /// Counts one decision under its outcome, tier, tool and tenant. `tool_known` and
    /// `tenant_known` say whether the manifest defines them (see the module's invariant).
    pub fn decided(
        &self,
        outcome: &'static str,
        tier: &str,
        (tool, tool_known): (&str, bool),
        (tenant, tenant_known): (&str, bool),
    ) {
        if self.off {
            return;
        }
        let Ok(mut map) = self.decisions.lock() else {
            return;
        };
        let mut key = (
            outcome,
            tier.to_owned(),
            known(tool, tool_known),
            known(tenant, tenant_known),
        );
        if !map.contains_key(&key) && map.len() >= MAX_SERIES {
            key = (
                outcome,
                "(other)".into(),
                "(other)".into(),
                "(other)".into(),
            );
        }
        *map.entry(key).or_insert(0) += 1;
    }

    /// Notes how much of each limit an allowed call's counters now use. INVARIANT (bounded
    /// cardinality): the label is the limit's rule, which the manifest bounds (its tiers, three
    /// budgets of two kinds, its invariants), never an agent or a tenant: per-agent use is in
    /// the state store.
    pub fn budgets_used(&self, uses: &[warden_core::BudgetUse]) {
        if self.off || uses.is_empty() {
            return;
        }
        let Ok(mut map) = self.budgets.lock() else {
            return;
        };
        for u in uses {
            let seen = Peak {
                used: u.used,
                limit: u.limit,
                window_ends: u.window_ends,
            };
            if let Some(peak) = map.get_mut(&u.budget) {
                // A later window starts again; in the same window, the highest use stays.
                if seen.window_ends > peak.window_ends
                    || (seen.window_ends == peak.window_ends && seen.above(peak))
                {
                    *peak = seen;
                }
            } else if map.len() < MAX_SERIES {
                map.insert(u.budget.clone(), seen);
            }
        }
    }

    /// Times one stage of a governed call.
    pub fn stage(&self, stage: Stage, d: Duration) {
        if self.off {
            return;
        }
        if let Some(h) = Stage::ALL
            .iter()
            .position(|s| *s == stage)
            .and_then(|i| self.stages.get(i))
        {
            h.observe(d);
        }
    }

    /// Times a whole governed call, from the proposal to the answer.
    pub fn governed(&self, d: Duration) {
        if !self.off {
            self.governed.observe(d);
        }
    }

    /// Counts a tripped circuit breaker.
    pub fn breaker_tripped(&self) {
        self.breakers_tripped.fetch_add(1, Ordering::Relaxed);
    }

    /// Has `ledger` report each sync's duration here.
    pub fn watch_ledger(&self, ledger: &warden_ledger::Ledger) {
        if self.off {
            return;
        }
        let h = std::sync::Arc::clone(&self.ledger_syncs);
        ledger.observe_syncs(Box::new(move |d| h.observe(d)));
    }

    /// Counts a decision the ledger could not record (answered as a deny).
    pub fn ledger_failed(&self) {
        self.ledger_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an allowed call that did not complete (upstream error, timeout, ...).
    pub fn call_failed(&self) {
        self.calls_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the counters and histograms (the gauges are added by [`Scrape::write`]).
    fn write(&self, out: &mut String) {
        help(
            out,
            "warden_decisions_total",
            "counter",
            "Decisions by outcome, tier, tool and tenant.",
        );
        if let Ok(map) = self.decisions.lock() {
            for ((outcome, tier, tool, tenant), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "warden_decisions_total{{outcome=\"{outcome}\",tier=\"{}\",tool=\"{}\",tenant=\"{}\"}} {n}",
                    escape(tier),
                    escape(tool),
                    escape(tenant)
                );
            }
        }
        help(
            out,
            "warden_stage_duration_seconds",
            "histogram",
            "Time of each stage of a governed call.",
        );
        for (stage, h) in Stage::ALL.iter().zip(&self.stages) {
            h.write(
                out,
                "warden_stage_duration_seconds",
                &format!("stage=\"{}\"", stage.name()),
            );
        }
        help(
            out,
            "warden_governed_call_duration_seconds",
            "histogram",
            "Time of a governed call, from the proposal to the answer.",
        );
        self.governed
            .write(out, "warden_governed_call_duration_seconds", "");
        help(
            out,
            "warden_ledger_sync_duration_seconds",
            "histogram",
            "Time to make ledger entries durable: a batch's write and fdatasync (or commit), or a grouped receipts' fdatasync.",
        );
        self.ledger_syncs
            .write(out, "warden_ledger_sync_duration_seconds", "");
        help(
            out,
            "warden_budget_use_ratio",
            "gauge",
            "Per rate limit, budget and invariant: the highest fraction of its limit any counter has used in the limit's current window (0 once the window ends).",
        );
        if let Ok(map) = self.budgets.lock() {
            let now = crate::now_unix();
            for (budget, peak) in map.iter() {
                let ratio = if now < peak.window_ends && peak.limit > 0 {
                    peak.used as f64 / peak.limit as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    out,
                    "warden_budget_use_ratio{{budget=\"{}\"}} {ratio}",
                    escape(budget)
                );
            }
        }
        counter(
            out,
            "warden_breakers_tripped_total",
            "Circuit breakers tripped (agents paused).",
            self.breakers_tripped.load(Ordering::Relaxed),
        );
        counter(
            out,
            "warden_calls_failed_total",
            "Allowed calls that did not complete.",
            self.calls_failed.load(Ordering::Relaxed),
        );
        counter(
            out,
            "warden_ledger_append_failures_total",
            "Decisions the ledger could not record (each answered as a deny).",
            self.ledger_failures.load(Ordering::Relaxed),
        );
    }
}

/// What a scrape reads besides the counters: the gateway's state at that moment.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Entries in the ledger.
    pub ledger_entries: u64,
    /// Seconds since the latest signed checkpoint (`None`: none yet).
    pub checkpoint_age_seconds: Option<i64>,
    /// Holds in force, by kind.
    pub holds: BTreeMap<&'static str, u64>,
    /// Approval requests waiting for votes, and the oldest one's age in seconds.
    pub approvals_pending: u64,
    /// The oldest pending request's age, in seconds.
    pub oldest_approval_seconds: i64,
    /// The manifest version in force.
    pub manifest_version: u64,
    /// What the Executor counted.
    pub executor: warden_executor::counters::Counted,
    /// Each upstream, and whether its tools are served now.
    pub upstreams: Vec<(String, bool)>,
    /// Spans the trace exporter dropped (its queue full), since start.
    pub spans_dropped: u64,
}

impl Scrape {
    /// The whole exposition: `metrics`' counters and histograms, then these gauges.
    #[must_use]
    pub fn write(&self, metrics: &Metrics) -> String {
        let mut out = String::with_capacity(8 * 1024);
        help(
            &mut out,
            "warden_build_info",
            "gauge",
            "The running Warden's version (always 1).",
        );
        let _ = writeln!(
            out,
            "warden_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        gauge(
            &mut out,
            "warden_manifest_version",
            "The manifest version in force.",
            self.manifest_version,
        );
        metrics.write(&mut out);
        gauge(
            &mut out,
            "warden_ledger_entries",
            "Entries in the Witness ledger.",
            self.ledger_entries,
        );
        if let Some(age) = self.checkpoint_age_seconds {
            gauge(
                &mut out,
                "warden_ledger_checkpoint_age_seconds",
                "Seconds since the latest signed checkpoint.",
                age.max(0),
            );
        }
        help(
            &mut out,
            "warden_holds",
            "gauge",
            "Holds in force (kill switch, quarantine, pause, demotion), by kind.",
        );
        for kind in ["kill", "quarantine", "pause", "demote"] {
            let n = self.holds.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "warden_holds{{kind=\"{kind}\"}} {n}");
        }
        gauge(
            &mut out,
            "warden_approvals_pending",
            "Approval requests waiting for votes.",
            self.approvals_pending,
        );
        gauge(
            &mut out,
            "warden_approvals_oldest_pending_seconds",
            "Age of the oldest approval request waiting for votes.",
            self.oldest_approval_seconds.max(0),
        );
        help(
            &mut out,
            "warden_upstream_up",
            "gauge",
            "Whether an upstream's server is connected and its tools served (1) or not (0).",
        );
        for (name, up) in &self.upstreams {
            let _ = writeln!(
                out,
                "warden_upstream_up{{upstream=\"{}\"}} {}",
                escape(name),
                u8::from(*up)
            );
        }
        let e = &self.executor;
        help(
            &mut out,
            "warden_sandbox_launches_total",
            "counter",
            "Sandboxed servers launched, by outcome.",
        );
        let _ = writeln!(
            out,
            "warden_sandbox_launches_total{{outcome=\"started\"}} {}",
            e.sandbox_started
        );
        let _ = writeln!(
            out,
            "warden_sandbox_launches_total{{outcome=\"failed\"}} {}",
            e.sandbox_failed
        );
        help(
            &mut out,
            "warden_egress_connections_total",
            "counter",
            "Connections from sandboxes through the egress guard, by outcome (past 60 refusals a minute, one record stands for several).",
        );
        let _ = writeln!(
            out,
            "warden_egress_connections_total{{outcome=\"allowed\"}} {}",
            e.egress_allowed
        );
        let _ = writeln!(
            out,
            "warden_egress_connections_total{{outcome=\"refused\"}} {}",
            e.egress_refused
        );
        counter(
            &mut out,
            "warden_tools_withdrawn_total",
            "Calls refused because their tool was withdrawn for its pin (INV-023).",
            e.tools_withdrawn,
        );
        counter(
            &mut out,
            "warden_upstream_reconnects_total",
            "Connections to an upstream made again after its first (a restart, a lost connection).",
            e.upstream_reconnects,
        );
        counter(
            &mut out,
            "warden_upstream_connect_failures_total",
            "Attempts to connect to an upstream that failed.",
            e.upstream_connect_failures,
        );
        counter(
            &mut out,
            "warden_trace_spans_dropped_total",
            "Spans the trace exporter dropped because its queue was full (the collector slow or down).",
            self.spans_dropped,
        );
        out
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, text: &str, v: u64) {
    help(out, name, "counter", text);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, text: &str, v: impl std::fmt::Display) {
    help(out, name, "gauge", text);
    let _ = writeln!(out, "{name} {v}");
}

/// A label value as the exposition format writes it (backslash, quote and newline escaped).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_off_count_and_time_nothing() {
        let m = Metrics::off();
        assert!(!m.on() && Metrics::default().on());
        m.decided("allow", "low", ("fs.read", true), ("acme", true));
        m.stage(Stage::Decide, Duration::from_micros(80));
        m.governed(Duration::from_millis(1));
        let mut out = String::new();
        m.write(&mut out);
        assert!(!out.contains("fs.read"), "{out}");
        assert!(
            out.contains("warden_governed_call_duration_seconds_count 0"),
            "{out}"
        );
    }

    #[test]
    fn labels_are_bounded_by_the_manifest_and_a_cap() {
        let m = Metrics::default();
        m.decided("allow", "low", ("fs.read", true), ("acme", true));
        m.decided("deny", "low", ("made.up\"tool", false), ("acme", true));
        let mut out = String::new();
        m.write(&mut out);
        assert!(out.contains(
            "warden_decisions_total{outcome=\"allow\",tier=\"low\",tool=\"fs.read\",tenant=\"acme\"} 1"
        ));
        assert!(out.contains("tool=\"(unknown)\""), "{out}");
        assert!(!out.contains("made.up"), "{out}");
        for i in 0..MAX_SERIES + 5 {
            m.decided("deny", "low", (&format!("t{i}"), true), ("acme", true));
        }
        let series = m.decisions.lock().unwrap().len();
        assert!(series <= MAX_SERIES + 1, "{series}");
    }

    #[test]
    fn budget_use_keeps_the_highest_in_the_window_and_restarts_with_the_next() {
        let m = Metrics::default();
        let now = crate::now_unix();
        let at = |budget: &str, used, limit, window_ends| warden_core::BudgetUse {
            budget: budget.into(),
            used,
            limit,
            window_ends,
        };
        let ratio = |m: &Metrics, budget: &str| {
            let mut out = String::new();
            m.write(&mut out);
            out.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("warden_budget_use_ratio{{budget=\"{budget}\"}} "))
                        .map(|v| v.parse::<f64>().unwrap())
                })
                .unwrap()
        };
        m.budgets_used(&[at("budget.agent.calls", 9, 10, now + 60)]);
        m.budgets_used(&[at("budget.agent.calls", 2, 10, now + 60)]);
        assert!((ratio(&m, "budget.agent.calls") - 0.9).abs() < 1e-9);
        // The next window starts again, even lower.
        m.budgets_used(&[at("budget.agent.calls", 1, 10, now + 120)]);
        assert!((ratio(&m, "budget.agent.calls") - 0.1).abs() < 1e-9);
        // A window that has ended reads 0.
        m.budgets_used(&[at("rate.tier.low", 5, 5, now - 1)]);
        assert_eq!(ratio(&m, "rate.tier.low"), 0.0);
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.write(&mut out, "x_seconds", "");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("x_seconds_count 2"), "{out}");
    }
}
