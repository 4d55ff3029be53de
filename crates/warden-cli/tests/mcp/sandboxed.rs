//! A sandboxed upstream end to end (issue 6): `warden serve` starts the manifest's stdio server
//! through the sandbox, the MCP Python SDK calls it through the governed path, the receipt names
//! the sandbox profile; a server that stops answering its heartbeat has its whole tree killed
//! (and is started afresh by the next call); the kill switch ends the tree too. Both recorded.

use super::super::{text, warden};
use super::{call, enroll, env, first_text, ledger_tail, operator, start_existing};
use std::time::{Duration, Instant};

/// Processes in upstream `name`'s sandbox cgroups of the gateway `s` started
/// (`upstream-NAME-PID-N`, PID the gateway's, one per launch): never another Warden's, nor
/// another test's.
fn in_sandbox(s: &super::Server, name: &str) -> Vec<i32> {
    let needle = format!("/warden/upstream-{name}-{}-", s.child.id());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&needle))
        })
        // A zombie has been killed and only waits to be reaped.
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
        })
        .collect()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The starter with `tools` and `upstreams` YAML lines added (and `edit` applied), `agents`
/// enrolled, served. `None` (after a notice) where the end-to-end or sandbox tests skip.
fn serve_with(
    dir: &std::path::Path,
    tools: &str,
    upstreams: &str,
    edit: impl Fn(String) -> String,
    agents: &[&str],
) -> Option<(super::Env, super::Server)> {
    let e = env()?;
    super::super::sandbox::host()?;
    let (data, m) = super::approvals::setup(dir);
    let text_m = std::fs::read_to_string(&m).unwrap();
    let with = edit(
        text_m
            .replacen("\ntools:\n", &format!("\ntools:\n{tools}"), 1)
            .replacen("\nupstreams:\n", &format!("\nupstreams:\n{upstreams}"), 1),
    );
    std::fs::write(&m, with).unwrap();
    for a in agents {
        enroll(&data, &m, a);
    }
    let s = start_existing(dir, &data, &m);
    Some((e, s))
}

/// The cgroups (one per runner launch) of upstream `name`'s live processes under gateway `s`.
fn trees(s: &super::Server, name: &str) -> std::collections::BTreeSet<String> {
    in_sandbox(s, name)
        .into_iter()
        .filter_map(|pid| {
            let c = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            c.lines()
                .find_map(|l| l.split_once("/warden/").map(|(_, g)| g.to_owned()))
        })
        .collect()
}

#[test]
fn a_sandboxed_upstream_serves_is_watched_and_dies_with_the_kill_switch() {
    let Some(e) = env() else { return };
    if super::super::sandbox::host().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = super::approvals::setup(dir.path());
    let text_m = std::fs::read_to_string(&m).unwrap();
    let sandboxed = text_m.replace(
        "    command: [warden, demo-server]\n    sandbox: { require: [] }\n",
        "    command: [warden, demo-server]\n    sandbox:\n      limits: { memory_mb: 256, processes: 32 }\n      heartbeat: 2s\n",
    );
    assert_ne!(sandboxed, text_m);
    std::fs::write(&m, sandboxed).unwrap();
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);
    let echo = |t: &str| {
        call(
            &e,
            &s,
            "ops-1",
            "demo.echo",
            &format!(r#"{{"text": "{t}"}}"#),
        )
    };

    assert_eq!(first_text(&echo("inside")), "inside");
    let first = in_sandbox(&s, "demo");
    assert!(!first.is_empty(), "the server is not in its sandbox cgroup");
    let tail = ledger_tail(&s.data, 4);
    assert!(
        tail.contains("warden-sandbox/bwrap+landlock+seccomp; required: filesystem,egress,privilege,limits,kill"),
        "{tail}"
    );

    // Heartbeat: a server that stops answering (SIGSTOP) is killed, whole tree, and recorded.
    for pid in &first {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
    }
    wait_until("the heartbeat kill", Duration::from_secs(20), || {
        in_sandbox(&s, "demo").is_empty()
    });
    assert!(ledger_tail(&s.data, 10).contains("sandbox.lost"));
    // The next call starts a fresh server in a fresh sandbox.
    let start = Instant::now();
    loop {
        let r = echo("again");
        if first_text(&r) == "again" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let second = in_sandbox(&s, "demo");
    assert!(!second.is_empty());
    assert!(second.iter().all(|p| !first.contains(p)));

    // The kill switch ends the whole tree at once.
    let out = warden(&[
        "kill",
        "--data",
        s.data.to_str().unwrap(),
        "--admin",
        &s.admin,
        "--reason",
        "sandbox test",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the kill switch's kill", Duration::from_secs(5), || {
        in_sandbox(&s, "demo").is_empty()
    });
    assert!(ledger_tail(&s.data, 10).contains("sandbox.killed"));
}

#[test]
fn process_tools_run_fixed_programs_with_arguments_never_a_shell_inside_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let Some((e, s)) = serve_with(
        dir.path(),
        "  - { name: proc.echo, tier: low, zones: [\"*\"], arguments: { type: object, properties: { text: { type: string } }, required: [text], additionalProperties: false } }\n  - { name: proc.head, tier: low, zones: [\"*\"], arguments: { type: object, properties: { path: { type: string } }, required: [path], additionalProperties: false } }\n  - { name: proc.env, tier: low, zones: [\"*\"], arguments: { type: object, additionalProperties: false } }\n",
        "  - name: proc\n    process:\n      echo: { program: /usr/bin/echo, args: [\"{text}\"], description: prints its text }\n      head: { program: /usr/bin/head, args: [\"-c\", \"64\", \"{path}\"] }\n      env: { program: /usr/bin/env }\n    sandbox:\n      limits: { memory_mb: 128 }\n",
        |m| m,
        &["ops-1"],
    ) else {
        return;
    };

    // The argument is one argv element: shell syntax is just text.
    let hostile = "a; rm -rf / $(id) `id` | cat";
    let r = call(
        &e,
        &s,
        "ops-1",
        "proc.echo",
        &serde_json::json!({ "text": hostile }).to_string(),
    );
    assert_eq!(first_text(&r), format!("{hostile}\n"), "{r}");
    // The program runs in the sandbox: the host's /etc/shadow is not in its view.
    let r = call(&e, &s, "ops-1", "proc.head", r#"{"path": "/etc/shadow"}"#);
    assert_eq!(r["isError"], true, "{r}");
    assert!(first_text(&r).contains("No such file"), "{r}");
    // A value standing alone cannot become an option.
    let r = call(&e, &s, "ops-1", "proc.head", r#"{"path": "--version"}"#);
    assert_eq!(r["isError"], true, "{r}");
    assert!(first_text(&r).contains("starts with `-`"), "{r}");
    // Nothing of the gateway's environment describes the host inside (issue 18): a fixed
    // PATH of the view's directories, its workspace as home, no user name.
    let r = call(&e, &s, "ops-1", "proc.env", "{}");
    let env = first_text(&r);
    assert!(
        env.lines()
            .any(|l| l == "PATH=/usr/local/bin:/usr/bin:/bin"),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "TMPDIR=/tmp"), "{env}");
    assert!(!env.lines().any(|l| l.starts_with("USER=")), "{env}");
    let tail = ledger_tail(&s.data, 8);
    assert!(tail.contains("warden-sandbox/bwrap"), "{tail}");
    assert!(!in_sandbox(&s, "proc").is_empty());
}

/// Runner directories of upstream `name` under a data directory.
fn runners(data: &std::path::Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("sandbox").join(name))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The manifest `m` with a second tenant, `globex`, and its agent `g-1`.
fn with_globex(m: String) -> String {
    m.replacen("  - id: acme\n", "  - id: acme\n  - id: globex\n", 1)
        .replacen(
            "\nagents:\n",
            "\nagents:\n  - { id: g-1, tenant: globex, owner: gina@globex.example, zone: prod, trust: senior }\n",
            1,
        )
}

#[test]
fn each_tenant_gets_its_own_runner_and_a_lockdown_ends_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let Some((e, s)) = serve_with(
        dir.path(),
        "  - { name: proc.touch, tier: low, zones: [\"*\"], arguments: { type: object, properties: { name: { type: string } }, required: [name], additionalProperties: false } }\n  - { name: proc.ls, tier: low, zones: [\"*\"], arguments: { type: object, properties: { dir: { type: string } }, required: [dir], additionalProperties: false } }\n",
        "  - name: proc\n    process:\n      touch: { program: /usr/bin/touch, args: [\"{name}\"] }\n      ls: { program: /usr/bin/ls, args: [\"-1\", \"{dir}\"] }\n    sandbox:\n      limits: { memory_mb: 128 }\n",
        with_globex,
        &["ops-1", "g-1"],
    ) else {
        return;
    };

    let r = call(&e, &s, "ops-1", "proc.touch", r#"{"name": "acme-only"}"#);
    assert_ne!(r["isError"], true, "{r}");
    let acme = first_text(&call(&e, &s, "ops-1", "proc.ls", r#"{"dir": "."}"#));
    assert!(acme.contains("acme-only"), "{acme}");
    // Another tenant: another process, another workspace; the first one's is not in its view.
    let globex = first_text(&call(&e, &s, "g-1", "proc.ls", r#"{"dir": "."}"#));
    assert!(!globex.contains("acme-only"), "{globex}");
    let dirs = runners(&s.data, "proc");
    let tenants: Vec<&String> = dirs.iter().filter(|d| d.starts_with("tenant-")).collect();
    assert_eq!(tenants.len(), 2, "{dirs:?}");
    // Each workspace is a private filesystem in its runner's view (issue 18: bounded as a
    // whole): at its path, each tenant sees its own and nothing of the other's.
    let ls = |agent: &str, path: &std::path::Path| {
        call(
            &e,
            &s,
            agent,
            "proc.ls",
            &serde_json::json!({ "dir": path.to_str().unwrap() }).to_string(),
        )
    };
    let paths: Vec<_> = tenants
        .iter()
        .map(|t| s.data.join("sandbox/proc").join(t).join("work"))
        .collect();
    let acme_seen: Vec<_> = paths.iter().map(|p| ls("ops-1", p)).collect();
    let acme_own: Vec<usize> = (0..paths.len())
        .filter(|i| first_text(&acme_seen[*i]).contains("acme-only"))
        .collect();
    assert_eq!(acme_own.len(), 1, "{acme_seen:?}");
    for (i, p) in paths.iter().enumerate() {
        let by_acme = &acme_seen[i];
        let by_globex = ls("g-1", p);
        if i == acme_own[0] {
            assert!(
                first_text(&by_globex).contains("No such file"),
                "{by_globex}"
            );
        } else {
            assert!(first_text(by_acme).contains("No such file"), "{by_acme}");
            assert_ne!(by_globex["isError"], true, "{by_globex}");
        }
        // Nothing of either reached the host's disk.
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0, "{}", p.display());
    }
    // Its own pid namespace: the host's (and the other tenant's) processes are not there to
    // see or signal.
    let numeric = |text: &str| text.lines().filter(|l| l.parse::<u32>().is_ok()).count();
    let host_procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
        })
        .count();
    let seen = first_text(&call(&e, &s, "g-1", "proc.ls", r#"{"dir": "/proc"}"#));
    assert!(numeric(&seen) <= 8, "{seen}");
    assert!(
        host_procs > numeric(&seen),
        "{host_procs} on the host\n{seen}"
    );
    let before = trees(&s, "proc");
    assert!(before.len() >= 2, "one cgroup per runner: {before:?}");

    // A lockdown of acme ends acme's runner only.
    let out = operator(&s, &["lockdown", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let start = Instant::now();
    while !ledger_tail(&s.data, 10).contains("sandbox.killed") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "acme's runner was not killed: {}\n{}",
            ledger_tail(&s.data, 10),
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = trees(&s, "proc");
    assert_eq!(after.len(), before.len() - 1, "{before:?} → {after:?}");
    let globex = first_text(&call(&e, &s, "g-1", "proc.ls", r#"{"dir": "."}"#));
    assert!(!globex.contains("acme-only"), "{globex}");
}

/// Lists come from the process that serves the caller: with one demo process per tenant, each
/// tenant's list of prompts is its own process's (the `runner` prompt says which process), the
/// same on every list, and a get is served by that process too.
#[test]
fn a_sandboxed_upstreams_lists_come_from_the_callers_own_runner() {
    let dir = tempfile::tempdir().unwrap();
    let Some((e, s)) = serve_with(
        dir.path(),
        "",
        "",
        |m| {
            let m = with_globex(m).replacen(
                "    command: [warden, demo-server]\n    sandbox: { require: [] }\n",
                "    command: [warden, demo-server]\n    sandbox: { require: [], runner: tenant }\n",
                1,
            );
            m + "\nprompts:\n  - { name: demo.runner, tier: low, zones: [\"*\"] }\n"
        },
        &["ops-1", "g-1"],
    ) else {
        return;
    };
    let listed = |agent: &str| {
        let r = super::client(&e, &s, agent, &["prompt-list"]);
        r["prompts"]["demo.runner"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    };
    let acme = listed("ops-1");
    assert!(acme.starts_with("served by demo process "), "{acme}");
    let globex = listed("g-1");
    assert_ne!(acme, globex, "each tenant lists from its own process");
    assert_eq!(listed("ops-1"), acme, "and from the same one each time");
    let got = super::client(&e, &s, "ops-1", &["prompt", "demo.runner", "{}"]);
    assert_eq!(
        got["result"]["messages"][0]["content"]["text"], acme,
        "{got}"
    );
    let dirs = runners(&s.data, "demo");
    assert_eq!(
        dirs.iter().filter(|d| d.starts_with("tenant-")).count(),
        2,
        "{dirs:?}"
    );
}

#[test]
fn a_session_runner_ends_with_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mut e, s)) = serve_with(
        dir.path(),
        "  - { name: proc.pwd, tier: low, zones: [\"*\"], arguments: { type: object, properties: {}, additionalProperties: false } }\n",
        "  - name: proc\n    process:\n      pwd: { program: /usr/bin/pwd }\n    sandbox:\n      runner: session\n",
        |m| m,
        &["ops-1"],
    ) else {
        return;
    };
    // An MCP session is what the `initialize` handshake opens: revision 2026-07-28 has none
    // (its calls share their credential's runner, reaped when idle; docs/sandbox.md).
    e.mode = "legacy";
    let sessions = || {
        runners(&s.data, "proc")
            .into_iter()
            .filter(|d| d.starts_with("session-"))
            .count()
    };
    // The client opens a session, calls, and closes it (DELETE) when it exits.
    let r = call(&e, &s, "ops-1", "proc.pwd", "{}");
    assert_ne!(r["isError"], true, "{r}");
    // It ran in its session's own workspace.
    let workspace = std::path::PathBuf::from(first_text(&r).trim());
    assert!(
        workspace.starts_with(s.data.join("sandbox/proc"))
            && workspace.to_str().unwrap().contains("/session-"),
        "{workspace:?}"
    );
    // The call ran in a runner of that session; with the session, its runner, tree and
    // workspace are gone.
    wait_until("the session runner's end", Duration::from_secs(15), || {
        sessions() == 0 && !workspace.exists()
    });
    let trees = trees(&s, "proc");
    // Only the runner that lists tools is left.
    assert!(trees.len() <= 1, "{trees:?}");
}

/// A one-page HTTP server on loopback, answering every request with `body`; its port.
fn page_server(body: &'static str) -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_sandboxed_upstream_reaches_only_its_allowed_hosts_from_a_long_data_directory() {
    // A data directory as deep as a real one: the runner's egress socket lies beyond the 107
    // bytes a socket address can hold.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("x".repeat(60)).join("y".repeat(40));
    std::fs::create_dir_all(&dir).unwrap();
    let port = page_server("hello from the allowed host");
    let Some((e, s)) = serve_with(
        &dir,
        "  - { name: web.fetch, tier: low, zones: [\"*\"], arguments: { type: object, properties: { url: { type: string } }, required: [url], additionalProperties: false } }\n",
        &format!(
            "  - name: web\n    process:\n      fetch: {{ program: /usr/bin/curl, args: [\"-sSf\", \"--max-time\", \"10\", \"{{url}}\"] }}\n    sandbox:\n      egress:\n        allow: [\"127.0.0.1:{port}\", \"169.254.169.254\"]\n        private_networks: [127.0.0.1/32]\n"
        ),
        |m| m,
        &["ops-1"],
    ) else {
        return;
    };
    assert!(s.data.to_str().unwrap().len() > 100);
    let fetch = |url: &str| {
        call(
            &e,
            &s,
            "ops-1",
            "web.fetch",
            &serde_json::json!({ "url": url }).to_string(),
        )
    };

    // The allowed host, through the proxy.
    let r = fetch(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(first_text(&r), "hello from the allowed host", "{r}");
    // A host not on the list.
    let r = fetch("http://example.com/");
    assert_eq!(r["isError"], true, "{r}");
    // The metadata address, although listed: not public, and not among the private networks.
    let r = fetch("http://169.254.169.254/latest/meta-data/");
    assert_eq!(r["isError"], true, "{r}");
    // The loopback server is reachable only through the proxy: another port of it is not.
    let r = fetch(&format!("http://127.0.0.1:{}/", port ^ 1));
    assert_eq!(r["isError"], true, "{r}");

    let tail = ledger_tail(&s.data, 30);
    assert!(
        tail.contains(&format!("127.0.0.1:{port}")) && tail.contains("egress.allowed"),
        "{tail}"
    );
    // Attributed (issue 18): to the tenant its runner serves (one runner per tenant here).
    let allowed = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| e["entry"].clone())
        .find(|e| e["kind"] == "egress.allowed")
        .unwrap();
    assert_eq!(allowed["tenant"], "acme", "{allowed}");
    // ... and to the call it served then: the decision of the first `web.fetch` has that
    // request id.
    let id = allowed["request_id"].as_str().unwrap();
    assert!(!id.is_empty(), "{allowed}\n{tail}");
    let decided = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| e["entry"].clone())
        .find(|e| e["type"] == "decision" && e["request_id"] == id)
        .unwrap_or_else(|| panic!("no decision with request id {id}: {tail}"));
    assert_eq!(decided["tool"], "web.fetch", "{decided}");
    // Counted for /metrics (issue 24): one connection let through, three refused, the server
    // launched in its sandbox.
    let (_, metrics) = super::metrics::get(&s.admin, "/metrics");
    let n = |series: &str| super::metrics::sample(&metrics, series).unwrap_or(-1.0);
    assert!(
        n("warden_egress_connections_total{outcome=\"allowed\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        n("warden_egress_connections_total{outcome=\"refused\"}") >= 3.0,
        "{metrics}"
    );
    assert!(
        n("warden_sandbox_launches_total{outcome=\"started\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        tail.contains("`example.com:80` is not on the egress allowlist"),
        "{tail}"
    );
    assert!(tail.contains("resolves to 169.254.169.254"), "{tail}");
}
