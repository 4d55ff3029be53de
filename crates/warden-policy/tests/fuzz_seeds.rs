//! Replays the fuzz seed corpus (`fuzz/seeds/`) through the fuzz entry points, plus generated
//! hostile inputs: none may panic or hang.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    // Every prefix of every seed: truncated input.
    let truncated: Vec<Vec<u8>> = out
        .iter()
        .flat_map(|s| (0..s.len()).step_by(7).map(move |n| s[..n].to_vec()))
        .collect();
    out.extend(truncated);
    out
}

#[test]
fn manifest_seeds_never_panic() {
    for s in seeds("manifest") {
        warden_policy::fuzz::manifest(&s);
    }
    // Deep nesting and an alias bomb.
    warden_policy::fuzz::manifest(b"a: ");
    let deep = format!("version: {}1{}", "[".repeat(50_000), "]".repeat(50_000));
    warden_policy::fuzz::manifest(deep.as_bytes());
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("a{}", i - 1)
        };
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    warden_policy::fuzz::manifest(bomb.as_bytes());
}

#[test]
fn proposal_seeds_never_panic() {
    for s in seeds("proposal") {
        warden_policy::fuzz::proposal(&s);
    }
}

#[test]
fn traceparent_seeds_never_panic_and_what_parses_prints_back() {
    let mut parsed = 0;
    for s in seeds("traceparent") {
        if let Some(t) = warden_core::trace::TraceParent::parse(&String::from_utf8_lossy(&s)) {
            assert_eq!(
                warden_core::trace::TraceParent::parse(&t.to_string()),
                Some(t)
            );
            parsed += 1;
        }
    }
    // Both whole seeds are valid (of their truncations, only a later version's may be).
    assert!(parsed >= 2, "{parsed}");
}

#[test]
fn flow_seeds_never_panic() {
    for s in seeds("flow") {
        warden_policy::fuzz::flow(&s);
    }
    // Hostile shapes: separators only, one huge identifier, endless groups, odd Unicode.
    let long = |unit: &str, n: usize| unit.repeat(n);
    for text in [
        long(".", 100_000),
        long("@", 100_000),
        long("a.", 50_000) + "com",
        long("DE89 ", 20_000),
        long("+1 ", 50_000),
        long("x@y.", 30_000),
        long("https://", 10_000),
        long("\u{202e}İ\u{0307}ß.", 10_000),
        long("www.a.com.B", 10_000),
    ] {
        warden_policy::fuzz::flow(text.as_bytes());
    }
    warden_policy::fuzz::flow(&[0xff, 0xfe, b'@', 0x80, b'.', b'c', b'o']);
}

#[test]
fn broken_manifests_get_errors_that_name_the_problem() {
    let deep = format!("version: {}1{}", "[".repeat(50_000), "]".repeat(50_000));
    let e = warden_policy::parse_manifest("m.yaml", &deep)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("m.yaml:"), "{e}");
    assert!(
        e.contains("deeper than 64 levels") || e.contains("recursion limit"),
        "{e}"
    );
    let e = warden_policy::parse_manifest("m.yaml", "version: 1\nrisk_tiers: [")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("m.yaml:"), "{e}");
    let big = "#".repeat(5 << 20);
    let e = warden_policy::parse_manifest("m.yaml", &big)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn resource_uri_seeds_never_panic_and_no_pattern_admits_what_climbs_out() {
    let mut admitted = 0;
    for s in seeds("resource_uri") {
        admitted += usize::from(warden_policy::fuzz::resource_uri(&s));
    }
    // The whole admitted and exact seeds (and some of their truncations) are admitted.
    assert!(admitted >= 2, "{admitted}");
    // Hostile spellings under a prefix: none admitted.
    for uri in [
        "docs/../x",
        "docs/%2e%2e/x",
        "docs/%252e%252e/x",
        "docs/..;/x",
        "docs/.%2e/x",
        "docs/\u{ff0e}\u{ff0e}/x",
        "docs/a\\..\\x",
        "docs//x",
    ] {
        let input = format!("demo://d/docs/*\ndemo://d/{uri}");
        assert!(
            !warden_policy::fuzz::resource_uri(input.as_bytes()),
            "{uri}"
        );
    }
}
