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
use warden_policy::cedar::{CallFacts, CedarOutcome};
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

/// The manifest above with tools whose arguments are optional, sets and records, for the native
/// evaluator.
fn rich_manifest() -> String {
    let head = MANIFEST.split("tools:\n").next().unwrap();
    format!(
        "{head}tools:\n{}{}policies: [p.cedar]\n",
        "  - { name: t.read, tier: low, zones: [\"*\"], cost: 2, preview: true, output: { classification: public },\n      arguments: { type: object, required: [n, s], properties: {\n        n: { type: integer }, s: { type: string }, o: { type: string },\n        tags: { type: array, items: { type: string } },\n        r: { type: object, properties: { k: { type: string } } } } } }\n",
        "  - { name: t.write, tier: high, zones: [\"*\"], output: { classification: restricted },\n      arguments: { type: object, required: [n, s], properties: {\n        n: { type: integer }, s: { type: string }, o: { type: string },\n        tags: { type: array, items: { type: string } },\n        r: { type: object, properties: { k: { type: string } } } } } }\n",
    )
}

/// Conditions in the grammar the native evaluator compiles; each reads the call's context, so
/// it runs on every call.
const RICH_CONDITIONS: [&str; 24] = [
    "context.arguments.n > 5",
    "context.arguments.n == -3",
    "context.arguments.s like \"x*\"",
    "context.arguments.s like \"*1\"",
    "context.arguments.s like \"x*z*1\"",
    "context.arguments has o && context.arguments.o == \"a\"",
    "context.arguments has tags && context.arguments.tags.contains(\"a\")",
    "context.arguments has tags && context.arguments.tags.containsAny([\"a\", \"b\"])",
    "context.arguments has tags && context.arguments.tags.containsAll([\"a\", \"b\"])",
    "context.arguments has tags && context.arguments.tags.isEmpty()",
    "principal in Tenant::\"acme\" && context.hour >= 12",
    "if context.arguments.n < 3 then principal.trust == \"intern\" else resource.tier == \"high\"",
    "principal is Agent in Zone::\"prod\" && context.session != \"s1\"",
    "action in [Action::\"t.read\"] && context.arguments.s != \"y2\"",
    "context.arguments has r && context.arguments.r has k && context.arguments.r.k like \"*z*\"",
    "resource in Tier::\"low\" || context.arguments.n <= 0",
    "!(context.arguments.s like \"x*\") && principal.owner == \"alice\"",
    "[principal.zone, \"x\"].contains(\"dev\") && context.arguments.n != 1",
    "resource.preview == true && resource.cost >= 2 && context.hour < 20",
    "principal.trust_rank >= 3 || context.arguments has o || resource has nothing",
    "context.args_tainted.contains(\"s\")",
    "context.args_tainted.containsAny([\"n\", \"o\"]) || context.args_tainted.isEmpty()",
    "context.read_untrusted && context.session_classification == \"confidential\"",
    "!context.read_untrusted || context.session_classification != \"public\"",
];

fn rich_policy() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0..PRINCIPALS.len(),
        0..ACTIONS.len(),
        0..RESOURCES.len(),
        prop::collection::vec((any::<bool>(), 0..RICH_CONDITIONS.len()), 1..3),
    )
        .prop_map(|(permit, p, a, r, conditions)| {
            let conditions: Vec<String> = conditions
                .into_iter()
                .map(|(when, c)| {
                    format!(
                        "{} {{ {} }}",
                        if when { "when" } else { "unless" },
                        RICH_CONDITIONS[c]
                    )
                })
                .collect();
            format!(
                "{} ({}, {}, {}) {};",
                if permit { "permit" } else { "forbid" },
                PRINCIPALS[p],
                ACTIONS[a],
                RESOURCES[r],
                conditions.join(" ")
            )
        })
}

fn rich_arguments() -> impl Strategy<Value = serde_json::Value> {
    (
        -5i64..10,
        prop::sample::select(vec!["x1", "y2", "xz1", "xzz", ""]),
        prop::option::of(prop::sample::select(vec!["a", "b"])),
        prop::option::of(prop::sample::select(vec![
            vec![],
            vec!["a"],
            vec!["a", "b"],
            vec!["c"],
        ])),
        prop::option::of(prop::option::of(prop::sample::select(vec!["z", "az", "q"]))),
    )
        .prop_map(|(n, s, o, tags, r)| {
            let mut args = json!({ "n": n, "s": s });
            if let Some(o) = o {
                args["o"] = json!(o);
            }
            if let Some(tags) = tags {
                args["tags"] = json!(tags);
            }
            if let Some(r) = r {
                args["r"] = match r {
                    Some(k) => json!({ "k": k }),
                    None => json!({}),
                };
            }
            args
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The native evaluator `decide` uses reaches Cedar's outcome on every call, and Cedar is
    /// not consulted for policies in its grammar.
    #[test]
    fn native_evaluation_agrees_with_cedar(
        policies in prop::collection::vec(rich_policy(), 1..8),
        calls in prop::collection::vec(
            (0usize..4, any::<bool>(), rich_arguments(), prop::sample::select(vec!["s1", "s2"]), 0i64..24),
            1..12,
        ),
        flows in prop::collection::vec((0usize..4, any::<bool>(), 0usize..4), 12),
    ) {
        let text = policies.join("\n");
        let m = parse_manifest("m.yaml", &rich_manifest()).unwrap();
        let g = Governor::new(m, &[PolicySource { name: "p.cedar".into(), text: text.clone() }]).unwrap();
        let cedar = g.cedar();
        prop_assert_eq!(cedar.native_count, cedar.policy_count, "every policy compiles\n{}", text);
        let tainted_sets: [Vec<String>; 4] = [vec![], vec!["s".into()], vec!["n".into(), "s".into()], vec!["o".into()]];
        for (i, (agent, write, args, session, hour)) in calls.into_iter().enumerate() {
            let agent = ["a1", "a2", "a3", "a4"][agent];
            let tool = if write { "t.write" } else { "t.read" };
            let (t, read_untrusted, class) = flows[i];
            let flow = warden_policy::cedar::FlowFacts {
                tainted: &tainted_sets[t],
                read_untrusted,
                classification: ["public", "internal", "confidential", "restricted"][class],
            };
            let req = cedar.request_with_flow(agent, tool, g.arg_type(tool), &args, session, hour, flow).unwrap();
            let reference = cedar.evaluate_reference(&req);
            let facts = CallFacts { agent: &g.manifest().agents[agent], arguments: &args, arg_type: g.arg_type(tool), session, hour, flow };
            let (native, used_cedar) = cedar.evaluate_call(agent, tool, facts).unwrap();
            prop_assert!(!used_cedar, "Cedar was consulted for {} {} {}\n{}", agent, tool, args, text);
            match (&native, &reference) {
                (CedarOutcome::Permit(a), CedarOutcome::Permit(b)) => {
                    prop_assert!(a.iter().all(|id| b.contains(id)), "{a:?} not within {b:?}\n{text}");
                }
                _ => prop_assert_eq!(&native, &reference, "{} {} {}\n{}", agent, tool, args, text),
            }
        }
    }
}

#[test]
fn outside_the_native_grammar_cedar_decides() {
    // Arithmetic is not compiled: the set holding it is evaluated by Cedar, with the same result.
    let text = "permit (principal, action, resource);\n\
                forbid (principal, action, resource) when { context.arguments.n + 1 > 5 };";
    let m = parse_manifest("m.yaml", &rich_manifest()).unwrap();
    let g = Governor::new(
        m,
        &[PolicySource {
            name: "p.cedar".into(),
            text: text.into(),
        }],
    )
    .unwrap();
    let cedar = g.cedar();
    assert_eq!((cedar.native_count, cedar.policy_count), (1, 2));
    for (n, forbidden) in [(4, false), (5, true)] {
        let args = json!({ "n": n, "s": "x" });
        let facts = CallFacts {
            agent: &g.manifest().agents["a1"],
            arguments: &args,
            arg_type: g.arg_type("t.read"),
            session: "s",
            hour: 1,
            flow: Default::default(),
        };
        let (outcome, used_cedar) = cedar.evaluate_call("a1", "t.read", facts).unwrap();
        assert!(used_cedar);
        assert_eq!(
            matches!(outcome, CedarOutcome::Forbid(_)),
            forbidden,
            "n = {n}: {outcome:?}"
        );
    }
}

#[test]
fn the_starter_policies_run_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starter");
    let text = std::fs::read_to_string(dir.join("manifest.yaml")).unwrap();
    let policy = std::fs::read_to_string(dir.join("policies/base.cedar")).unwrap();
    let g = Governor::new(
        parse_manifest("manifest.yaml", &text).unwrap(),
        &[PolicySource {
            name: "policies/base.cedar".into(),
            text: policy,
        }],
    )
    .unwrap();
    assert_eq!(g.cedar().native_count, g.cedar().policy_count);
    let args = json!({ "repo": "evil/x", "title": "t", "body": "b" });
    let facts = CallFacts {
        agent: &g.manifest().agents["coder-1"],
        arguments: &args,
        arg_type: g.arg_type("github.create_issue"),
        session: "s",
        hour: 1,
        flow: Default::default(),
    };
    let (outcome, used_cedar) = g
        .cedar()
        .evaluate_call("coder-1", "github.create_issue", facts)
        .unwrap();
    assert!(!used_cedar);
    assert_eq!(
        outcome,
        CedarOutcome::Forbid(vec!["forbid-foreign-repos".into()])
    );
}
