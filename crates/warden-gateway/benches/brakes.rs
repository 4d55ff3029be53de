//! Issue 7's speed targets, in release (`cargo bench -p warden-gateway --bench brakes`):
//!
//! 1. an approval decision reaches the waiting call within 50 ms: from the approver's vote being
//!    counted (signature checked, recorded durably in the ledger, committed) to the waiting
//!    call's new decision recorded and its grant minted;
//! 2. the kill switch stops new calls within 100 ms under 1,000 calls/s: calls are decided (and
//!    recorded) at that rate; the kill hold is set; no call is allowed after the hold is
//!    acknowledged, and the first denial follows within the stated time.
//!
//! Both run the gateway's real governed path (`server::govern`: Governor, state store, embedded
//! ledger with fsync, grant keys) in process, without the HTTP hops.

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

use warden_core::{Proposal, Verdict};
use warden_gateway::server::{govern, AppState, Governed};
use warden_identity::approval::{sign, Book, Status, Verdict as Vote};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The starter manifest without rate limits or tight budgets (the load would exhaust them),
/// with alice (coder-1's owner) as an approver.
fn app(dir: &std::path::Path) -> (AppState, ed25519_dalek::SigningKey) {
    let path = warden_gateway::starter::write(dir).unwrap();
    let public =
        warden_gateway::approvals::create_approver_key(dir, "alice@acme.example", false).unwrap();
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
    std::fs::write(&path, text).unwrap();
    let governor = warden_gateway::bundle::load_governor(&path).unwrap();
    let app = AppState {
        governor: Arc::new(warden_gateway::current::CurrentGovernor::new(governor)),
        state: Arc::new(warden_state::MemoryState::new()),
        ledger: Arc::new(warden_gateway::witness::open_ledger(dir, None).unwrap()),
        identity: Arc::new(warden_gateway::agents::IdentityState::open(dir).unwrap()),
        executor: None,
        approvals: Arc::new(Book::new(Default::default())),
        breakers: Default::default(),
        notifier: Default::default(),
    };
    let key = warden_gateway::approvals::load_approver_key(
        &warden_gateway::approvals::approver_key_path(dir, "alice@acme.example"),
    )
    .unwrap();
    (app, key)
}

async fn decide(app: &AppState, p: &Proposal, approval: Option<&str>) -> Governed {
    let g = app.governor.get();
    govern(app, &g, p, "", Vec::new(), None, &[], approval).await
}

fn verdict(g: &Governed) -> (Option<Verdict>, String) {
    match g {
        Governed::Decided { decision, .. } => (
            Some(decision.decision),
            decision.rules.first().cloned().unwrap_or_default(),
        ),
        _ => (None, String::new()),
    }
}

async fn approval_latency(
    app: &AppState,
    key: &ed25519_dalek::SigningKey,
    n: usize,
) -> Vec<Duration> {
    let approvers = warden_gateway::approvals::approvers(app.governor.get().manifest());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // coder-1 is junior: medium-tier demo.add needs its owner.
        let p = Proposal {
            agent: "coder-1".into(),
            session: format!("bench-{i}"),
            tool: "demo.add".into(),
            arguments: serde_json::json!({"a": i, "b": 1}),
            tenant: None,
        };
        let Governed::Decided {
            approval: Some(request),
            ..
        } = decide(app, &p, None).await
        else {
            panic!("not escalated");
        };
        let mut rx = app.approvals.subscribe(&request.id).unwrap();
        let waiter = {
            let (app, p, id) = (app.clone(), p.clone(), request.id.clone());
            tokio::spawn(async move {
                while *rx.borrow_and_update() == Status::Pending {
                    rx.changed().await.unwrap();
                }
                let g = decide(&app, &p, Some(&id)).await;
                let Governed::Decided {
                    grant: Some(_),
                    decision,
                    ..
                } = g
                else {
                    panic!("no grant after the approval: {g:?}");
                };
                assert_eq!(decision.decision, Verdict::Allow);
                Instant::now()
            })
        };
        // The vote as the admin endpoint counts it: verify, record durably, commit.
        let start = Instant::now();
        let vote = sign(
            key,
            &request,
            Vote::Approve,
            "alice@acme.example",
            warden_gateway::now_unix_ms(),
        )
        .unwrap();
        let voted = app
            .approvals
            .vote(&vote, &approvers, |_| false, warden_gateway::now_unix_ms())
            .unwrap();
        let event = warden_ledger::Entry::Event(warden_ledger::EventRecord {
            kind: "approval.approved".into(),
            agent: "coder-1".into(),
            tenant: "acme".into(),
            session: p.session.clone(),
            reason: format!("bench vote on {}", voted.request.id),
            trace_id: String::new(),
            request_id: voted.request.id.clone(),
            time: warden_gateway::now_unix(),
        });
        app.ledger.submit(&event).unwrap().recorded().await.unwrap();
        app.approvals
            .commit(&request.id, warden_gateway::now_unix_ms());
        let done = waiter.await.unwrap();
        out.push(done - start);
    }
    out
}

/// One run of the kill measurement.
struct KillRun {
    /// Calls decided per second before the kill.
    rate: f64,
    /// Calls that started after the kill was acknowledged and were allowed (must be 0).
    allowed_after_ack: usize,
    /// The last allowed call (started before the ack, in flight) finished this long after it.
    last_allow: Duration,
    /// The first kill denial was recorded this long after the ack.
    first_deny: Duration,
}

async fn kill_under_load(app: &AppState, rate: u32) -> KillRun {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    type Logged = (Instant, Instant, Option<Verdict>, String);
    let log = Arc::new(std::sync::Mutex::new(Vec::<Logged>::new()));
    let workers = 16u32;
    let mut handles = Vec::new();
    for w in 0..workers {
        let (app, stop, log) = (app.clone(), Arc::clone(&stop), Arc::clone(&log));
        handles.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let p = Proposal {
                    agent: "coder-1".into(),
                    session: format!("load-{w}"),
                    tool: "fs.read_file".into(),
                    arguments: serde_json::json!({"path": format!("/w{w}/{i}")}),
                    tenant: None,
                };
                let began = Instant::now();
                let g = decide(&app, &p, None).await;
                let (v, rule) = verdict(&g);
                log.lock().unwrap().push((began, Instant::now(), v, rule));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = log.lock().unwrap().len();
    // The kill, as the admin endpoint applies it (then answers).
    app.state
        .set_hold(warden_core::state::Hold {
            scope: warden_core::state::HoldScope::Global,
            kind: warden_core::state::HoldKind::Kill,
            reason: "bench".into(),
            since: warden_gateway::now_unix(),
        })
        .unwrap();
    let acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    app.state
        .clear_hold(
            &warden_core::state::HoldScope::Global,
            warden_core::state::HoldKind::Kill,
        )
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (app, key) = app(dir.path());
    rt.block_on(async {
        let n = if quick { 20 } else { 300 };
        let mut lat = approval_latency(&app, &key, n).await;
        lat.sort_unstable();
        println!(
            "approval -> waiting call granted: n={n} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target <= 50 ms)",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap())
        );
        let runs = if quick { 1 } else { 5 };
        for r in 0..runs {
            let k = kill_under_load(&app, 1000).await;
            println!(
                "kill under load, run {r}: {:.0} calls/s before the kill; calls started after the ack and allowed: {} (target 0); last in-flight allow recorded {:.2} ms after the ack; first kill denial recorded {:.2} ms after it (target <= 100 ms)",
                k.rate,
                k.allowed_after_ack,
                ms(k.last_allow),
                ms(k.first_deny)
            );
        }
    });
}
