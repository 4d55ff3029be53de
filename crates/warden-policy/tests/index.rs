//! Differential test of the policy index: for random policy sets and random calls, the indexed,
//! cached evaluation `decide` uses must reach the same outcome as Cedar evaluating every policy
//! at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use proptest::prelude::*;
use serde_json::json;
use warden_policy::cedar::CedarOutcome;
use warden_policy::{parse_manifest, Governor, PolicySource};

const MANIFEST: &str = r#"
version: 1
risk_tiers:
  low: { approval: { mode: auto } }
  high: { approval: { mode: role, approvers: 1, role: lead } }
trust:
  intern: { autonomous: [low] }
  junior: { autonomous: [low], with_approval: [high] }
  senior: { autonomous: [low, high] }
  principal: { autonomous: [low, high] }
tenants: [{ id: acme }, { id: globex }]
zones: [{ id: dev }, { id: prod }]
agents:
  - { id: a1, tenant: acme, owner: alice, zone: dev, trust: intern }
  - { id: a2, tenant: acme, owner: bob, zone: prod, trust: senior }
  - { id: a3, tenant: globex, owner: carol, zone: dev, trust: senior }
  - { id: a4, tenant: globex, owner: alice, zone: prod, trust: principal }
  # Same class (tenant, zone, trust) as a1 and a3 but another identity: the cache must tell them apart.
  - { id: a5, tenant: acme, owner: zed, zone: dev, trust: intern }
  - { id: a6, tenant: globex, owner: alice, zone: dev, trust: senior }
tools:
  - { name: t.read, tier: low, zones: ["*"], output: { classification: public },
      arguments: { type: object, properties: { n: { type: integer }, s: { type: string } }, required: [n, s] } }
  - { name: t.write, tier: high, zones: ["*"], output: { classification: restricted },
      arguments: { type: object, properties: { n: { type: integer }, s: { type: string } }, required: [n, s] } }
policies: [p.cedar]
"#;

const PRINCIPALS: [&str; 6] = [
    "principal",
    "principal is Agent",
    "principal in Tenant::\"acme\"",
    "principal in Zone::\"prod\"",
    "principal == Agent::\"a2\"",
    "principal is Agent in Tenant::\"globex\"",
];
const ACTIONS: [&str; 4] = [
    "action",
    "action == Action::\"t.read\"",
    "action in Action::\"tier:high\"",
    "action in [Action::\"t.read\", Action::\"t.write\"]",
];
const RESOURCES: [&str; 3] = ["resource", "resource is Tool", "resource in Tier::\"low\""];
const CONDITIONS: [&str; 9] = [
    "",
    "when { context.arguments.n > 5 }",
    "when { principal.trust_rank >= 3 }",
    "when { principal.owner == \"alice\" }",
    "when { resource.classification == \"restricted\" }",
    "unless { context.hour < 12 }",
    "when { principal.zone == \"dev\" && context.arguments.s like \"x*\" }",
    "when { principal.id == \"a3\" || resource.tier == \"low\" }",
    "when { principal in Zone::\"dev\" }",
];

fn policy() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0..PRINCIPALS.len(),
        0..ACTIONS.len(),
        0..RESOURCES.len(),
        0..CONDITIONS.len(),
    )
        .prop_map(|(permit, p, a, r, c)| {
            format!(
                "{} ({}, {}, {}) {};",
                if permit { "permit" } else { "forbid" },
                PRINCIPALS[p],
                ACTIONS[a],
                RESOURCES[r],
                CONDITIONS[c]
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_index_agrees_with_evaluating_every_policy(
        policies in prop::collection::vec(policy(), 1..10),
        calls in prop::collection::vec((0usize..6, any::<bool>(), 0i64..10, prop::sample::select(vec!["x1", "y2"]), 0i64..24), 1..12),
    ) {
        let text = policies.join("\n");
        let m = parse_manifest("m.yaml", MANIFEST).unwrap();
        let g = Governor::new(m, &[PolicySource { name: "p.cedar".into(), text: text.clone() }]).unwrap();
        let cedar = g.cedar();
        // Several calls per policy set, so the static cache is exercised across agents.
        for (agent, write, n, s, hour) in calls {
            let agent = ["a1", "a2", "a3", "a4", "a5", "a6"][agent];
            let tool = if write { "t.write" } else { "t.read" };
            let args = json!({ "n": n, "s": s });
            let req = cedar.request(agent, tool, g.arg_type(tool), &args, "sess", hour).unwrap();
            let indexed = cedar.evaluate(agent, tool, &req);
            let reference = cedar.evaluate_reference(&req);
            match (&indexed, &reference) {
                (CedarOutcome::Permit(a), CedarOutcome::Permit(b)) => {
                    // The index may skip permits once one holds unconditionally: the permits it
                    // reports must be among those that really hold.
                    prop_assert!(a.iter().all(|id| b.contains(id)), "{a:?} not within {b:?}\n{text}");
                }
                _ => prop_assert_eq!(&indexed, &reference, "{} {} {}\n{}", agent, tool, args, text),
            }
        }
    }
}
