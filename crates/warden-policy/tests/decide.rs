//! The Governor's decisions, end to end, on real manifests and real Cedar policies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use proptest::prelude::*;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use warden_core::state::{Hold, HoldKind, HoldScope, StateError, StateStore};
use warden_core::{Decision, Escalation, Proposal, Verdict};
use warden_policy::{parse_manifest, Governor, PolicySource};
use warden_state::MemoryState;

/// 2026-11-22T10:00:00Z: inside the starter's 08:00-22:00 window.
const DAY_TIME: i64 = 1_795_341_600;
/// 2026-11-22T23:00:00Z: outside it.
const NIGHT_TIME: i64 = 1_795_388_400;

fn starter_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starter")
}

fn starter_policies() -> Vec<PolicySource> {
    let dir = starter_dir().join("policies");
    let mut out: Vec<PolicySource> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| PolicySource {
            name: format!("policies/{}", p.file_name().unwrap().to_string_lossy()),
            text: std::fs::read_to_string(&p).unwrap(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn starter_text() -> String {
    std::fs::read_to_string(starter_dir().join("manifest.yaml")).unwrap()
}

fn governor_from(text: &str, policies: &[PolicySource]) -> Governor {
    let m = parse_manifest("manifest.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    Governor::new(m, policies).unwrap_or_else(|e| panic!("{e}"))
}

fn starter() -> Governor {
    governor_from(&starter_text(), &starter_policies())
}

fn proposal(agent: &str, session: &str, tool: &str, arguments: serde_json::Value) -> Proposal {
    Proposal {
        agent: agent.into(),
        session: session.into(),
        tool: tool.into(),
        arguments,
        tenant: None,
        kind: warden_core::ActionKind::Tool,
        operation: warden_core::Operation::Use,
    }
}

fn read(path: &str) -> serde_json::Value {
    json!({ "path": path })
}

/// Decides `fs.read_file` of `path` for `agent` in `session`.
fn read_call(
    g: &Governor,
    s: &dyn StateStore,
    agent: &str,
    session: &str,
    path: &str,
    now: i64,
) -> Decision {
    g.decide(
        &proposal(agent, session, "fs.read_file", read(path)),
        s,
        now,
    )
}

fn assert_cites_bundle(g: &Governor, d: &Decision) {
    assert_eq!(d.manifest_version, 1);
    assert_eq!(d.policy_hash, g.policy_hash());
    assert!(d.policy_hash.starts_with("sha256:"));
    assert!(!d.reason.is_empty());
    assert!(!d.rules.is_empty());
}

#[test]
fn low_tier_call_is_allowed_with_its_rules() {
    let g = starter();
    let s = MemoryState::new();
    let d = read_call(&g, &s, "coder-1", "s1", "/etc/hosts", DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    assert_cites_bundle(&g, &d);
    assert!(
        d.rules.contains(&"tier.low.auto".to_string()),
        "{:?}",
        d.rules
    );
    assert!(d.rules.contains(&"trust.junior.autonomous".to_string()));
    assert_eq!(d.policies, vec!["permit-manifest-tools".to_string()]);
    assert_eq!(d.owner, "alice@acme.example");
    assert_eq!(d.tenant, "acme");
    assert_eq!(
        d.arguments_hash,
        warden_core::canonical::json_digest(&read("/etc/hosts"))
    );
}

#[test]
fn unknown_tool_is_denied() {
    let g = starter();
    let d = g.decide(
        &proposal("coder-1", "s", "shell.exec", json!({})),
        &MemoryState::new(),
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Deny);
    assert_eq!(d.rules, vec!["tool.unknown"]);
    assert!(d.reason.contains("`shell.exec`"));
    assert_cites_bundle(&g, &d);
}

/// The starter with a resource entry and a prompt of its `demo` upstream.
fn starter_with_resources() -> Governor {
    let text = format!(
        "{}\nresources:\n  - {{ name: demo.docs, uris: [\"demo://docs/*\"], tier: low, zones: [\"*\"] }}\nprompts:\n  - {{ name: demo.greet, tier: low, zones: [\"*\"], arguments: {{ type: object, properties: {{ who: {{ type: string }} }}, additionalProperties: false }} }}\n",
        starter_text()
    );
    governor_from(&text, &starter_policies())
}

fn of_kind(kind: warden_core::ActionKind, tool: &str, arguments: serde_json::Value) -> Proposal {
    Proposal {
        kind,
        ..proposal("coder-1", "s", tool, arguments)
    }
}

#[test]
fn a_read_is_decided_by_the_resource_entry_that_admits_its_uri() {
    use warden_core::ActionKind::{Prompt, Resource, Tool};
    let g = starter_with_resources();
    let s = MemoryState::new();
    assert_eq!(g.resource_entry("demo://docs/a.md"), Some("demo.docs"));
    assert_eq!(g.resource_entry("demo://docs/../etc"), None);
    let doc = of_kind(Resource, "demo.docs", json!({"uri": "demo://docs/a.md"}));
    let d = g.decide(&doc, &s, DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    assert_eq!(d.tool, "demo.docs");
    // The entry's name with a URI it does not admit: denied, whatever name is given.
    for uri in [
        "demo://other",
        "demo://docs/../secret",
        "demo://docs/%2e%2e/x",
    ] {
        let d = g.decide(
            &of_kind(Resource, "demo.docs", json!({ "uri": uri })),
            &s,
            DAY_TIME,
        );
        assert_eq!(d.decision, Verdict::Deny, "{uri}");
        assert_eq!(d.rules, vec!["resource.not_admitted"], "{uri}");
    }
    // A URI no entry admits is proposed under its own text: unknown.
    let d = g.decide(
        &of_kind(
            Resource,
            "file:///etc/passwd",
            json!({"uri": "file:///etc/passwd"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules, vec!["tool.unknown"]);
    assert!(d.reason.contains("no resource entry"), "{}", d.reason);
    // A name is one entry of one kind: the resource entry is no tool, the tool no prompt.
    let d = g.decide(
        &of_kind(Tool, "demo.docs", json!({"uri": "demo://docs/a"})),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules, vec!["tool.unknown"]);
    let d = g.decide(
        &of_kind(Prompt, "fs.read_file", read("/etc/hosts")),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules, vec!["tool.unknown"]);
    assert!(d.reason.contains("prompt `fs.read_file`"), "{}", d.reason);
    // A prompt's arguments are checked against its entry's schema.
    let d = g.decide(
        &of_kind(Prompt, "demo.greet", json!({"who": "Ann"})),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    let d = g.decide(
        &of_kind(Prompt, "demo.greet", json!({"whom": "Ann"})),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Deny, "{d:?}");
    // Seen: the tool list shows tools only; the resource and prompt lists their own kind.
    assert!(!g.may_see("coder-1", "demo.docs"));
    let names = |k| {
        g.visible("coder-1", k)
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(Resource), ["demo.docs"]);
    assert_eq!(names(Prompt), ["demo.greet"]);
}

#[test]
fn a_completion_is_decided_as_its_entry_and_never_escalates_or_loops() {
    use warden_core::ActionKind::{Prompt, Resource};
    use warden_core::Operation::Complete;
    let text = format!(
        "{}\nresources:\n  - {{ name: demo.docs, uris: [\"demo://docs/*\"], tier: low, zones: [\"*\"] }}\nprompts:\n  - {{ name: demo.greet, tier: low, zones: [\"*\"], arguments: {{ type: object, properties: {{ who: {{ type: string, maxLength: 8 }}, lang: {{ type: string }} }}, required: [who, lang], additionalProperties: false }} }}\n  - {{ name: demo.plan, tier: medium, zones: [\"*\"], arguments: {{ type: object }} }}\n  - {{ name: demo.pick, tier: low, zones: [\"*\"], arguments: {{ type: object, properties: {{ lang: {{ type: string }}, item: {{ type: string }} }}, required: [lang, item] }} }}\n",
        starter_text()
    );
    // Cedar judges a completion on the values it has: a forbid on a value applies to it,
    // whether it reads the value behind `has` or not (a required argument a forbid reads that
    // the completion lacks is an error, and a forbid in error denies).
    let mut policies = starter_policies();
    policies.push(PolicySource {
        name: "greet.cedar".into(),
        text: "@id(\"no-greeting-root\")\nforbid (principal, action == Action::\"demo.greet\", resource) when { context.arguments has who && context.arguments.who == \"root\" };\n@id(\"no-private-docs\")\nforbid (principal, action == Action::\"demo.docs\", resource) when { context.arguments.uri like \"demo://docs/private/*\" };\n@id(\"no-pick-in-xx\")\nforbid (principal, action == Action::\"demo.pick\", resource) when { context.arguments.lang == \"xx\" };".into(),
    });
    let g = governor_from(&text, &policies);
    let s = MemoryState::new();
    let complete = |kind, tool: &str, arguments| Proposal {
        operation: Complete,
        ..of_kind(kind, tool, arguments)
    };
    let rule = |d: &Decision| (d.decision, d.rules[0].clone());
    // A prompt's argument: its values are judged by the schema as far as they go (`lang`,
    // not chosen yet, is not missing), and recorded as a completion.
    let who = complete(
        Prompt,
        "demo.greet",
        json!({"argument": "who", "value": "An"}),
    );
    let d = g.decide(&who, &s, DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    assert_eq!(d.operation, Complete);
    // Its hash is not a use's of the same arguments: a grant binds the operation.
    let as_use = g.decide(
        &of_kind(Prompt, "demo.greet", who.arguments.clone()),
        &s,
        DAY_TIME,
    );
    assert_ne!(d.arguments_hash, as_use.arguments_hash);
    assert!(
        d.reason
            .contains("may complete an argument of `demo.greet`"),
        "{}",
        d.reason
    );
    let d = g.decide(
        &complete(
            Prompt,
            "demo.greet",
            json!({"argument": "who", "value": "root"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules[0], "policy:no-greeting-root", "{d:?}");
    for bad in [
        json!({"argument": "who", "value": "Annabelle-Marie"}),
        json!({"argument": "whom", "value": "x"}),
        json!({"argument": "who", "value": "x", "context": {"lang": "en", "mood": "x"}}),
    ] {
        let d = g.decide(&complete(Prompt, "demo.greet", bad.clone()), &s, DAY_TIME);
        assert_eq!(
            rule(&d),
            (Verdict::Deny, "arguments.invalid".into()),
            "{bad}"
        );
    }
    // A resource template's argument: under the entry that covers every URI it can make.
    assert_eq!(g.template_entry("demo://docs/{name}"), Some("demo.docs"));
    assert_eq!(g.template_entry("demo://docs/../{name}"), None);
    let template = |uri: &str| json!({"uri": uri, "argument": "name", "value": "a"});
    let d = g.decide(
        &complete(Resource, "demo.docs", template("demo://docs/{name}")),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    let d = g.decide(
        &complete(Resource, "demo.docs", template("demo://other/{name}")),
        &s,
        DAY_TIME,
    );
    assert_eq!(rule(&d), (Verdict::Deny, "resource.not_admitted".into()));
    // The values put in keep the URI under the entry, whatever the rest becomes; Cedar sees
    // the URI as far as the values go.
    let filled = |uri: &str, value: &str| json!({"uri": uri, "argument": "name", "value": value});
    for (uri, value) in [
        ("demo://docs/{name}", "../secret"),
        ("demo://docs/{name}", "%2e%2e"),
        ("demo://docs/{name}/../../etc/{other}", "a"),
        ("demo://docs/{+name}", "a"),
    ] {
        let d = g.decide(
            &complete(Resource, "demo.docs", filled(uri, value)),
            &s,
            DAY_TIME,
        );
        assert_eq!(rule(&d).1, "resource.not_admitted", "{uri} {value}");
    }
    let doc = |value: &str| {
        g.decide(
            &complete(Resource, "demo.docs", filled("demo://docs/{name}", value)),
            &s,
            DAY_TIME,
        )
    };
    let d = doc("private/");
    assert_eq!(rule(&d).1, "policy:no-private-docs", "{d:?}");
    let d = doc("public/");
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    // A forbid that reads an argument the completion lacks, without `has`: denied (fail
    // closed); with that argument given, judged on it.
    let pick = |context: serde_json::Value| {
        complete(
            Prompt,
            "demo.pick",
            json!({"argument": "item", "value": "a", "context": context}),
        )
    };
    assert_ne!(
        g.decide(&pick(json!({})), &s, DAY_TIME).decision,
        Verdict::Allow
    );
    assert_eq!(
        rule(&g.decide(&pick(json!({"lang": "xx"})), &s, DAY_TIME)).1,
        "policy:no-pick-in-xx"
    );
    assert_eq!(
        g.decide(&pick(json!({"lang": "en"})), &s, DAY_TIME)
            .decision,
        Verdict::Allow
    );
    // A tool's arguments are not completed.
    let tool = Proposal {
        operation: Complete,
        ..proposal(
            "coder-1",
            "s",
            "fs.read_file",
            json!({"argument": "path", "value": "/"}),
        )
    };
    assert_eq!(rule(&g.decide(&tool, &s, DAY_TIME)).1, "proposal.invalid");
    // What a use of the entry would put to a person, a completion is denied.
    let plan = of_kind(Prompt, "demo.plan", json!({}));
    assert_eq!(g.decide(&plan, &s, DAY_TIME).decision, Verdict::Escalate);
    let d = g.decide(
        &complete(
            Prompt,
            "demo.plan",
            json!({"argument": "goal", "value": ""}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(rule(&d), (Verdict::Deny, "completion.not_escalated".into()));
    assert_eq!(d.escalation, None);
    // Asked again and again as a person types: no loop, no pause.
    for _ in 0..6 {
        assert_eq!(g.decide(&who, &s, DAY_TIME).decision, Verdict::Allow);
    }
    // In a paused session it is denied, not escalated.
    s.set_hold(Hold {
        scope: HoldScope::Session(warden_core::state::session_key("coder-1", "s")),
        kind: HoldKind::Pause,
        reason: "paused by a test".into(),
        since: DAY_TIME,
    })
    .unwrap();
    let d = g.decide(&who, &s, DAY_TIME);
    assert_eq!(rule(&d), (Verdict::Deny, "completion.not_escalated".into()));
    assert!(d.reason.contains("is paused"), "{}", d.reason);
}

#[test]
fn unknown_agent_and_foreign_tenant_are_denied() {
    let g = starter();
    let s = MemoryState::new();
    let d = read_call(&g, &s, "mallory", "s", "/x", DAY_TIME);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "agent.unknown")
    );
    let mut p = proposal("coder-1", "s", "fs.read_file", read("/x"));
    p.tenant = Some("globex".into());
    let d = g.decide(&p, &s, DAY_TIME);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "tenant.mismatch")
    );
    assert!(d.reason.contains("`globex`"));
}

#[test]
fn schema_violations_are_denied_naming_the_json_path() {
    let g = starter();
    let s = MemoryState::new();
    let d = g.decide(
        &proposal(
            "coder-1",
            "s",
            "github.create_issue",
            json!({"repo": "acme/x", "title": 7}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Deny);
    assert_eq!(d.rules[0], "arguments.invalid");
    assert!(d.reason.contains("`/title`"), "{}", d.reason);
    let d = g.decide(
        &proposal(
            "coder-1",
            "s",
            "fs.read_file",
            json!({"path": "/x", "mode": "w"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules[0], "arguments.invalid");
    let d = g.decide(
        &proposal(
            "coder-1",
            "s",
            "github.create_issue",
            json!({"repo": "not a repo", "title": "t"}),
        ),
        &s,
        DAY_TIME,
    );
    assert!(d.reason.contains("`/repo`"), "{}", d.reason);
}

#[test]
fn zones_restrict_where_a_tool_may_be_called_from() {
    let g = starter();
    // db.drop_table is prod-only; coder-1 lives in dev.
    let d = g.decide(
        &proposal(
            "coder-1",
            "s",
            "db.drop_table",
            json!({"database": "app", "table": "t"}),
        ),
        &MemoryState::new(),
        DAY_TIME,
    );
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "zone.not_allowed")
    );
    assert!(d.reason.contains("zone `dev`"));
}

#[test]
fn approval_modes_escalate_with_their_requirement() {
    let g = starter();
    let s = MemoryState::new();
    // high tier, senior agent: 1 planner.
    let d = g.decide(
        &proposal(
            "ops-1",
            "s",
            "deploy.staging",
            json!({"service": "api", "version": "1.2"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Escalate, "{d:?}");
    assert_eq!(
        d.escalation,
        Some(Escalation::Approvers {
            approvers: 1,
            role: "planner".into()
        })
    );
    assert!(d.rules.contains(&"tier.high.approvers".to_string()));
    // critical tier: 2 distinct humans.
    let d = g.decide(
        &proposal(
            "ops-1",
            "s",
            "db.drop_table",
            json!({"database": "app", "table": "t"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(
        d.escalation,
        Some(Escalation::Humans { approvers: 2 }),
        "{d:?}"
    );
}

#[test]
fn time_window_allows_inside_and_queues_outside() {
    let g = starter();
    let s = MemoryState::new();
    let issue = json!({"repo": "acme/app", "title": "bug"});
    // ops-1 is senior: medium is autonomous for it, but github.create_issue is dev-only, so use
    // a manifest where ops-1 lives in dev.
    let text = starter_text().replace(
        "{ id: ops-1, tenant: acme, owner: bob@acme.example, zone: prod, trust: senior }",
        "{ id: ops-1, tenant: acme, owner: bob@acme.example, zone: dev, trust: senior }",
    );
    let g2 = governor_from(&text, &starter_policies());
    let d = g2.decide(
        &proposal("ops-1", "a", "github.create_issue", issue.clone()),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    assert!(d.rules.contains(&"tier.medium.window_open".to_string()));
    let d = g2.decide(
        &proposal("ops-1", "b", "github.create_issue", issue.clone()),
        &s,
        NIGHT_TIME,
    );
    assert_eq!(d.decision, Verdict::Escalate);
    assert_eq!(
        d.escalation,
        Some(Escalation::Queued {
            until: "2026-11-23T08:00:00Z".into(),
            until_unix: NIGHT_TIME + 9 * 3600,
        })
    );
    // coder-1 is junior: medium needs its owner even inside the window.
    let d = g.decide(
        &proposal("coder-1", "c", "github.create_issue", issue),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Escalate);
    assert_eq!(
        d.escalation,
        Some(Escalation::Owner {
            owner: "alice@acme.example".into()
        })
    );
    assert!(d.rules.contains(&"trust.junior.with_approval".to_string()));
}

#[test]
fn progressive_trust_forbids_tiers_outside_the_level() {
    let text = starter_text().replace("trust: junior }", "trust: intern }");
    let g = governor_from(&text, &starter_policies());
    let d = g.decide(
        &proposal(
            "coder-1",
            "s",
            "github.create_issue",
            json!({"repo": "acme/a", "title": "t"}),
        ),
        &MemoryState::new(),
        DAY_TIME,
    );
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "trust.intern.forbidden")
    );
    let d = g.decide(
        &proposal("coder-1", "s", "fs.read_file", read("/a")),
        &MemoryState::new(),
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Allow);
}

#[test]
fn cedar_forbid_wins_over_permit_and_approvals() {
    let g = starter();
    let s = MemoryState::new();
    let d = g.decide(
        &proposal(
            "ops-1",
            "s",
            "db.drop_table",
            json!({"database": "audit", "table": "log"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.decision, Verdict::Deny);
    assert_eq!(d.rules, vec!["policy:forbid-drop-audit"]);
    assert_eq!(d.policies, vec!["forbid-drop-audit"]);
    // An argument-aware forbid: issues only in acme's repositories.
    let d = g.decide(
        &proposal(
            "coder-1",
            "s",
            "github.create_issue",
            json!({"repo": "evil/x", "title": "t"}),
        ),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules, vec!["policy:forbid-foreign-repos"]);
}

#[test]
fn without_a_permit_nothing_is_allowed() {
    let policies = vec![PolicySource {
        name: "p.cedar".into(),
        text: "forbid (principal, action, resource) when { false };".into(),
    }];
    let g = governor_from(&starter_text(), &policies);
    let d = g.decide(
        &proposal("coder-1", "s", "fs.read_file", read("/a")),
        &MemoryState::new(),
        DAY_TIME,
    );
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "cedar.no_permit")
    );
}

#[test]
fn policies_naming_unknown_tools_or_attributes_do_not_load() {
    let m = || parse_manifest("manifest.yaml", &starter_text()).unwrap();
    let bad = [
        ("permit (principal, action == Action::\"no.such_tool\", resource);", "no.such_tool"),
        ("permit (principal, action, resource) when { principal.clearance == 3 };", "clearance"),
        (
            "permit (principal, action == Action::\"fs.read_file\", resource) when { context.arguments.mode == \"r\" };",
            "mode",
        ),
        ("permit (principal, action, resource is Tool) when { resource.tier == 3 };", "not compatible"),
    ];
    for (text, needle) in bad {
        let policies = vec![PolicySource {
            name: "bad.cedar".into(),
            text: text.into(),
        }];
        let err = Governor::new(m(), &policies).unwrap_err().to_string();
        assert!(err.contains("bad.cedar:1"), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let policies = vec![PolicySource {
        name: "syntax.cedar".into(),
        text: "\n\npermit (principal action, resource);".into(),
    }];
    let err = Governor::new(m(), &policies).unwrap_err().to_string();
    assert!(
        err.starts_with("syntax.cedar:3: Cedar syntax error"),
        "{err}"
    );
    let dup = vec![PolicySource {
        name: "dup.cedar".into(),
        text: "@id(\"a\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource);".into(),
    }];
    let err = Governor::new(m(), &dup).unwrap_err().to_string();
    assert!(err.contains("duplicate policy id"), "{err}");
}

/// A policy naming an agent, tenant, zone, tier or tool the manifest does not have would
/// silently never apply (a misspelt `forbid` protects nothing): the bundle does not load, and
/// the error names the policy, its line and the entity.
#[test]
fn policies_naming_entities_not_in_the_manifest_do_not_load() {
    let m = || parse_manifest("manifest.yaml", &starter_text()).unwrap();
    for (text, needle) in [
        (
            "\n@id(\"typo\")\nforbid (principal == Agent::\"codr-1\", action, resource);",
            "`Agent::\"codr-1\"` is not in the manifest, so this forbid would protect nothing",
        ),
        (
            "@id(\"t\")\npermit (principal in Tenant::\"acne\", action, resource);",
            "`Tenant::\"acne\"` is not in the manifest, so this permit would never apply",
        ),
        (
            "@id(\"z\")\nforbid (principal, action, resource) when { principal in Zone::\"staging\" };",
            "Zone::\"staging\"",
        ),
        (
            "@id(\"r\")\nforbid (principal, action, resource == Tool::\"fs.read\");",
            "Tool::\"fs.read\"",
        ),
    ] {
        let policies = vec![PolicySource {
            name: "bad.cedar".into(),
            text: text.into(),
        }];
        let err = Governor::new(m(), &policies).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(err.contains("bad.cedar:"), "{err}");
    }
    // The typo's line: the policy with the annotation on line 2.
    let policies = vec![PolicySource {
        name: "bad.cedar".into(),
        text: "\n@id(\"typo\")\nforbid (principal == Agent::\"codr-1\", action, resource);".into(),
    }];
    let err = Governor::new(m(), &policies).unwrap_err().to_string();
    assert!(err.contains("bad.cedar:2"), "{err}");
    // The control: the same policy naming an agent that exists loads.
    let policies = vec![PolicySource {
        name: "ok.cedar".into(),
        text: "forbid (principal == Agent::\"coder-1\", action, resource);".into(),
    }];
    assert!(Governor::new(m(), &policies).is_ok());
}

#[test]
fn policies_pinned_to_an_agent_apply_only_to_it() {
    let mut policies = starter_policies();
    policies.push(PolicySource {
        name: "pin.cedar".into(),
        text: "@id(\"no-reads-for-coder\")\nforbid (principal == Agent::\"coder-1\", action == Action::\"fs.read_file\", resource);".into(),
    });
    let g = governor_from(&starter_text(), &policies);
    let s = MemoryState::new();
    let d = read_call(&g, &s, "coder-1", "s", "/a", DAY_TIME);
    assert_eq!(d.rules, vec!["policy:no-reads-for-coder"]);
    let d = read_call(&g, &s, "ops-1", "s", "/a", DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow);
}

#[test]
fn tier_action_groups_select_every_tool_of_the_tier() {
    let mut policies = starter_policies();
    policies.push(PolicySource {
        name: "tier.cedar".into(),
        text: "@id(\"no-low-at-night\")\nforbid (principal, action in Action::\"tier:low\", resource) when { context.hour >= 22 };".into(),
    });
    let g = governor_from(&starter_text(), &policies);
    let s = MemoryState::new();
    let d = read_call(&g, &s, "coder-1", "s", "/a", NIGHT_TIME);
    assert_eq!(d.rules, vec!["policy:no-low-at-night"]);
    let d = read_call(&g, &s, "coder-1", "s", "/a", DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow);
}

#[test]
fn tier_rate_limit_denies_and_denied_calls_consume_nothing() {
    let text = starter_text().replace("rate: 100/h", "rate: 3/h");
    let g = governor_from(&text, &starter_policies());
    let s = MemoryState::new();
    for i in 0..3 {
        let d = read_call(&g, &s, "coder-1", "s", &format!("/{i}"), DAY_TIME);
        assert_eq!(d.decision, Verdict::Allow, "call {i}: {d:?}");
    }
    let d = read_call(&g, &s, "coder-1", "s", "/4", DAY_TIME);
    assert_eq!(d.decision, Verdict::Deny);
    assert_eq!(d.rules[0], "rate.tier.low");
    assert!(d.reason.contains("3 of 3"), "{}", d.reason);
    // Other agents have their own tier counter.
    let d = read_call(&g, &s, "ops-1", "s", "/5", DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow);
    // The next hour window starts afresh.
    let d = read_call(&g, &s, "coder-1", "s", "/6", DAY_TIME + 3600);
    assert_eq!(d.decision, Verdict::Allow);
}

#[test]
fn agent_tenant_and_global_budgets_apply() {
    let s = MemoryState::new();
    let text = starter_text().replace(
        "agent:  { calls: 1000/h, cost: 500/d }",
        "agent:  { calls: 1000/h, cost: 2/d }",
    );
    let g = governor_from(&text, &starter_policies());
    assert_eq!(
        read_call(&g, &s, "coder-1", "s", "/1", DAY_TIME).decision,
        Verdict::Allow
    );
    assert_eq!(
        read_call(&g, &s, "coder-1", "s", "/2", DAY_TIME).decision,
        Verdict::Allow
    );
    let d = read_call(&g, &s, "coder-1", "s", "/3", DAY_TIME);
    assert_eq!(d.rules[0], "budget.agent.cost", "{d:?}");

    let s = MemoryState::new();
    let text = starter_text().replace(
        "tenant: { calls: 10000/h, cost: 5000/d }",
        "tenant: { calls: 2/h }",
    );
    let g = governor_from(&text, &starter_policies());
    assert!(read_call(&g, &s, "coder-1", "s", "/1", DAY_TIME).is_allow());
    assert!(read_call(&g, &s, "ops-1", "s", "/2", DAY_TIME).is_allow());
    let d = read_call(&g, &s, "ops-1", "s", "/3", DAY_TIME);
    assert_eq!(d.rules[0], "budget.tenant.calls");

    let s = MemoryState::new();
    let text = starter_text().replace(
        "global: { calls: 100000/h, cost: 50000/d }",
        "global: { calls: 1/h }",
    );
    let g = governor_from(&text, &starter_policies());
    assert!(read_call(&g, &s, "coder-1", "s", "/1", DAY_TIME).is_allow());
    let d = read_call(&g, &s, "ops-1", "s", "/2", DAY_TIME);
    assert_eq!(d.rules[0], "budget.global.calls");
}

#[test]
fn system_invariant_caps_the_aggregate() {
    let text = starter_text().replace(
        "- { name: critical-actions, tiers: [critical], calls: 5/h }",
        "- { name: reads, tools: [fs.read_file], calls: 2/h }",
    );
    let g = governor_from(&text, &starter_policies());
    let s = MemoryState::new();
    assert!(read_call(&g, &s, "coder-1", "s", "/1", DAY_TIME).is_allow());
    assert!(read_call(&g, &s, "ops-1", "t", "/2", DAY_TIME).is_allow());
    let d = read_call(&g, &s, "ops-1", "t", "/3", DAY_TIME);
    assert_eq!(d.rules[0], "invariant:reads");
}

#[test]
fn escalated_calls_consume_no_budget() {
    let text = starter_text().replace(
        "agent:  { calls: 1000/h, cost: 500/d }",
        "agent:  { calls: 1/h }",
    );
    let g = governor_from(&text, &starter_policies());
    let s = MemoryState::new();
    for i in 0..5 {
        let d = g.decide(
            &proposal(
                "ops-1",
                "s",
                "deploy.staging",
                json!({"service": "api", "version": format!("{i}")}),
            ),
            &s,
            DAY_TIME,
        );
        assert_eq!(d.decision, Verdict::Escalate);
    }
    assert!(read_call(&g, &s, "ops-1", "s", "/1", DAY_TIME).is_allow());
}

#[test]
fn the_third_identical_call_pauses_the_session() {
    let g = starter();
    let s = MemoryState::new();
    let p = proposal("coder-1", "loop", "fs.read_file", read("/same"));
    assert!(g.decide(&p, &s, DAY_TIME).is_allow());
    assert!(g.decide(&p, &s, DAY_TIME + 1).is_allow());
    let d = g.decide(&p, &s, DAY_TIME + 2);
    assert_eq!(d.decision, Verdict::Escalate);
    assert_eq!(d.rules[0], "loop.repeat_pattern");
    assert_eq!(
        d.escalation,
        Some(Escalation::SessionPaused {
            session: "loop".into()
        })
    );
    // The session stays paused for any call until resumed.
    let d = read_call(&g, &s, "coder-1", "loop", "/other", DAY_TIME + 3);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Escalate, "session.paused")
    );
    // Other sessions are unaffected; a different argument in between resets the count.
    let q = proposal("coder-1", "other", "fs.read_file", read("/same"));
    assert!(g.decide(&q, &s, DAY_TIME).is_allow());
    assert!(g.decide(&q, &s, DAY_TIME).is_allow());
    assert!(read_call(&g, &s, "coder-1", "other", "/x", DAY_TIME).is_allow());
    assert!(g.decide(&q, &s, DAY_TIME).is_allow());
    // Resumed by a human: calls flow again.
    s.clear_hold(&HoldScope::Session("coder-1/loop".into()), HoldKind::Pause)
        .unwrap();
    assert!(read_call(&g, &s, "coder-1", "loop", "/new", DAY_TIME + 4).is_allow());
}

#[test]
fn unrepresentable_arguments_are_denied_consistently() {
    // A tool with an integer argument and only context-free policies: Cedar never needs the
    // arguments, and its results are cached; the verdict must not depend on that.
    let text = starter_text().replace(
        "        path: { type: string, maxLength: 4096 }",
        "        path: { type: string, maxLength: 4096 }\n        offset: { type: integer }",
    );
    let g = governor_from(&text, &starter_policies());
    let s = MemoryState::new();
    let huge = proposal(
        "coder-1",
        "s",
        "fs.read_file",
        json!({"path": "/a", "offset": 18_446_744_073_709_551_615u64}),
    );
    let ok = proposal(
        "coder-1",
        "s",
        "fs.read_file",
        json!({"path": "/a", "offset": 1}),
    );
    let d = g.decide(&huge, &s, DAY_TIME);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "cedar.context_error"),
        "{d:?}"
    );
    assert!(
        d.reason.contains("`/offset` does not fit a 64-bit integer"),
        "{}",
        d.reason
    );
    assert!(g.decide(&ok, &s, DAY_TIME).is_allow());
    let d = g.decide(&huge, &s, DAY_TIME + 1);
    assert_eq!(d.rules[0], "cedar.context_error", "{d:?}");
}

#[test]
fn an_unconditional_permit_makes_conditional_permits_irrelevant_but_not_forbids() {
    // The only other permit reads the arguments and never holds; the forbid reads them too.
    let mut policies = starter_policies();
    policies.push(PolicySource {
        name: "more.cedar".into(),
        text: "@id(\"never\")\npermit (principal, action == Action::\"fs.read_file\", resource) when { context.arguments.path == \"/never\" };\n@id(\"no-tmp\")\nforbid (principal, action == Action::\"fs.read_file\", resource) when { context.arguments.path like \"/tmp/*\" };".into(),
    });
    let g = governor_from(&starter_text(), &policies);
    let s = MemoryState::new();
    let d = read_call(&g, &s, "coder-1", "s", "/srv/a", DAY_TIME);
    assert!(d.is_allow(), "{d:?}");
    assert_eq!(d.policies, vec!["permit-manifest-tools"]);
    let d = read_call(&g, &s, "coder-1", "s", "/tmp/a", DAY_TIME);
    assert_eq!(d.rules, vec!["policy:no-tmp"]);
}

#[test]
fn sessions_are_per_agent() {
    let g = starter();
    let s = MemoryState::new();
    let p = proposal("ops-1", "shared", "fs.read_file", read("/same"));
    for _ in 0..3 {
        let _ = g.decide(&p, &s, DAY_TIME);
    }
    assert_eq!(g.decide(&p, &s, DAY_TIME).rules[0], "session.paused");
    // Another agent using the same session name is neither paused nor counted.
    let q = proposal("coder-1", "shared", "fs.read_file", read("/same"));
    let d = g.decide(&q, &s, DAY_TIME);
    assert!(d.is_allow(), "{d:?}");
    assert!(g.decide(&q, &s, DAY_TIME).is_allow());
}

#[test]
fn kill_switch_and_quarantine_deny_at_every_scope() {
    let g = starter();
    let cases = [
        (HoldScope::Global, HoldKind::Kill, "kill.global"),
        (
            HoldScope::Tenant("acme".into()),
            HoldKind::Kill,
            "kill.tenant",
        ),
        (
            HoldScope::Agent("coder-1".into()),
            HoldKind::Quarantine,
            "quarantine.agent",
        ),
        (
            HoldScope::Tenant("acme".into()),
            HoldKind::Quarantine,
            "quarantine.tenant",
        ),
    ];
    for (scope, kind, rule) in cases {
        let s = MemoryState::new();
        s.set_hold(Hold {
            scope: scope.clone(),
            kind,
            reason: "incident 42".into(),
            since: 0,
        })
        .unwrap();
        let d = read_call(&g, &s, "coder-1", "s", "/a", DAY_TIME);
        assert_eq!((d.decision, d.rules[0].as_str()), (Verdict::Deny, rule));
        assert!(d.reason.contains("incident 42"));
    }
    // A hold on another agent does not touch this one.
    let s = MemoryState::new();
    s.set_hold(Hold {
        scope: HoldScope::Agent("ops-1".into()),
        kind: HoldKind::Kill,
        reason: "x".into(),
        since: 0,
    })
    .unwrap();
    assert!(read_call(&g, &s, "coder-1", "s", "/a", DAY_TIME).is_allow());
}

/// A store that cannot answer, like an unreachable Redis.
struct DownStore;
impl StateStore for DownStore {
    fn check_and_charge(
        &self,
        _: &[warden_core::state::Charge],
        _: i64,
    ) -> Result<warden_core::state::ChargeOutcome, StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
    fn observe_call(&self, _: &str, _: [u8; 32], _: i64, _: i64) -> Result<u32, StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
    fn settle(
        &self,
        _: &warden_core::state::Settle<'_>,
    ) -> Result<warden_core::state::Settled, StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
    fn holds(&self, _: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
    fn set_hold(&self, _: Hold) -> Result<(), StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
    fn clear_hold(&self, _: &HoldScope, _: HoldKind) -> Result<bool, StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        Err(StateError::Unavailable("connection refused".into()))
    }
}

#[test]
fn an_unavailable_state_store_denies() {
    let g = starter();
    let d = g.decide(
        &proposal("coder-1", "s", "fs.read_file", read("/a")),
        &DownStore,
        DAY_TIME,
    );
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "state.unavailable")
    );
    assert!(d.reason.contains("connection refused"));
}

/// A store that counts what it is asked, over a real one.
#[derive(Default)]
struct Counting {
    inner: MemoryState,
    settles: std::sync::atomic::AtomicUsize,
    others: std::sync::atomic::AtomicUsize,
}
impl Counting {
    /// (settle calls, other calls) since the last look.
    fn asked(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.settles.swap(0, SeqCst), self.others.swap(0, SeqCst))
    }
    fn other(&self) {
        self.others
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
impl StateStore for Counting {
    fn settle(
        &self,
        s: &warden_core::state::Settle<'_>,
    ) -> Result<warden_core::state::Settled, StateError> {
        self.settles
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.settle(s)
    }
    fn check_and_charge(
        &self,
        c: &[warden_core::state::Charge],
        now: i64,
    ) -> Result<warden_core::state::ChargeOutcome, StateError> {
        self.other();
        self.inner.check_and_charge(c, now)
    }
    fn observe_call(&self, s: &str, f: [u8; 32], now: i64, ttl: i64) -> Result<u32, StateError> {
        self.other();
        self.inner.observe_call(s, f, now, ttl)
    }
    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        self.other();
        self.inner.holds(scopes)
    }
    fn set_hold(&self, h: Hold) -> Result<(), StateError> {
        self.other();
        self.inner.set_hold(h)
    }
    fn clear_hold(&self, scope: &HoldScope, kind: HoldKind) -> Result<bool, StateError> {
        self.other();
        self.inner.clear_hold(scope, kind)
    }
    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        self.other();
        self.inner.all_holds()
    }
}

/// Issue 19: a networked store serves a decision in one round trip. Allowed, escalated and
/// denied calls under no hold ask the store once; a call under a hold, the rare case, takes
/// the steps one by one and still decides as before.
#[test]
fn a_decision_asks_the_state_store_once() {
    let text = starter_text().replace(
        "agent:  { calls: 1000/h, cost: 500/d }",
        "agent:  { calls: 2/h }",
    );
    let g = governor_from(&text, &starter_policies());
    let s = Counting::default();
    assert!(read_call(&g, &s, "coder-1", "s", "/a", DAY_TIME).is_allow());
    assert_eq!(s.asked(), (1, 0), "allowed: one round trip");
    let deploy = proposal(
        "ops-1",
        "s",
        "deploy.staging",
        json!({"service": "api", "version": "1"}),
    );
    assert_eq!(g.decide(&deploy, &s, DAY_TIME).decision, Verdict::Escalate);
    assert_eq!(s.asked(), (1, 0), "escalated: one round trip");
    let d = g.decide(
        &proposal("coder-1", "s", "no.such_tool", json!({})),
        &s,
        DAY_TIME,
    );
    assert_eq!(d.rules[0], "tool.unknown");
    assert_eq!(s.asked(), (1, 0), "denied: the holds are still read, once");
    assert!(read_call(&g, &s, "coder-1", "s", "/b", DAY_TIME).is_allow());
    let d = read_call(&g, &s, "coder-1", "s", "/c", DAY_TIME);
    assert_eq!(d.rules[0], "budget.agent.calls", "{d:?}");
    assert_eq!(
        s.asked(),
        (2, 0),
        "the budget is charged in the same round trip"
    );

    // Under a demotion the steps ask one by one, and the budget still holds: the escalated
    // call charged nothing, the loop detector counted it.
    s.inner
        .set_hold(Hold {
            scope: HoldScope::Agent("ops-1".into()),
            kind: HoldKind::Demote,
            reason: "drill".into(),
            since: 0,
        })
        .unwrap();
    let d = read_call(&g, &s, "ops-1", "t", "/a", DAY_TIME);
    assert_eq!(d.decision, Verdict::Escalate, "{d:?}");
    assert!(d.rules.contains(&"trust.demoted".to_string()), "{d:?}");
    assert_eq!(
        s.asked(),
        (1, 1),
        "held: the history is observed on its own"
    );
    s.inner
        .clear_hold(&HoldScope::Agent("ops-1".into()), HoldKind::Demote)
        .unwrap();
    assert!(read_call(&g, &s, "ops-1", "t", "/b", DAY_TIME).is_allow());
    assert!(read_call(&g, &s, "ops-1", "t", "/c", DAY_TIME).is_allow());
    assert_eq!(
        read_call(&g, &s, "ops-1", "t", "/d", DAY_TIME).rules[0],
        "budget.agent.calls"
    );
}

#[test]
fn a_manifest_that_does_not_load_allows_nothing() {
    let p = proposal("coder-1", "s", "fs.read_file", read("/a"));
    let d = warden_policy::deny_unloaded(&p, "tools[0].tier: unknown tier", DAY_TIME);
    assert_eq!(d.decision, Verdict::Deny);
    assert_eq!(d.rules, vec!["manifest.not_loaded"]);
    assert!(d.reason.contains("unknown tier"));
}

#[test]
fn counters_never_pass_their_limit_when_threads_decide_at_once() {
    let text = starter_text().replace("rate: 100/h", "rate: 37/h");
    let g = Arc::new(governor_from(&text, &starter_policies()));
    let s = Arc::new(MemoryState::new());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (g, s) = (Arc::clone(&g), Arc::clone(&s));
            std::thread::spawn(move || {
                (0..20)
                    .filter(|i| {
                        let p = proposal(
                            "coder-1",
                            &format!("t{t}"),
                            "fs.read_file",
                            read(&format!("/{t}/{i}")),
                        );
                        g.decide(&p, s.as_ref(), DAY_TIME).is_allow()
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(allowed, 37);
}

#[test]
fn every_example_manifest_loads() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("manifest.yaml");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).unwrap();
        let m = parse_manifest("manifest.yaml", &text)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut policies = Vec::new();
        for entry in std::fs::read_dir(dir.join("policies")).unwrap() {
            let p = entry.unwrap().path();
            policies.push(PolicySource {
                name: p.display().to_string(),
                text: std::fs::read_to_string(&p).unwrap(),
            });
        }
        Governor::new(m, &policies).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        count += 1;
    }
    assert!(count >= 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_tool_not_in_the_manifest_is_never_allowed(
        tool in "[a-z_.:-]{1,24}",
        agent in prop::sample::select(vec!["coder-1", "ops-1", "mallory"]),
        key in "[a-z]{1,6}",
        value in any::<i64>(),
    ) {
        let g = starter();
        prop_assume!(!g.manifest().tools.contains_key(&tool));
        let d = g.decide(&proposal(agent, "s", &tool, json!({ key: value })), &MemoryState::new(), DAY_TIME);
        prop_assert_eq!(d.decision, Verdict::Deny);
    }

    #[test]
    fn a_matching_forbid_always_wins(
        agent in prop::sample::select(vec!["coder-1", "ops-1"]),
        path in "/[a-z/]{0,20}",
        hour in 0i64..24,
    ) {
        // Whatever else permits it, a forbid that matches denies.
        let mut policies = starter_policies();
        policies.push(PolicySource {
            name: "extra.cedar".into(),
            text: "@id(\"permit-again\")\npermit (principal, action, resource);\n@id(\"forbid-reads\")\nforbid (principal, action == Action::\"fs.read_file\", resource) when { context.arguments.path like \"/*\" };".into(),
        });
        let g = governor_from(&starter_text(), &policies);
        let now = DAY_TIME - 10 * 3600 + hour * 3600;
        let d = g.decide(&proposal(agent, "s", "fs.read_file", read(&path)), &MemoryState::new(), now);
        prop_assert_eq!(d.decision, Verdict::Deny);
        prop_assert_eq!(d.rules, vec!["policy:forbid-reads".to_string()]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Skipping the evaluation of unconditional permits (an optimisation of the index) never
    /// changes a verdict: the same policies with `when { true }` on the permit, which forces the
    /// full evaluation, decide the same.
    #[test]
    fn unconditional_permit_shortcut_changes_no_verdict(
        agent in prop::sample::select(vec!["coder-1", "ops-1", "nobody"]),
        tool in prop::sample::select(vec!["fs.read_file", "github.create_issue", "deploy.staging", "db.drop_table"]),
        repo in prop::sample::select(vec!["acme/app", "evil/app"]),
        db in prop::sample::select(vec!["audit", "app"]),
        hour in 0i64..24,
    ) {
        let args = match tool {
            "fs.read_file" => read("/x"),
            "github.create_issue" => json!({"repo": repo, "title": "t"}),
            "deploy.staging" => json!({"service": "s", "version": "1"}),
            _ => json!({"database": db, "table": "t"}),
        };
        let p = proposal(agent, "s", tool, args);
        let fast = starter();
        let slow_policies: Vec<PolicySource> = starter_policies()
            .into_iter()
            .map(|mut s| {
                s.text = s.text.replace(
                    "permit (principal is Agent, action, resource is Tool);",
                    "permit (principal is Agent, action, resource is Tool) when { true };",
                );
                s
            })
            .collect();
        let slow = governor_from(&starter_text(), &slow_policies);
        let now = DAY_TIME - 10 * 3600 + hour * 3600;
        let a = fast.decide(&p, &MemoryState::new(), now);
        let b = slow.decide(&p, &MemoryState::new(), now);
        prop_assert_eq!(a.decision, b.decision);
        prop_assert_eq!(a.rules, b.rules);
    }
}

/// INV-011: what a scan of an egress tool's arguments found decides whether it may leave.
#[test]
fn egress_arguments_carrying_more_than_the_destination_allows_are_denied_or_escalated() {
    let mail = |extra: &str| {
        starter_text().replace(
            "tools:\n",
            &format!(
                "tools:\n  - name: mail.send\n    tier: low\n    zones: [\"*\"]\n    arguments: {{ type: object }}\n    egress: [smtp.example.com]\n{extra}"
            ),
        )
    };
    let call = |g: &Governor, session: &str, found: &[&str]| {
        let s = MemoryState::new();
        let p = proposal(
            "coder-1",
            session,
            "mail.send",
            serde_json::json!({"to": "x"}),
        );
        g.decide_scanned(&p, &s, DAY_TIME, found)
    };
    // Default: nothing above `public` leaves; a leak is denied, naming the detector only.
    let g = governor_from(&mail(""), &starter_policies());
    assert_eq!(call(&g, "a", &[]).decision, Verdict::Allow);
    let d = call(&g, "b", &["email"]);
    assert_eq!(d.decision, Verdict::Deny, "{d:?}");
    assert_eq!(d.rules, vec!["egress.leak".to_string()]);
    assert!(
        d.reason.contains("`email` match") && d.reason.contains("`public`"),
        "{}",
        d.reason
    );
    // Cleared for confidential: personal data may go, a secret may not.
    let g = governor_from(
        &mail("    egress_level: confidential\n"),
        &starter_policies(),
    );
    assert_eq!(call(&g, "c", &["email", "phone"]).decision, Verdict::Allow);
    let d = call(&g, "d", &["email", "secret"]);
    assert_eq!(d.decision, Verdict::Deny);
    assert!(
        d.reason.contains("a secret value") && d.reason.contains("`restricted`"),
        "{}",
        d.reason
    );
    // `on_leak: escalate`: the owner must approve, and nothing is charged.
    let g = governor_from(&mail("    on_leak: escalate\n"), &starter_policies());
    let d = call(&g, "e", &["jwt"]);
    assert_eq!(d.decision, Verdict::Escalate, "{d:?}");
    assert!(
        d.rules.contains(&"egress.leak".to_string()),
        "{:?}",
        d.rules
    );
    assert_eq!(
        d.escalation,
        Some(warden_core::Escalation::Owner {
            owner: "alice@acme.example".into()
        })
    );
    // A tool without egress hosts is not an egress tool: findings do not matter to it.
    let s = MemoryState::new();
    let p = proposal("coder-1", "f", "fs.read_file", read("/etc/hosts"));
    assert_eq!(
        g.decide_scanned(&p, &s, DAY_TIME, &["secret"]).decision,
        Verdict::Allow
    );
}

/// The approval step: an approval of the call, given for what it needs now, lets it run —
/// charged like any allowed call, so over a limit it is denied; one given for something else
/// leaves it escalated; one that cannot be used, or no room for a request, denies. The
/// decision is the Governor's, whole: nothing after it is edited.
#[test]
fn an_approved_call_runs_charged_like_an_allowed_one_and_only_for_what_it_needs() {
    use warden_policy::{ApprovalEvidence, Evidence};
    // coder-1 (junior) needs its owner for medium-tier `demo.add`; the tier allows 50/h.
    let g = starter();
    let s = MemoryState::new();
    let owner = Escalation::Owner {
        owner: "alice@acme.example".into(),
    };
    let approved = |needed| Evidence {
        approval: Some(ApprovalEvidence::Approved {
            id: "apr_1",
            approved_by: "alice@acme.example",
            needed,
            critical: false,
        }),
        ..Default::default()
    };
    let add = |i: i64| {
        proposal(
            "coder-1",
            &format!("s{i}"),
            "demo.add",
            json!({"a": i, "b": 1}),
        )
    };
    let mut ran = 0;
    for i in 0..60 {
        let d = g.decide_with(&add(i), &s, DAY_TIME, &approved(&owner));
        if d.decision == Verdict::Allow {
            assert!(d.rules.iter().any(|r| r == "approval.redeemed"), "{d:?}");
            assert!(d
                .reason
                .contains("approved by alice@acme.example (approval apr_1)"));
            ran += 1;
        } else {
            assert_eq!(d.rules[0], "rate.tier.medium", "{d:?}");
            assert!(d.reason.contains("apr_1 was redeemed, but"), "{}", d.reason);
            assert!(
                d.reason.contains("exhausted (50 of 50 used)"),
                "{}",
                d.reason
            );
            break;
        }
    }
    assert_eq!(ran, 50);
    // Given for something else (two humans): the call still needs its owner.
    let s = MemoryState::new();
    let humans = Escalation::Humans { approvers: 2 };
    let d = g.decide_with(&add(0), &s, DAY_TIME, &approved(&humans));
    assert_eq!(d.decision, Verdict::Escalate, "{d:?}");
    // Unusable, or no room: denied with the rule.
    let refused = Evidence {
        approval: Some(ApprovalEvidence::Refused {
            rule: "approval.used",
            reason: "approval `apr_1` is used",
        }),
        ..Default::default()
    };
    let d = g.decide_with(&add(1), &s, DAY_TIME, &refused);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "approval.used")
    );
    let full = Evidence {
        approval: Some(ApprovalEvidence::Full { reason: "10 open" }),
        ..Default::default()
    };
    let d = g.decide_with(&add(2), &s, DAY_TIME, &full);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "approval.too_many_open")
    );
    // Evidence about approvals changes nothing for a call that needs none.
    let echo = proposal("coder-1", "e", "demo.echo", json!({"text": "hi"}));
    assert_eq!(
        g.decide_with(&echo, &s, DAY_TIME, &refused).decision,
        Verdict::Allow
    );
}

/// A credential that lists its tools is evidence the Governor decides on: another tool is
/// denied, first and final, and nothing is charged or observed for it.
#[test]
fn a_credential_limited_to_some_tools_is_denied_the_others_before_anything_is_charged() {
    let g = starter();
    let s = MemoryState::new();
    let granted: std::collections::BTreeSet<String> = ["demo.echo".to_owned()].into();
    let evidence = warden_policy::Evidence {
        credential_tools: Some(&granted),
        ..Default::default()
    };
    let read = proposal("coder-1", "s", "fs.read_file", read("/a"));
    for _ in 0..5 {
        let d = g.decide_with(&read, &s, DAY_TIME, &evidence);
        assert_eq!(
            (d.decision, d.rules.as_slice()),
            (
                Verdict::Deny,
                &["credential.tool_not_granted".to_owned()][..]
            )
        );
        assert!(d.reason.contains("`fs.read_file`"), "{}", d.reason);
    }
    // Nothing was observed for those: the same call, now granted, is not a loop.
    let d = g.decide(&read, &s, DAY_TIME);
    assert_eq!(d.decision, Verdict::Allow, "{d:?}");
    let echo = proposal("coder-1", "s", "demo.echo", json!({"text": "hi"}));
    assert_eq!(
        g.decide_with(&echo, &s, DAY_TIME, &evidence).decision,
        Verdict::Allow
    );
}

/// A sub-agent (`<parent>.<name>`, the namespace delegation enforces) never keeps autonomy its
/// parent lost: the parent's demotion, and its kill switch, reach it.
#[test]
fn a_parents_demotion_and_kill_reach_its_sub_agents() {
    use warden_core::state::{Hold, HoldKind, HoldScope, StateStore as _};
    let text = starter_text().replacen(
        "\nagents:\n",
        "\nagents:\n  - { id: ops-1.helper, tenant: acme, owner: bob@acme.example, zone: prod, trust: senior }\n  - { id: ops-10, tenant: acme, owner: bob@acme.example, zone: prod, trust: senior }\n",
        1,
    );
    let g = governor_from(&text, &starter_policies());
    let s = MemoryState::new();
    let read = |agent: &str, i: u32| {
        let p = proposal(
            agent,
            &format!("d{i}"),
            "fs.read_file",
            json!({"path": format!("/x/{i}")}),
        );
        g.decide(&p, &s, DAY_TIME)
    };
    assert_eq!(read("ops-1.helper", 0).decision, Verdict::Allow);
    let hold = |kind| Hold {
        scope: HoldScope::Agent("ops-1".into()),
        kind,
        reason: "a forbidden call".into(),
        since: DAY_TIME,
    };
    s.set_hold(hold(HoldKind::Demote)).unwrap();
    let d = read("ops-1.helper", 1);
    assert_eq!(d.decision, Verdict::Escalate, "{d:?}");
    assert!(
        d.rules.iter().any(|r| r == "trust.demoted"),
        "{:?}",
        d.rules
    );
    // A name that merely starts the same is not in the namespace.
    assert_eq!(read("ops-10", 2).decision, Verdict::Allow);
    s.set_hold(hold(HoldKind::Kill)).unwrap();
    let d = read("ops-1.helper", 3);
    assert_eq!(
        (d.decision, d.rules[0].as_str()),
        (Verdict::Deny, "kill.agent")
    );
    // The sub-agent's own demotion does not reach its parent.
    s.clear_hold(&HoldScope::Agent("ops-1".into()), HoldKind::Kill)
        .unwrap();
    s.clear_hold(&HoldScope::Agent("ops-1".into()), HoldKind::Demote)
        .unwrap();
    s.set_hold(Hold {
        scope: HoldScope::Agent("ops-1.helper".into()),
        ..hold(HoldKind::Demote)
    })
    .unwrap();
    assert_eq!(read("ops-1", 4).decision, Verdict::Allow);
}

#[test]
fn a_demoted_agent_runs_nothing_on_its_own() {
    use warden_core::state::{Hold, HoldKind, HoldScope, StateStore as _};
    let g = starter();
    let s = MemoryState::new();
    let read = |agent: &str, i: u32| {
        let p = proposal(
            agent,
            &format!("d{i}"),
            "fs.read_file",
            json!({"path": format!("/x/{i}")}),
        );
        g.decide(&p, &s, DAY_TIME)
    };
    assert_eq!(read("ops-1", 0).decision, Verdict::Allow);
    s.set_hold(Hold {
        scope: HoldScope::Agent("ops-1".into()),
        kind: HoldKind::Demote,
        reason: "a forbidden call".into(),
        since: DAY_TIME,
    })
    .unwrap();
    let d = read("ops-1", 1);
    assert_eq!(d.decision, Verdict::Escalate, "{d:?}");
    assert!(
        d.rules.iter().any(|r| r == "trust.demoted"),
        "{:?}",
        d.rules
    );
    assert_eq!(
        d.escalation,
        Some(warden_core::Escalation::Owner {
            owner: "bob@acme.example".into()
        })
    );
    assert!(d.reason.contains("a forbidden call"), "{}", d.reason);
    // Other agents are unaffected; lifting the demotion restores the agent.
    assert_eq!(read("coder-1", 2).decision, Verdict::Allow);
    s.clear_hold(&HoldScope::Agent("ops-1".into()), HoldKind::Demote)
        .unwrap();
    assert_eq!(read("ops-1", 3).decision, Verdict::Allow);
}
