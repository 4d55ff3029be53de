//! The `SessionDirectory` port's conformance suite (issue 22): every backend publishes, finds,
//! keeps alive, forgets and ends MCP sessions alike.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

mod common;

use std::time::Duration;
use warden_core::sessions::{SessionDirectory, SessionEntry};
use warden_state::{MemorySessions, RedisSessions};

fn entry(credential: &str) -> SessionEntry {
    SessionEntry {
        credential: credential.into(),
        agent: "coder-1".into(),
        credentials: vec!["root".into(), credential.into()],
        agents: vec!["alice".into(), "coder-1".into()],
        client: Some(serde_json::json!({"sampling": {}, "roots": {"listChanged": true}})),
    }
}

fn suite(d: &dyn SessionDirectory) {
    let minute = Duration::from_secs(60);
    assert_eq!(d.lookup("s-1").unwrap(), None);
    d.publish("s-1", &entry("cred-1"), minute).unwrap();
    d.publish("s-2", &entry("cred-2"), minute).unwrap();
    assert_eq!(d.lookup("s-1").unwrap(), Some(entry("cred-1")));
    assert_eq!(d.lookup("s-2").unwrap(), Some(entry("cred-2")));
    // A client that declared nothing is kept as declaring nothing.
    let bare = SessionEntry {
        client: None,
        ..entry("cred-5")
    };
    d.publish("s-5", &bare, minute).unwrap();
    assert_eq!(d.lookup("s-5").unwrap(), Some(bare));
    // Ended for everyone; ending it again, or one never published, is no error.
    d.end("s-1").unwrap();
    assert_eq!(d.lookup("s-1").unwrap(), None);
    d.end("s-1").unwrap();
    d.end("never").unwrap();
    // Forgotten after its idle time, unless touched.
    let short = Duration::from_millis(300);
    d.publish("s-3", &entry("cred-3"), short).unwrap();
    d.publish("s-4", &entry("cred-4"), short).unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        assert!(d.touch("s-3", short).unwrap());
    }
    assert_eq!(d.lookup("s-3").unwrap(), Some(entry("cred-3")));
    assert_eq!(d.lookup("s-4").unwrap(), None);
    // Touching what is gone (forgotten or ended) does not bring it back, and says so.
    assert!(!d.touch("s-4", minute).unwrap());
    assert_eq!(d.lookup("s-4").unwrap(), None);
    assert!(!d.touch("s-1", minute).unwrap());
    // Ids no client may send are never looked up.
    for bad in ["", "a b", "new\nline", &"x".repeat(129)] {
        assert_eq!(d.lookup(bad).unwrap(), None, "{bad:?}");
        assert_eq!(d.instance(bad).unwrap(), None, "{bad:?}");
    }
    // Instances: where each takes forwarded requests, forgotten unless published again.
    assert_eq!(d.instance("i-1").unwrap(), None);
    d.publish_instance("i-1", "http://10.0.0.1:8700/mcp", minute)
        .unwrap();
    d.publish_instance("i-2", "http://10.0.0.2:8700/mcp", short)
        .unwrap();
    assert_eq!(
        d.instance("i-1").unwrap().as_deref(),
        Some("http://10.0.0.1:8700/mcp")
    );
    d.publish_instance("i-1", "http://10.0.0.9:8700/mcp", minute)
        .unwrap();
    assert_eq!(
        d.instance("i-1").unwrap().as_deref(),
        Some("http://10.0.0.9:8700/mcp"),
        "published again: the newer URL"
    );
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(d.instance("i-2").unwrap(), None, "forgotten after its ttl");
    assert_eq!(
        d.lookup("i-1").unwrap(),
        None,
        "an instance is not a session"
    );
    // Which instance's call waits for a session's reply to a request: one instance at a time
    // per request id, the first to reserve it until its wait gives it up (or its ttl passes);
    // a later wait of the same instance takes it over, and an earlier wait's release leaves
    // the later one's alone.
    assert_eq!(d.waiting("s-2", "0").unwrap(), None);
    assert!(d.note_waiting("s-2", "0", "i-1", 1, minute).unwrap());
    assert!(
        d.note_waiting("s-2", "0", "i-1", 2, minute).unwrap(),
        "a later wait of i-1"
    );
    assert!(
        !d.note_waiting("s-2", "0", "i-3", 1, minute).unwrap(),
        "held by i-1"
    );
    assert!(
        d.note_waiting("s-2", "1", "i-3", 1, minute).unwrap(),
        "another id"
    );
    assert!(
        d.note_waiting("s-5", "0", "i-3", 1, minute).unwrap(),
        "another session"
    );
    assert_eq!(d.waiting("s-2", "0").unwrap().as_deref(), Some("i-1"));
    assert_eq!(d.waiting("s-2", "1").unwrap().as_deref(), Some("i-3"));
    d.forget_waiting("s-2", "0", "i-1", 1).unwrap();
    assert_eq!(
        d.waiting("s-2", "0").unwrap().as_deref(),
        Some("i-1"),
        "the earlier wait's"
    );
    d.forget_waiting("s-2", "0", "i-3", 2).unwrap();
    assert_eq!(
        d.waiting("s-2", "0").unwrap().as_deref(),
        Some("i-1"),
        "not i-3's"
    );
    d.forget_waiting("s-2", "0", "i-1", 2).unwrap();
    assert_eq!(d.waiting("s-2", "0").unwrap(), None);
    assert!(
        d.note_waiting("s-2", "0", "i-3", 4, minute).unwrap(),
        "free again"
    );
    assert!(d.note_waiting("s-6", "\"x\"", "i-1", 1, short).unwrap());
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(
        d.waiting("s-6", "\"x\"").unwrap(),
        None,
        "forgotten after its ttl"
    );
    assert!(
        d.note_waiting("s-6", "\"x\"", "i-3", 1, short).unwrap(),
        "free after its ttl"
    );
    assert_eq!(d.waiting("a b", "0").unwrap(), None);
    assert_eq!(d.waiting("s-2", "a b").unwrap(), None);
}

#[test]
fn session_directory_suite_in_process() {
    suite(&MemorySessions::new());
}

#[test]
fn session_directory_suite_on_redis() {
    let Some((url, prefix)) = common::redis_place("sessions") else {
        return;
    };
    suite(&RedisSessions::new(&url, &prefix).unwrap());
    // Two instances on one prefix are one directory.
    let (a, b) = (
        RedisSessions::new(&url, &format!("{prefix}2:")).unwrap(),
        RedisSessions::new(&url, &format!("{prefix}2:")).unwrap(),
    );
    a.publish("s", &entry("cred"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(b.lookup("s").unwrap(), Some(entry("cred")));
    b.end("s").unwrap();
    assert_eq!(a.lookup("s").unwrap(), None);
}

#[test]
fn what_warden_did_not_write_is_an_error_never_a_session() {
    let Some((url, prefix)) = common::redis_place("sessions") else {
        return;
    };
    let d = RedisSessions::new(&url, &prefix).unwrap();
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let key = format!("{prefix}mcp-session:s");
    for garbage in ["not json", r#"{"credential":"c","agent":"a","extra":1}"#] {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(garbage)
            .query(&mut c)
            .unwrap();
        let e = d.lookup("s").unwrap_err().to_string();
        assert!(e.contains("not one Warden wrote"), "{e}");
    }
    let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&key)
        .arg("x")
        .query(&mut c)
        .unwrap();
    assert!(d.lookup("s").is_err());
    let down = RedisSessions::new("redis://127.0.0.1:1/", &prefix).unwrap();
    assert!(down.lookup("s").is_err());
    assert!(down
        .publish("s", &entry("c"), Duration::from_secs(1))
        .is_err());
}
