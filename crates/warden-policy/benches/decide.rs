//! `decide` latency benchmark (a bench binary: percentiles need every sample, which criterion
//! does not report). Run in release on one core:
//!
//! ```sh
//! cargo bench -p warden-policy --bench decide
//! ```
//!
//! Scenarios:
//! 1. the starter manifest with 10 Cedar policies;
//! 2. 1,000 Cedar policies and 10,000 agents (policies indexed by action and principal);
//! 3. the same 1,000 policies with calls from 10 agents (500 in the manifest, the agents the
//!    pinned policies name; cost must not grow with agents);
//! 4. the baseline: `cedar-policy`'s `is_authorized` on the whole 1,000-policy set, per call.
//!
//! Every decision in 1-3 takes the full allow path: all checks, Cedar, and the atomic charge of
//! every counter (limits are raised so nothing runs out; arguments vary so loop detection does
//! not pause the session).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "benchmark harness"
)]

use serde_json::json;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;
use warden_core::state::StateStore;
use warden_core::Proposal;
use warden_policy::{parse_manifest, Governor, PolicySource};
use warden_state::MemoryState;

const NOW: i64 = 1_795_341_600;

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn measure(n: usize, mut f: impl FnMut(usize)) -> Stats {
    for i in 0..n / 10 {
        f(i);
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let mean = samples.iter().sum::<f64>() / n as f64;
    samples.sort_by(f64::total_cmp);
    Stats {
        p50: samples[n / 2],
        p99: samples[n * 99 / 100],
        mean,
    }
}

/// Makes the i-th proposal of a scenario; every one is distinct, so no session ever sees the
/// same call twice in a row (which would pause it and measure escalations instead).
type Gen = Box<dyn Fn(usize) -> Proposal>;

fn starter() -> (Governor, Gen) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starter");
    let text = std::fs::read_to_string(dir.join("manifest.yaml"))
        .unwrap()
        .replace("rate: 100/h", "rate: 1000000000/h")
        .replace(
            "agent:  { calls: 1000/h, cost: 500/d }",
            "agent:  { calls: 1000000000/h, cost: 1000000000/d }",
        )
        .replace(
            "tenant: { calls: 10000/h, cost: 5000/d }",
            "tenant: { calls: 1000000000/h, cost: 1000000000/d }",
        )
        .replace(
            "global: { calls: 100000/h, cost: 50000/d }",
            "global: { calls: 1000000000/h, cost: 1000000000/d }",
        );
    let mut policies = vec![PolicySource {
        name: "policies/base.cedar".into(),
        text: std::fs::read_to_string(dir.join("policies/base.cedar")).unwrap(),
    }];
    // Six more, to make ten.
    policies.push(PolicySource {
        name: "policies/extra.cedar".into(),
        text: r#"
@id("x1") forbid (principal, action == Action::"fs.read_file", resource) when { context.arguments.path like "/etc/shadow*" };
@id("x2") forbid (principal, action == Action::"fs.read_file", resource) when { context.arguments.path like "*/.ssh/*" };
@id("x3") forbid (principal in Zone::"dev", action == Action::"db.drop_table", resource);
@id("x4") forbid (principal, action in Action::"tier:critical", resource) when { principal.trust_rank < 3 };
@id("x5") forbid (principal, action, resource) when { resource.classification == "restricted" && principal.zone != "prod" };
@id("x6") permit (principal in Tenant::"acme", action in Action::"tier:low", resource);
"#
        .into(),
    });
    let g = Governor::new(parse_manifest("manifest.yaml", &text).unwrap(), &policies).unwrap();
    assert_eq!(g.cedar().policy_count, 10);
    // Every starter policy runs in the native evaluator (see `native.rs`).
    assert_eq!(g.cedar().native_count, 10);
    let proposals = Box::new(|i: usize| Proposal {
        agent: if i.is_multiple_of(2) {
            "coder-1"
        } else {
            "ops-1"
        }
        .into(),
        session: format!("s{}", i % 64),
        tool: "fs.read_file".into(),
        arguments: json!({ "path": format!("/srv/data/{i}.txt") }),
        tenant: None,
        kind: warden_core::ActionKind::Tool,
        operation: warden_core::Operation::Use,
    });
    (g, proposals)
}

/// A fleet manifest: 100 tools, 1,000 policies (10 generic, 490 per action, 500 pinned to
/// agents 0..499), and calls from `agents` agents. The manifest lists at least the 500 agents
/// the pinned policies name (a policy naming an agent the manifest lacks does not load).
fn fleet(agents: usize) -> (Governor, Gen) {
    let listed = agents.max(500);
    let mut y = String::from(
        "version: 7\nrisk_tiers:\n  low: { approval: { mode: auto }, rate: 1000000000/h }\n  high: { approval: { mode: role, approvers: 1, role: planner } }\n\
         trust:\n  intern: { autonomous: [low] }\n  junior: { autonomous: [low] }\n  senior: { autonomous: [low], with_approval: [high] }\n  principal: { autonomous: [low, high] }\n\
         tenants: [{ id: t0 }, { id: t1 }, { id: t2 }, { id: t3 }]\nzones: [{ id: z0 }, { id: z1 }]\nagents:\n",
    );
    let trust = ["intern", "junior", "senior", "principal"];
    for i in 0..listed {
        let _ = writeln!(
            y,
            "  - {{ id: agent-{i}, tenant: t{}, owner: owner-{}@example.com, zone: z{}, trust: {} }}",
            i % 4,
            i % 97,
            i % 2,
            trust[i % 4]
        );
    }
    y.push_str("tools:\n");
    for j in 0..100 {
        let _ = writeln!(
            y,
            "  - {{ name: tool-{j}, tier: low, zones: [\"*\"], cost: 1, arguments: {{ type: object, properties: {{ n: {{ type: integer }}, s: {{ type: string }} }}, required: [n] }} }}"
        );
    }
    y.push_str(
        "budgets:\n  agent: { calls: 1000000000/h, cost: 1000000000/d }\n  tenant: { calls: 1000000000/h }\n  global: { calls: 1000000000/h }\n\
         invariants:\n  - { name: all-low, tiers: [low], calls: 1000000000/h }\npolicies: [p.cedar]\n",
    );
    let mut p = String::new();
    let _ = writeln!(
        p,
        "@id(\"g0\") permit (principal is Agent, action, resource is Tool);"
    );
    for k in 1..10 {
        let _ = writeln!(
            p,
            "@id(\"g{k}\") forbid (principal, action, resource) when {{ principal.trust_rank == 1 && context.arguments.n == -{k} }};"
        );
    }
    for k in 0..490 {
        let _ = writeln!(
            p,
            "@id(\"a{k}\") forbid (principal, action == Action::\"tool-{}\", resource) when {{ context.arguments.n == -{} }};",
            k % 100,
            k + 1
        );
    }
    for k in 0..500 {
        let _ = writeln!(
            p,
            "@id(\"p{k}\") forbid (principal == Agent::\"agent-{k}\", action == Action::\"tool-{}\", resource) when {{ context.arguments.n < 0 }};",
            k % 100
        );
    }
    let policies = vec![PolicySource {
        name: "p.cedar".into(),
        text: p,
    }];
    let g = Governor::new(parse_manifest("fleet.yaml", &y).unwrap(), &policies).unwrap();
    assert_eq!(g.cedar().policy_count, 1000);
    assert_eq!(g.cedar().native_count, 1000);
    let proposals = Box::new(move |i: usize| Proposal {
        agent: format!("agent-{}", (i * 7919) % agents),
        session: format!("s{}", i % 128),
        tool: format!("tool-{}", i % 100),
        arguments: json!({ "n": i, "s": "x" }),
        tenant: None,
        kind: warden_core::ActionKind::Tool,
        operation: warden_core::Operation::Use,
    });
    (g, proposals)
}

fn run(g: &Governor, gen: &Gen, n: usize) -> Stats {
    run_on(g, gen, n, &MemoryState::new())
}

fn run_on(g: &Governor, gen: &Gen, n: usize, state: &dyn StateStore) -> Stats {
    let proposals: Vec<Proposal> = (0..n + n / 10).map(gen).collect();
    let mut allowed = 0usize;
    let stats = measure(n, |i| {
        let d = g.decide(&proposals[i], state, NOW);
        allowed += usize::from(d.is_allow());
        black_box(d);
    });
    // The path measured is the full allow path.
    assert_eq!(
        allowed,
        proposals.len(),
        "every measured decision must be an allow"
    );
    stats
}

/// The Cedar request for `p` (at 10:00 UTC).
fn request(g: &Governor, p: &Proposal) -> cedar_policy::Request {
    g.cedar()
        .request(
            &p.agent,
            &p.tool,
            g.arg_type(&p.tool),
            &p.arguments,
            &p.session,
            10,
        )
        .unwrap()
}

/// Where the time of one starter decision goes (diagnostics, not a target).
fn phases(g: &Governor, gen: &Gen, n: usize) {
    let ps: Vec<Proposal> = (0..4096).map(gen).collect();
    use warden_core::state::{HoldScope, StateStore as _};
    let tool = g.manifest().tools.get("fs.read_file").unwrap();
    let s = measure(n, |i| {
        black_box(tool.validator.is_valid(&ps[i % ps.len()].arguments));
    });
    println!(
        "| phase: argument schema | {:.2} | {:.2} | {:.2} |",
        s.p50, s.p99, s.mean
    );
    let s = measure(n, |i| {
        let p = &ps[i % ps.len()];
        black_box(request(g, p));
    });
    println!(
        "| phase: cedar request | {:.2} | {:.2} | {:.2} |",
        s.p50, s.p99, s.mean
    );
    let reqs: Vec<_> = ps.iter().take(256).map(|p| request(g, p)).collect();
    let s = measure(n, |i| {
        let p = &ps[i % 256];
        black_box(g.cedar().evaluate(&p.agent, &p.tool, &reqs[i % 256]));
    });
    println!(
        "| phase: cedar evaluate | {:.2} | {:.2} | {:.2} |",
        s.p50, s.p99, s.mean
    );
    // What decide does instead: the same policies, evaluated natively, no request built.
    let s = measure(n, |i| {
        let p = &ps[i % ps.len()];
        let facts = warden_policy::cedar::CallFacts {
            agent: &g.manifest().agents[&p.agent],
            arguments: &p.arguments,
            arg_type: g.arg_type(&p.tool),
            session: &p.session,
            hour: 10,
            flow: Default::default(),
        };
        let (outcome, used_cedar) = g.cedar().evaluate_call(&p.agent, &p.tool, facts).unwrap();
        assert!(!used_cedar);
        black_box(outcome);
    });
    println!(
        "| phase: native evaluate (replaces the two above) | {:.2} | {:.2} | {:.2} |",
        s.p50, s.p99, s.mean
    );
    let state = MemoryState::new();
    let s = measure(n, |i| {
        let p = &ps[i % ps.len()];
        let scopes = [
            HoldScope::Global,
            HoldScope::Tenant("acme".into()),
            HoldScope::Agent(p.agent.clone()),
            HoldScope::Session(p.session.clone()),
        ];
        black_box(state.holds(&scopes).unwrap());
        black_box(
            state
                .observe_call(&p.session, [i as u8; 32], NOW, 3600)
                .unwrap(),
        );
    });
    println!(
        "| phase: holds + observe | {:.2} | {:.2} | {:.2} |",
        s.p50, s.p99, s.mean
    );
    let s = measure(n, |i| {
        black_box(warden_core::canonical::json_digest(
            &ps[i % ps.len()].arguments,
        ));
    });
    println!(
        "| phase: canonical + sha256 | {:.2} | {:.2} | {:.2} |",
        s.p50, s.p99, s.mean
    );
}

fn main() {
    let n: usize = std::env::var("WARDEN_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    println!("decide benchmark, {n} samples per scenario, one thread");
    println!("| scenario | p50 µs | p99 µs | mean µs |");
    println!("|---|---|---|---|");
    let row = |name: &str, s: &Stats| {
        println!("| {name} | {:.2} | {:.2} | {:.2} |", s.p50, s.p99, s.mean)
    };

    if std::env::var("WARDEN_BENCH_ONLY_STORES").is_ok() {
        stores();
        return;
    }
    if std::env::var("WARDEN_BENCH_ONLY_FLEET").is_ok() {
        let (g10k, ps10k) = fleet(10_000);
        row("1,000 policies, 10,000 agents", &run(&g10k, &ps10k, n));
        return;
    }
    let (g, ps) = starter();
    let starter_stats = run(&g, &ps, n);
    row("starter manifest, 10 policies", &starter_stats);
    if std::env::var("WARDEN_BENCH_PHASES").is_ok() {
        phases(&g, &ps, n);
    }
    if std::env::var("WARDEN_BENCH_ONLY_STARTER").is_ok() {
        return;
    }

    let (g10k, ps10k) = fleet(10_000);
    let big = run(&g10k, &ps10k, n);
    row("1,000 policies, 10,000 agents", &big);

    let (g10, ps10) = fleet(10);
    let small = run(&g10, &ps10, n);
    row("1,000 policies, 10 agents calling (500 listed)", &small);

    // Baseline: Cedar's is_authorized over all 1,000 policies, per call (requests built
    // beforehand, so the baseline is Cedar's evaluation alone).
    let reqs: Vec<_> = (0..1024).map(&ps10k).map(|p| request(&g10k, &p)).collect();
    let cedar = g10k.cedar();
    let base = measure(n / 10, |i| {
        black_box(cedar.evaluate_unindexed(&reqs[i % reqs.len()]));
    });
    row("baseline: cedar is_authorized, all 1,000 policies", &base);

    println!();
    println!(
        "ratio 10,000 agents / 10 agents (p50): {:.2}",
        big.p50 / small.p50
    );
    println!(
        "ratio 10,000 agents / 10 agents (mean): {:.2}",
        big.mean / small.mean
    );
    println!(
        "ratio decide (1,000 policies) / unindexed cedar (p50): {:.3}",
        big.p50 / base.p50
    );
    println!(
        "ratio decide (1,000 policies) / unindexed cedar (p99): {:.3}",
        big.p99 / base.p99
    );
    stores();
}

/// Round trips to Redis so far: the scripts it was sent (`INFO commandstats`; the commands a
/// script runs inside Redis are counted there too, but are not round trips).
fn round_trips(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_eval"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The same decisions on each state store: in memory, the embedded default (the data
/// directory's journal), and the fleet's Redis (`WARDEN_BENCH_REDIS_URL`, else
/// `WARDEN_TEST_REDIS_URL`; skipped without either) with its round trips per decision counted.
fn stores() {
    let Some(url) = std::env::var("WARDEN_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("WARDEN_TEST_REDIS_URL"))
        .ok()
    else {
        println!("(no WARDEN_BENCH_REDIS_URL: the state stores are not compared)");
        return;
    };
    let n: usize = std::env::var("WARDEN_BENCH_STORES_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    println!();
    println!("decide on each state store, {n} samples per row, one thread");
    println!("| scenario | store | p50 µs | p99 µs | mean µs | Redis round trips per decision |");
    println!("|---|---|---|---|---|---|");
    let (gs, ps) = starter();
    let (gf, pf) = fleet(10_000);
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for (scenario, g, gen) in [
        ("starter, 10 policies", &gs, &ps),
        ("1,000 policies, 10,000 agents", &gf, &pf),
    ] {
        let row = |store: &str, s: &Stats, rt: &str| {
            println!(
                "| {scenario} | {store} | {:.2} | {:.2} | {:.2} | {rt} |",
                s.p50, s.p99, s.mean
            );
        };
        row("memory", &run_on(g, gen, n, &MemoryState::new()), "—");
        let dir = tempfile::tempdir().unwrap();
        let file = warden_state::FileState::open(&dir.path().join("state"), NOW).unwrap();
        row("embedded (data directory)", &run_on(g, gen, n, &file), "—");
        let prefix = format!("warden-bench:decide:{}:{scenario}:", std::process::id());
        let redis = warden_state::RedisState::connect(&url, &prefix).unwrap();
        let before = round_trips(&mut c);
        let stats = run_on(g, gen, n, &redis);
        // Warm-up decisions count too.
        let per = (round_trips(&mut c) - before) as f64 / (n + n / 10) as f64;
        row("Redis (loopback)", &stats, &format!("{per:.2}"));
    }
}
