//! Manifest validation: every problem reported, each with file, line and key path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use warden_manifest::parse_manifest;

fn starter() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/starter/manifest.yaml");
    std::fs::read_to_string(p).unwrap()
}

fn errors(text: &str) -> Vec<String> {
    parse_manifest("m.yaml", text)
        .unwrap_err()
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn the_starter_is_valid() {
    let m = parse_manifest("m.yaml", &starter()).unwrap();
    assert_eq!(m.version, 1);
    assert_eq!(m.tools.len(), 8);
    assert_eq!(m.upstreams.len(), 1);
    assert_eq!(m.agents.len(), 2);
}

#[test]
fn tool_names_cannot_alias_tier_groups() {
    let text = starter().replace("name: fs.read_file", "name: \"tier:low\"");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(&format!(
            "m.yaml:{}: tools[0].name",
            line_of(&text, "tier:low\"")
        )),
        "{e:?}"
    );
    assert!(e[0].contains("not starting with `tier:`"), "{e:?}");
}

#[test]
fn zone_and_tenant_lists_are_checked() {
    let text = starter().replace("zones: [dev]\n", "zones: [\"*\", moon]\n");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|e| e.contains("tools[1].zones: `\"*\"` already means every zone")),
        "{e:?}"
    );
    let text = starter().replace("    zones: [dev]\n", "    zones: [dev]\n    tenants: []\n");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|e| e.contains("tools[1].tenants: an empty list makes the tool unusable")),
        "{e:?}"
    );
    let text = starter().replace(
        "    zones: [dev]\n",
        "    zones: [dev]\n    tenants: [globex]\n",
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|e| e.contains("tools[1].tenants[0]: unknown tenant `globex` (known: `acme`)")),
        "{e:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = starter()
        .replace("version: 1", "version: 0")
        .replace("secrets: [GITHUB_TOKEN]", "secrets: [ghp_secret_value]")
        .replace(
            "egress: [api.github.com]",
            "egress: [\"https://api.github.com/x\"]",
        )
        .replace("repeat_pattern: 3", "repeat_pattern: 1")
        .replace("cooldown: 5m", "cooldown: soon")
        .replace(
            "{ name: critical-actions, tiers: [critical], calls: 5/h }",
            "{ name: critical-actions, tiers: [critcal] }",
        )
        .replace(
            "with_approval: [medium, high, critical] }",
            "with_approval: [low] }",
        );
    let e = errors(&text);
    let expect = [
        ("version: 0", "version: must be 1 or more"),
        (
            "ghp_secret_value",
            "tools[1].secrets[0]: secret name `ghp_secret_value` must be UPPER_SNAKE_CASE",
        ),
        (
            "https://api.github.com/x",
            "tools[1].egress[0]: `https://api.github.com/x` is not a host name",
        ),
        (
            "repeat_pattern: 1",
            "breakers.repeat_pattern: must be 2 or more",
        ),
        ("cooldown: soon", "breakers.cooldown:"),
        (
            "tiers: [critcal]",
            "invariants[0].tiers[0]: unknown tier `critcal`",
        ),
        ("tiers: [critcal]", "invariants[0]: give a cap"),
        (
            "with_approval: [low]",
            "trust.junior.with_approval[0]: tier `low` is listed twice",
        ),
    ];
    for (needle, message) in expect {
        let want = format!("m.yaml:{}: {message}", line_of(&text, needle));
        assert!(
            e.iter().any(|x| x.starts_with(&want)),
            "missing `{want}` in {e:#?}"
        );
    }
    assert_eq!(e.len(), expect.len(), "{e:#?}");
}

#[test]
fn argument_schemas_must_compile_and_be_objects() {
    let text = starter().replace(
        "        path: { type: string, maxLength: 4096 }",
        "        path: { type: strang }",
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|x| x.contains("tools[0].arguments: not a usable JSON Schema")),
        "{e:?}"
    );
    let text = starter().replacen("      type: object\n", "      type: array\n", 1);
    let e = errors(&text);
    assert!(
        e.iter().any(|x| x
            .contains("tools[0].arguments: the argument schema's root must have `type: object`")),
        "{e:?}"
    );
    // A remote `$ref` is never fetched: it does not load.
    let text = starter().replace(
        "        path: { type: string, maxLength: 4096 }",
        "        path: { $ref: \"https://example.com/schema.json\" }",
    );
    assert!(parse_manifest("m.yaml", &text).is_err());
}

#[test]
fn approvers_are_people_with_their_own_valid_keys() {
    use base64::Engine as _;
    let key = |b: u8| {
        let k = ed25519_dalek::SigningKey::from_bytes(&[b; 32]).verifying_key();
        format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(k.to_bytes())
        )
    };
    let with = |approvers: &str, approvals: &str| {
        starter().replace(
            "approvals:\n  request_ttl_seconds: 900",
            &format!("{approvers}\napprovals:\n  request_ttl_seconds: {approvals}"),
        )
    };
    // A valid pair loads, with roles and keys.
    let ok = with(
        &format!(
            "approvers:\n  - {{ id: alice@acme.example, roles: [planner], key: \"{}\" }}\n  - {{ id: bob@acme.example, key: \"{}\" }}",
            key(1),
            key(2)
        ),
        "900",
    );
    let m = parse_manifest("m.yaml", &ok).unwrap();
    assert_eq!(m.approvers.len(), 2);
    assert!(m.approvers["alice@acme.example"].roles.contains("planner"));
    assert_eq!(m.approvals.request_ttl_secs, 900);
    assert!(m.tiers.iter().any(|t| t.name == "critical" && t.critical));

    // An agent as approver, a shared key, a bad key, a duplicate id, an out-of-range TTL.
    let bad = with(
        &format!(
            "approvers:\n  - {{ id: coder-1, key: \"{}\" }}\n  - {{ id: bob@acme.example, key: \"{}\" }}\n  - {{ id: carol, key: \"{}\" }}\n  - {{ id: dave, key: \"ed25519:AAAA\" }}\n  - {{ id: carol, key: \"{}\" }}",
            key(1),
            key(2),
            key(2),
            key(4)
        ),
        "0",
    );
    let e = errors(&bad).join("\n");
    assert!(
        e.contains("approvers[0].id: `coder-1` is an agent; agents never approve"),
        "{e}"
    );
    assert!(
        e.contains("approvers[2].key: the same key as approver `bob@acme.example`"),
        "{e}"
    );
    assert!(
        e.contains("approvers[3].key: the key is 3 bytes; an Ed25519 public key is 32"),
        "{e}"
    );
    assert!(
        e.contains("approvers[4].id: duplicate approver `carol`"),
        "{e}"
    );
    assert!(
        e.contains("approvals.request_ttl_seconds: 0 is out of range"),
        "{e}"
    );
}

#[test]
fn webhooks_are_checked_at_load() {
    let text = starter()
        + "\nsecrets:\n  HOOK_KEY: { env: HOOK_KEY }\nnotifications:\n  webhooks:\n    - { url: \"https://hooks.slack.com/x\", secret: HOOK_KEY }\n    - { url: \"http://relay:8080/x\", secret: NOPE }\n    - { url: \"http://relay/x\", secret: HOOK_KEY, format: telegram }\n    - { url: \"http://relay/x\", secret: HOOK_KEY, events: [everything] }\n    - { url: \"http://relay:8080/ok\", secret: HOOK_KEY, format: slack }\n    - { url: \"ftp://relay/x\", secret: HOOK_KEY }\n";
    let e = errors(&text).join("\n");
    // https is accepted (TLS verifies the receiver); other schemes are not.
    assert!(!e.contains("webhooks[0]"), "{e}");
    assert!(
        e.contains("webhooks[5].url: `ftp://relay/x` must be an http:// or https:// URL"),
        "{e}"
    );
    assert!(
        e.contains("webhooks[1].secret: `NOPE` is not in `secrets`"),
        "{e}"
    );
    assert!(
        e.contains("webhooks[2].chat_id: a telegram webhook needs `chat_id`"),
        "{e}"
    );
    assert!(
        e.contains("webhooks[3].events: unknown event `everything`"),
        "{e}"
    );
    assert!(!e.contains("webhooks[4]"), "{e}");
}

#[test]
fn sandbox_blocks_are_checked_at_load() {
    let base = starter();
    let with = |block: &str| {
        let t = base.replace(
            "    command: [warden, demo-server]\n    sandbox: { require: [] }\n",
            &format!("    command: [warden, demo-server]\n    sandbox:\n{block}"),
        );
        assert_ne!(t, base);
        t
    };
    // A valid block: defaults filled in, every guarantee required unless listed.
    let m = parse_manifest(
        "m.yaml",
        &with("      read_only: [/opt/tool]\n      egress:\n        allow: [\"api.github.com:443\", \"*.example.com\"]\n        private_networks: [10.0.0.0/8]\n      limits: { memory_mb: 64 }\n      heartbeat: 10s\n"),
    )
    .unwrap();
    let sb = m.upstreams[0].sandbox.as_ref().unwrap();
    assert_eq!(sb.require.len(), 5);
    assert_eq!(sb.memory_bytes, 64 << 20);
    assert_eq!(sb.processes, 128);
    assert_eq!(sb.cpu_millicores, 1_000);
    assert_eq!(sb.workspace_bytes, 256 << 20);
    assert_eq!(sb.heartbeat_ms, 10_000);
    assert_eq!(sb.egress_allow.len(), 2);
    assert!(sb.egress_allow[1].matches("api.example.com", 443));

    let bad = with("      require: [filesystem, network]\n      read_only: [relative/path, /a/../b, /run/docker.sock, /]\n      egress:\n        allow: [\"bad host\", \"h:0\"]\n        private_networks: [10.0.0.0]\n        connections_per_minute: 0\n      limits: { processes: 0, cpu_millicores: 5, workspace_mb: 0 }\n      heartbeat: 0s\n      shell: true\n");
    let e = errors(&bad).join("\n");
    assert!(e.contains("unknown field `shell`"), "{e}");
    let bad = bad.replace("      shell: true\n", "");
    let e = errors(&bad).join("\n");
    for want in [
        "upstreams[0].sandbox.require[1]: `network` is not a guarantee",
        "upstreams[0].sandbox.read_only[0]: `relative/path` must be an absolute path",
        "upstreams[0].sandbox.read_only[1]: `/a/../b` must be an absolute path",
        "upstreams[0].sandbox.read_only[2]: `/run/docker.sock` is under `/run`",
        "upstreams[0].sandbox.read_only[3]: `/` is under `/`",
        "upstreams[0].sandbox.egress.allow[0]: `bad host`",
        "upstreams[0].sandbox.egress.allow[1]: `h:0`: `0` is not a port",
        "upstreams[0].sandbox.egress.private_networks[0]: `10.0.0.0` is not addr/prefix",
        "upstreams[0].sandbox.egress.connections_per_minute: must be at least 1",
        "upstreams[0].sandbox.limits.processes: must be at least 1",
        "upstreams[0].sandbox.limits.cpu_millicores: must be at least 10",
        "upstreams[0].sandbox.limits.workspace_mb: must be at least 1",
        "upstreams[0].sandbox.heartbeat: `0s` must be longer than zero",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
    // Warden does not run a `url` upstream: nothing to sandbox.
    let remote = base.replace(
        "    command: [warden, demo-server]\n    sandbox: { require: [] }\n",
        "    url: http://127.0.0.1:9/mcp\n    sandbox: {}\n",
    );
    let e = errors(&remote).join("\n");
    assert!(
        e.contains("upstreams[0].sandbox: a sandbox applies to `command` upstreams"),
        "{e}"
    );
}

#[test]
fn process_tools_are_checked_at_load() {
    let base = starter();
    let with = |block: &str| {
        let t = base.replacen("\nupstreams:\n", &format!("\nupstreams:\n{block}"), 1);
        assert_ne!(t, base);
        t
    };
    let good = with("  - name: proc\n    process:\n      wc: { program: /usr/bin/wc, args: [\"-l\", \"{path}\"] }\n    sandbox: { read_only: [/opt/x] }\n");
    let m = parse_manifest("m.yaml", &good).unwrap();
    let up = m.upstreams.iter().find(|u| u.name == "proc").unwrap();
    match &up.transport {
        warden_manifest::upstream::Transport::Stdio { program, args } => {
            assert_eq!(program, "warden");
            assert_eq!(args[0], "process-server");
        }
        other => panic!("{other:?}"),
    }
    // The program is part of the sandbox's read-only view.
    let sb = up.sandbox.as_ref().unwrap();
    assert!(sb.read_only.contains(&"/usr/bin/wc".to_owned()));

    let bad = with("  - name: proc\n    process:\n      wc: { program: wc, args: [\"{Path}\", \"{\"] }\n      \"bad name\": { program: /bin/true }\n      sock: { program: /run/docker.sock }\n");
    let e = errors(&bad).join("\n");
    for want in [
        "upstreams[0].process: process tools run only in a sandbox",
        "upstreams[0].process.wc.program: `wc` must be an absolute path",
        "upstreams[0].process.wc.args[0]: `{Path}`: `{Path}` is not a parameter",
        "upstreams[0].process.wc.args[1]: `{`: a `{` without its `}`",
        "upstreams[0].process.bad name: tool name `bad name`",
        "upstreams[0].process.sock.program: `/run/docker.sock` is under `/run`",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
    let both = with("  - name: proc\n    command: [x]\n    process:\n      wc: { program: /usr/bin/wc }\n    sandbox: {}\n");
    let e = errors(&both).join("\n");
    assert!(
        e.contains("give exactly one of `command` (stdio), `url` (Streamable HTTP) and `process`"),
        "{e}"
    );
}

#[test]
fn command_servers_are_sandboxed_unless_the_manifest_says_why_not() {
    let base = starter();
    let plain = base.replace(
        "    command: [warden, demo-server]\n    sandbox: { require: [] }\n",
        "    command: [warden, demo-server]\n",
    );
    assert_ne!(plain, base);
    // No block: the default sandbox, every guarantee required.
    let m = parse_manifest("m.yaml", &plain).unwrap();
    let sb = m.upstreams[0].sandbox.as_ref().unwrap();
    assert_eq!(sb.require.len(), 5);
    assert!(sb.egress_allow.is_empty());
    // Opting out takes a reason.
    let out = plain.replace(
        "    command: [warden, demo-server]\n",
        "    command: [warden, demo-server]\n    unsandboxed: \"vendor binary needs /dev/kvm\"\n",
    );
    let m = parse_manifest("m.yaml", &out).unwrap();
    assert!(m.upstreams[0].sandbox.is_none());
    assert_eq!(
        m.upstreams[0].unsandboxed.as_deref(),
        Some("vendor binary needs /dev/kvm")
    );
    let e = errors(&out.replace("\"vendor binary needs /dev/kvm\"", "\"  \"")).join("\n");
    assert!(e.contains("upstreams[0].unsandboxed: say why"), "{e}");
    let both = base.replace(
        "    sandbox: { require: [] }\n",
        "    sandbox: { require: [] }\n    unsandboxed: why\n",
    );
    let e = errors(&both).join("\n");
    assert!(
        e.contains("upstreams[0].unsandboxed: only a `command` upstream without a `sandbox` block"),
        "{e}"
    );
}

#[test]
fn secret_sources_name_exactly_one_place() {
    let ok =
        starter() + "\nsecrets:\n  A_KEY: { keyring: \"warden:A_KEY\" }\n  B_KEY: { env: B }\n";
    let m = parse_manifest("m.yaml", &ok).unwrap();
    assert_eq!(
        m.secrets.get("A_KEY"),
        Some(&warden_manifest::upstream::SecretSource::Keyring(
            "warden:A_KEY".into()
        ))
    );
    let bad = starter()
        + "\nsecrets:\n  A_KEY: { keyring: \"warden:A\", env: A }\n  B_KEY: {}\n  C_KEY: { keyring: \"\" }\n";
    let e = errors(&bad).join("\n");
    assert!(
        e.contains("secrets.A_KEY: give exactly one of `env`, `file` and `keyring`"),
        "{e}"
    );
    assert!(
        e.contains("secrets.B_KEY: give exactly one of `env`, `file` and `keyring`"),
        "{e}"
    );
    assert!(
        e.contains("secrets.C_KEY.keyring: must be non-empty"),
        "{e}"
    );
}

/// The starter with `block` appended (resource and prompt entries of its `demo` upstream).
fn starter_with(block: &str) -> String {
    format!("{}\n{block}", starter())
}

#[test]
fn resource_and_prompt_entries_join_the_tools_with_their_kind() {
    let text = starter_with(
        "resources:\n  - { name: demo.docs, uris: [\"demo://docs/*\", \"demo://readme\"], tier: low, zones: [\"*\"] }\n\
         prompts:\n  - { name: demo.greet, tier: low, zones: [\"*\"], arguments: { type: object, properties: { who: { type: string } } } }\n",
    );
    let m = parse_manifest("m.yaml", &text).unwrap();
    let docs = &m.tools["demo.docs"];
    assert_eq!(docs.kind, warden_core::ActionKind::Resource);
    assert!(docs.admits_uri("demo://docs/a.md") && docs.admits_uri("demo://readme"));
    assert!(!docs.admits_uri("demo://docs/../secret") && !docs.admits_uri("demo://other"));
    assert_eq!(m.tools["demo.greet"].kind, warden_core::ActionKind::Prompt);
    assert_eq!(m.tools["fs.read_file"].kind, warden_core::ActionKind::Tool);
}

#[test]
fn resource_and_prompt_entries_are_checked_where_they_are_written() {
    let text = starter_with(
        "resources:\n\
         \x20 - { name: nowhere.docs, uris: [\"demo://docs/*\"], tier: low, zones: [\"*\"] }\n\
         \x20 - { name: demo.bad, uris: [\"demo://a/*/b\", \"noscheme\"], tier: low, zones: [\"*\"] }\n\
         \x20 - { name: demo.none, uris: [], tier: low, zones: [\"*\"] }\n\
         \x20 - { name: demo.dup, uris: [\"demo://x\"], tier: low, zones: [\"*\"] }\n\
         prompts:\n\
         \x20 - { name: greet, tier: low, zones: [\"*\"] }\n\
         \x20 - { name: demo.greet, tier: nosuch, zones: [\"*\"] }\n\
         \x20 - { name: demo.dup, tier: low, zones: [\"*\"] }\n",
    );
    let e = errors(&text).join("\n");
    for expected in [
        "resources[0].name: `nowhere.docs` must be `<upstream>.<name>`",
        "resources[1].uris[0]: `demo://a/*/b`: `*` may only end a pattern",
        "resources[1].uris[1]: `noscheme`: a URI pattern starts with its scheme",
        "resources[2].uris: list the URIs it admits",
        "prompts[2].name: `demo.dup` is already a tool, resource or prompt entry",
        "prompts[0].name: `greet` must be `<upstream>.<name>`",
        "prompts[1].tier: unknown tier `nosuch`",
    ] {
        assert!(e.contains(expected), "{expected}\n{e}");
    }
}

#[test]
fn a_uri_belongs_to_one_entry() {
    let text = starter()
        .replace(
            "upstreams:\n  - name: demo\n",
            "upstreams:\n  - name: other\n    command: [warden, demo-server]\n    sandbox: { require: [] }\n  - name: demo\n",
        );
    let text = format!(
        "{text}\nresources:\n  - {{ name: demo.all, uris: [\"demo://*\"], tier: low, zones: [\"*\"] }}\n  - {{ name: other.docs, uris: [\"demo://docs/*\"], tier: low, zones: [\"*\"] }}\n  - {{ name: demo.more, uris: [\"demo://docs/x\"], tier: low, zones: [\"*\"] }}\n  - {{ name: demo.spaced, uris: [\"other://a/*\", \"other://a/b\"], tier: low, zones: [\"*\"] }}\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:?}");
    // Across upstreams (which would be read?) and within one (which entry would decide?).
    assert!(
        e[0].contains(
            "resources[1].uris: `demo://docs/*` admits URIs that resources[0] admits too"
        ),
        "{e:?}"
    );
    assert!(
        e[1].contains(
            "resources[2].uris: `demo://docs/x` admits URIs that resources[0] admits too"
        ),
        "{e:?}"
    );
    assert!(
        e[2].contains(
            "resources[2].uris: `demo://docs/x` admits URIs that resources[1] admits too"
        ),
        "{e:?}"
    );
}
