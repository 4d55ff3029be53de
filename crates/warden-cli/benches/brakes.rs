//! Issue 7's speed targets, in release (`cargo bench -p warden-cli --bench brakes`):
//!
//! 1. an approval decision reaches the waiting call within 50 ms: from the approver's vote being
//!    counted (signature checked, recorded durably in the ledger, committed — what the admin
//!    endpoint does) to the waiting call decided again, recorded, granted and run on the demo
//!    upstream;
//! 2. the kill switch stops new calls within 100 ms under 1,000 calls/s: calls are proposed (and
//!    recorded) at that rate; the kill is applied as the admin endpoint applies it; no call is
//!    allowed after it is acknowledged, and the first denial follows within the stated time.
//!
//! Both run the Runtime exactly as `warden serve` assembles it (embedded state and ledger with
//! fsync, grant keys, the Executor over the starter's demo upstream), without the HTTP hops.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark harness"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_core::state::HoldScope;
use warden_core::Verdict;
use warden_identity::approval::{sign, Status, Verdict as Vote};
use warden_runtime::operator::Brake;
use warden_runtime::{Call, Caller, Config, Outcome, Runtime};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The starter manifest without rate limits or tight budgets (the load would exhaust them),
/// with alice (coder-1's owner) as an approver.
fn app(dir: &std::path::Path) -> (Runtime, Caller, ed25519_dalek::SigningKey) {
    let path = warden_runtime::starter::write(dir).unwrap();
    let public =
        warden_runtime::approvals::create_approver_key(dir, "alice@acme.example", false).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("rate:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("calls: 1000/h", "calls: 100000000/h")
        .replace("calls: 10000/h", "calls: 100000000/h")
        .replace("calls: 100000/h", "calls: 100000000/h")
        .replace(
            "{ name: critical-actions, tiers: [critical], calls: 5/h }",
            "{ name: critical-actions, tiers: [critical], calls: 5000000/h }",
        )
        .replace(
            "\napprovals:\n",
            &format!(
                "\napprovers:\n  - {{ id: alice@acme.example, key: \"{public}\" }}\napprovals:\n"
            ),
        );
    // Calls wait for their approval (the starter answers at once).
    let text = text.replace("wait_seconds: 0 ", "wait_seconds: 60");
    std::fs::write(&path, text).unwrap();
    let config = Config::embedded(dir, env!("CARGO_BIN_EXE_warden").into());
    let runtime = Runtime::open(config).unwrap();
    let cred = warden_runtime::agents::enroll(
        dir,
        &runtime.manifest(),
        "coder-1",
        warden_runtime::now_unix(),
        3600,
    )
    .unwrap();
    let token = std::fs::read_to_string(&cred).unwrap();
    let caller = runtime.authenticate(Some(token.trim())).unwrap();
    let key = warden_runtime::approvals::load_approver_key(
        &warden_runtime::approvals::approver_key_path(dir, "alice@acme.example"),
    )
    .unwrap();
    (runtime, caller, key)
}

/// Proposes one call as `caller`, waiting up to `wait` seconds for its approval.
async fn propose(
    app: &Runtime,
    caller: &Caller,
    session: String,
    tool: &str,
    arguments: serde_json::Value,
    wait: u64,
) -> Outcome {
    let call = Call {
        session,
        tool: tool.into(),
        kind: warden_core::ActionKind::Tool,
        operation: warden_core::Operation::Use,
        arguments,
        trace: None,
        cancel: tokio_util::sync::CancellationToken::new(),
        approval: None,
        wait_secs: Some(wait),
        progress: None,
        client: None,
    };
    app.propose(caller, call).await
}

fn verdict(o: &Outcome) -> (Option<Verdict>, String) {
    match o {
        Outcome::Decided { decision, .. }
        | Outcome::Ran { decision, .. }
        | Outcome::Failed { decision, .. } => (
            Some(decision.decision),
            decision.rules.first().cloned().unwrap_or_default(),
        ),
        _ => (None, String::new()),
    }
}

async fn approval_latency(
    app: &Runtime,
    caller: &Caller,
    key: &ed25519_dalek::SigningKey,
    n: usize,
) -> Vec<Duration> {
    let operator = app.operator();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // coder-1 is junior: medium-tier demo.add needs its owner. The call waits for it.
        let session = format!("bench-{i}");
        let waiter = {
            let (app, caller, session) = (app.clone(), caller.clone(), session.clone());
            tokio::spawn(async move {
                let args = serde_json::json!({"a": i, "b": 1});
                let out = propose(&app, &caller, session, "demo.add", args, 60).await;
                let Outcome::Ran { decision, .. } = &out else {
                    panic!("not run after the approval: {out:?}");
                };
                assert_eq!(decision.decision, Verdict::Allow);
                Instant::now()
            })
        };
        let request = loop {
            let pending = operator
                .approvals()
                .into_iter()
                .find(|r| r.status == Status::Pending && r.binding.session == session);
            if let Some(r) = pending {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // The vote as the admin endpoint counts it: verify, record durably, commit.
        let start = Instant::now();
        let vote = sign(
            key,
            &request,
            Vote::Approve,
            "alice@acme.example",
            warden_runtime::now_unix_ms(),
        )
        .unwrap();
        operator.vote(&request.id, &vote).await.unwrap();
        let done = waiter.await.unwrap();
        out.push(done - start);
    }
    out
}

/// One run of the kill measurement.
struct KillRun {
    /// Calls proposed per second before the kill.
    rate: f64,
    /// Calls that started after the kill was acknowledged and were allowed (must be 0).
    allowed_after_ack: usize,
    /// The last allowed call (started before the ack, in flight) finished this long after it.
    last_allow: Duration,
    /// The first kill denial was recorded this long after the ack.
    first_deny: Duration,
}

async fn kill_under_load(app: &Runtime, caller: &Caller, rate: u32) -> KillRun {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    type Logged = (Instant, Instant, Option<Verdict>, String);
    let log = Arc::new(std::sync::Mutex::new(Vec::<Logged>::new()));
    let workers = 16u32;
    let mut handles = Vec::new();
    for w in 0..workers {
        let (app, caller) = (app.clone(), caller.clone());
        let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
        handles.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                // Allowed, recorded and granted; no upstream serves it, so the Executor
                // answers at once: the load is the governed path itself.
                let args = serde_json::json!({"path": format!("/w{w}/{i}")});
                let began = Instant::now();
                let o = propose(&app, &caller, format!("load-{w}"), "fs.read_file", args, 0).await;
                let (v, rule) = verdict(&o);
                log.lock().unwrap().push((began, Instant::now(), v, rule));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = log.lock().unwrap().len();
    // The kill, as the admin endpoint applies it (then answers).
    let operator = app.operator();
    operator
        .brake(Brake::Kill, &HoldScope::Global, "bench")
        .await
        .unwrap();
    let acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    operator
        .brake(Brake::Resume, &HoldScope::Global, "bench over")
        .await
        .unwrap();
    let log = log.lock().unwrap();
    let allow = Some(Verdict::Allow);
    KillRun {
        rate: before as f64 / 2.0,
        allowed_after_ack: log
            .iter()
            .filter(|(began, _, v, _)| *began > acked && *v == allow)
            .count(),
        last_allow: log
            .iter()
            .filter(|(_, done, v, _)| *done > acked && *v == allow)
            .map(|(_, done, _, _)| *done - acked)
            .max()
            .unwrap_or_default(),
        first_deny: log
            .iter()
            .filter(|(_, done, _, rule)| *done >= acked && rule.starts_with("kill."))
            .map(|(_, done, _, _)| *done - acked)
            .min()
            .unwrap_or(Duration::MAX),
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    let (app, caller, key) = app(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let down = app.start(Duration::from_secs(30)).await;
        assert!(down.is_empty(), "{down:?}");
        let n = if quick { 20 } else { 300 };
        let mut lat = approval_latency(&app, &caller, &key, n).await;
        lat.sort_unstable();
        println!(
            "approval -> waiting call run: n={n} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target <= 50 ms)",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap())
        );
        let runs = if quick { 1 } else { 5 };
        for r in 0..runs {
            let k = kill_under_load(&app, &caller, 1000).await;
            println!(
                "kill under load, run {r}: {:.0} calls/s before the kill; calls started after the ack and allowed: {} (target 0); last in-flight allow recorded {:.2} ms after the ack; first kill denial recorded {:.2} ms after it (target <= 100 ms)",
                k.rate,
                k.allowed_after_ack,
                ms(k.last_allow),
                ms(k.first_deny)
            );
        }
        app.shutdown().await;
    });
}
