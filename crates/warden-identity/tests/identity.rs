//! Grants and credentials end to end. Grants: forged, expired, replayed, cross-session and stale grants are refused;
//! a grant in flight across a manifest change is not honored without a new decision.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use proptest::prelude::*;
use std::sync::{Arc, RwLock};
use warden_identity::{Call, GrantError, GrantKeys, MemoryReplayGuard};
use zeroize::Zeroizing;

const NOW: i64 = 1_795_341_600_000;

fn call<'a>(session: &'a str, args: &'a str) -> Call<'a> {
    Call {
        session,
        agent: "coder-1",
        tool: "fs.read_file",
        arguments_hash: args,
    }
}

fn keys(byte: u8) -> GrantKeys {
    GrantKeys::new(1, vec![(1, Zeroizing::new([byte; 32]))]).unwrap()
}

/// The ledger these tests record their decisions in (one per test run, under the target
/// directory): a grant is minted only from a recorded allow.
fn ledger() -> &'static warden_ledger::Ledger {
    static LEDGER: std::sync::OnceLock<(tempfile::TempDir, warden_ledger::Ledger)> =
        std::sync::OnceLock::new();
    &LEDGER
        .get_or_init(|| {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let store =
                warden_ledger::FileStore::open(dir.path(), warden_ledger::Mode::Write).unwrap();
            let signer = warden_ledger::NoteSigner::generate("warden.test/grants").unwrap();
            let ledger =
                warden_ledger::Ledger::open(Box::new(store), signer, Default::default()).unwrap();
            (dir, ledger)
        })
        .1
}

/// `c` decided `verdict` under manifest `version`, recorded.
fn recorded(c: &Call<'_>, version: u64, verdict: warden_core::Verdict) -> warden_ledger::Recorded {
    let d = warden_core::Decision {
        decision: verdict,
        rules: vec!["tier.low.auto".into()],
        policies: Vec::new(),
        reason: String::new(),
        manifest_version: version,
        policy_hash: String::new(),
        escalation: None,
        agent: c.agent.into(),
        owner: String::new(),
        tenant: String::new(),
        session: c.session.into(),
        tool: c.tool.into(),
        operation: warden_core::Operation::Use,
        arguments_hash: c.arguments_hash.into(),
        decided_at: 0,
        provenance: Vec::new(),
        budget_use: Vec::new(),
    };
    ledger()
        .record_decision_blocking(d, "", "test", Vec::new())
        .unwrap()
}

/// A grant for `c`, allowed under `version` and recorded, made with `k`.
fn mint(
    k: &GrantKeys,
    c: &Call<'_>,
    version: u64,
    now: i64,
    ttl: i64,
) -> Result<String, GrantError> {
    k.mint(&recorded(c, version, warden_core::Verdict::Allow), now, ttl)
}

#[test]
fn only_a_recorded_allow_is_granted() {
    let k = keys(1);
    let c = call("s1", "sha256:aa");
    for verdict in [warden_core::Verdict::Deny, warden_core::Verdict::Escalate] {
        assert_eq!(
            k.mint(&recorded(&c, 3, verdict), NOW, 30_000),
            Err(GrantError::Mint("the recorded decision is not an allow"))
        );
    }
    // The grant is for exactly the call and version recorded.
    let r = recorded(&c, 3, warden_core::Verdict::Allow);
    let t = k.mint(&r, NOW, 30_000).unwrap();
    let guard = MemoryReplayGuard::new();
    assert!(k.redeem(&t, &c, 3, NOW, &guard).is_ok());
    assert!(r.index() < ledger().size().unwrap());
}

#[test]
fn a_grant_runs_exactly_its_call_once() {
    let k = keys(1);
    let guard = MemoryReplayGuard::new();
    let c = call("s1", "sha256:aa");
    let t = mint(&k, &c, 3, NOW, 30_000).unwrap();
    let claims = k.redeem(&t, &c, 3, NOW + 10, &guard).unwrap();
    assert_eq!(claims.session, "s1");
    assert_eq!(claims.id_hex().len(), 32);
    // Replayed.
    assert_eq!(
        k.redeem(&t, &c, 3, NOW + 20, &guard),
        Err(GrantError::Replayed)
    );
}

#[test]
fn wrong_call_expired_forged_and_stale_grants_are_refused() {
    let k = keys(1);
    let guard = MemoryReplayGuard::new();
    let c = call("s1", "sha256:aa");
    let t = mint(&k, &c, 3, NOW, 30_000).unwrap();
    // Another session, other arguments, another agent or tool.
    assert_eq!(
        k.redeem(&t, &call("s2", "sha256:aa"), 3, NOW, &guard),
        Err(GrantError::WrongCall { field: "session" })
    );
    assert_eq!(
        k.redeem(&t, &call("s1", "sha256:bb"), 3, NOW, &guard),
        Err(GrantError::WrongCall { field: "arguments" })
    );
    let other_tool = Call {
        tool: "db.drop_table",
        ..c.clone()
    };
    assert_eq!(
        k.redeem(&t, &other_tool, 3, NOW, &guard),
        Err(GrantError::WrongCall { field: "tool" })
    );
    // Expired.
    assert!(matches!(
        k.redeem(&t, &c, 3, NOW + 30_000, &guard),
        Err(GrantError::Expired { .. })
    ));
    // Made under another key (forged).
    assert_eq!(
        keys(2).redeem(&t, &c, 3, NOW, &guard),
        Err(GrantError::BadMac)
    );
    // The manifest moved on: decide again.
    assert_eq!(
        k.redeem(&t, &c, 4, NOW, &guard),
        Err(GrantError::ManifestChanged {
            granted: 3,
            current: 4
        })
    );
    // None of the refusals consumed it: the right call still redeems once.
    assert!(k.redeem(&t, &c, 3, NOW, &guard).is_ok());
    // Garbage.
    for junk in ["", "x", "!!!", &"A".repeat(5000)] {
        assert!(
            matches!(k.open(junk), Err(GrantError::Malformed(_))),
            "{junk}"
        );
    }
}

#[test]
fn rotated_keys_still_verify_old_grants() {
    let old = Zeroizing::new([1u8; 32]);
    let new = Zeroizing::new([2u8; 32]);
    let before = GrantKeys::new(1, vec![(1, old.clone())]).unwrap();
    let after = GrantKeys::new(2, vec![(1, old), (2, new)]).unwrap();
    let c = call("s", "sha256:aa");
    let t_old = mint(&before, &c, 1, NOW, 30_000).unwrap();
    let t_new = mint(&after, &c, 1, NOW, 30_000).unwrap();
    assert_eq!(after.open(&t_old).unwrap().key_id, 1);
    assert_eq!(after.open(&t_new).unwrap().key_id, 2);
    assert_eq!(before.open(&t_new), Err(GrantError::UnknownKey(2)));
    // Key bytes are never printed.
    assert!(!format!("{after:?}").contains("2, 2, 2"));
}

proptest! {
    /// Changing any byte of a token makes it refused: nothing in it is believed before the MAC.
    #[test]
    fn any_altered_byte_is_refused(pos in any::<usize>(), flip in 1u8..=255) {
        let k = keys(1);
        let c = call("session-1", "sha256:0123");
        let t = mint(&k, &c, 9, NOW, 30_000).unwrap();
        let mut raw = B64.decode(&t).unwrap();
        let i = pos % raw.len();
        raw[i] ^= flip;
        let altered = B64.encode(&raw);
        prop_assert!(k.open(&altered).is_err());
    }
}

/// A tool's tier is raised while a grant for it is in flight. The Executor reads the manifest
/// version current at redemption (swapped atomically on another thread); the old grant is not
/// honored, and the call must be decided again under the new version.
#[test]
fn manifest_change_races_a_grant_in_flight() {
    for round in 0..200u32 {
        let manifest = Arc::new(RwLock::new(1u64));
        let k = Arc::new(keys(3));
        let guard = Arc::new(MemoryReplayGuard::new());
        let args = format!("sha256:{round:08x}");
        // Governor: decided under v1 (low tier, allowed) and minted.
        let token = mint(&k, &call("s", &args), 1, NOW, 30_000).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (m2, b2) = (Arc::clone(&manifest), Arc::clone(&barrier));
        let swapper = std::thread::spawn(move || {
            b2.wait();
            // The new manifest (tool raised to critical) is swapped in whole.
            *m2.write().unwrap() = 2;
        });
        let (m3, k3, g3, b3) = (
            Arc::clone(&manifest),
            Arc::clone(&k),
            Arc::clone(&guard),
            Arc::clone(&barrier),
        );
        let executor = std::thread::spawn(move || {
            b3.wait();
            let current = *m3.read().unwrap();
            (
                current,
                k3.redeem(&token, &call("s", &args), current, NOW + 1, &*g3),
            )
        });
        swapper.join().unwrap();
        let (seen, outcome) = executor.join().unwrap();
        match seen {
            // The executor read the version before the swap: the grant was still current then.
            1 => assert!(outcome.is_ok(), "round {round}: {outcome:?}"),
            // After the swap: never honored without re-decision.
            _ => assert_eq!(
                outcome,
                Err(GrantError::ManifestChanged {
                    granted: 1,
                    current: 2
                }),
                "round {round}"
            ),
        }
    }
}

#[test]
fn replay_guard_forgets_only_expired_ids() {
    use warden_identity::ReplayGuard as _;
    let g = MemoryReplayGuard::new();
    g.consume(&[1; 16], NOW + 100, NOW).unwrap();
    assert!(g.consume(&[1; 16], NOW + 100, NOW + 50).is_err());
    // Well after expiry the id is swept (and a token carrying it is refused as expired anyway).
    let mut other = [1u8; 16];
    other[1] = 2; // same shard
    g.consume(&other, NOW + 5_000, NOW + 2_000).unwrap();
    assert_eq!(g.len(), 1);
}

#[test]
fn fuzz_entry_never_panics() {
    let k = GrantKeys::new(1, vec![(1, Zeroizing::new([7u8; 32]))]).unwrap();
    let t = mint(&k, &call("s", "sha256:aa"), 1, NOW, 1).unwrap();
    for cut in 0..=t.len() {
        warden_identity::fuzz::grant(&t.as_bytes()[..cut]);
    }
    warden_identity::fuzz::grant(&[0xff, 0xfe]);
    warden_identity::fuzz::grant("A".repeat(100_000).as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Credentials and delegation.

use ed25519_dalek::SigningKey;
use std::collections::{BTreeSet, HashMap};
use warden_identity::credential::{encode_key, random_id};
use warden_identity::{Credential, CredentialBody, CredentialError, Revocations, Verifier};

const T: i64 = 1_795_341_600;

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}

fn body(
    agent: &str,
    trust: &str,
    tools: Option<&[&str]>,
    expires_at: i64,
    subject: &SigningKey,
) -> CredentialBody {
    CredentialBody {
        id: random_id().unwrap(),
        agent: agent.into(),
        tenant: "acme".into(),
        owner: "alice@acme.example".into(),
        zone: "dev".into(),
        trust: trust.into(),
        tools: tools.map(|t| t.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()),
        expires_at,
        manifest_version: 1,
        subject_key: encode_key(&subject.verifying_key()),
        issuer: String::new(),
    }
}

struct Setup {
    governor: SigningKey,
    verifier: Verifier,
    revocations: Arc<Revocations>,
    root: Credential,
    root_key: SigningKey,
}

fn setup() -> Setup {
    let governor = key(1);
    let revocations = Arc::new(Revocations::new());
    let keys: HashMap<String, _> = [("g1".to_string(), governor.verifying_key())].into();
    let verifier = Verifier::new(keys, Arc::clone(&revocations));
    let root_key = key(2);
    let root = Credential::issue(
        &governor,
        "g1",
        body(
            "coder-1",
            "senior",
            Some(&["fs.read_file", "github.create_issue"]),
            T + 3600,
            &root_key,
        ),
    )
    .unwrap();
    Setup {
        governor,
        verifier,
        revocations,
        root,
        root_key,
    }
}

/// `coder-1.sub`, a junior sub-agent of the root credential limited to `fs.read_file`.
fn junior_sub(s: &Setup, sub_key: &SigningKey) -> Credential {
    s.root
        .derive(
            &s.root_key,
            body(
                "coder-1.sub",
                "junior",
                Some(&["fs.read_file"]),
                T + 600,
                sub_key,
            ),
        )
        .unwrap()
}

#[test]
fn enrolled_and_delegated_credentials_trace_back_to_one_human() {
    let s = setup();
    let id = s
        .verifier
        .verify_token(&s.root.to_token().unwrap(), T)
        .unwrap();
    assert_eq!(
        (id.agent.as_str(), id.owner.as_str()),
        ("coder-1", "alice@acme.example")
    );
    assert_eq!(id.chain, vec!["coder-1"]);
    let sub_key = key(3);
    let sub = junior_sub(&s, &sub_key);
    let id = s
        .verifier
        .verify_token(&sub.to_token().unwrap(), T)
        .unwrap();
    assert_eq!(id.chain, vec!["coder-1", "coder-1.sub"]);
    assert_eq!(id.owner, "alice@acme.example");
    assert_eq!(id.trust, "junior");
    // A third level, narrower still.
    let leaf = sub
        .derive(
            &sub_key,
            body(
                "coder-1.sub.leaf",
                "intern",
                Some(&["fs.read_file"]),
                T + 60,
                &key(4),
            ),
        )
        .unwrap();
    let id = s
        .verifier
        .verify_token(&leaf.to_token().unwrap(), T)
        .unwrap();
    assert_eq!(id.chain.len(), 3);
    assert_eq!(id.expires_at, T + 60);
}

#[test]
fn delegation_that_widens_rights_is_rejected() {
    let s = setup();
    let k = key(3);
    let sub = "coder-1.sub";
    let tools = Some(&["fs.read_file"][..]);
    let cases: Vec<(CredentialBody, &str)> = vec![
        (body(sub, "principal", tools, T + 60, &k), "trust"),
        (
            body(sub, "junior", Some(&["db.drop_table"]), T + 60, &k),
            "db.drop_table",
        ),
        (body(sub, "junior", None, T + 60, &k), "every tool"),
        (body(sub, "junior", tools, T + 7200, &k), "expires after"),
        (
            CredentialBody {
                owner: "mallory@evil.example".into(),
                ..body(sub, "junior", tools, T + 60, &k)
            },
            "owner",
        ),
        // Naming an agent outside its own namespace (impersonation).
        (
            body("ops-1", "intern", tools, T + 60, &k),
            "sub-agent must be named",
        ),
        (
            body("coder-1", "intern", tools, T + 60, &k),
            "sub-agent must be named",
        ),
    ];
    for (b, what) in cases {
        let err = s.root.derive(&s.root_key, b.clone()).unwrap_err();
        assert!(
            matches!(err, CredentialError::Widens { .. }) && err.to_string().contains(what),
            "{err}"
        );
        // Hand-built (bypassing `derive`), the chain is still refused at verification.
        let mut forged = s
            .root
            .derive(&s.root_key, body(sub, "intern", tools, T + 60, &k))
            .unwrap();
        forged.body = CredentialBody {
            issuer: s.root.body.id.clone(),
            ..b
        };
        let err = s.verifier.verify(&forged, T).unwrap_err();
        assert!(
            matches!(
                err,
                CredentialError::Widens { .. } | CredentialError::BadSignature { .. }
            ),
            "{err}"
        );
    }
    // Only the holder of the parent's key can delegate.
    assert!(s
        .root
        .derive(&key(9), body(sub, "intern", None, T + 60, &k))
        .is_err());
    // A hand-built delegation reusing someone else's credential id is refused, so revoking an
    // id only ever hits the credential (and descendants) it was derived for.
    let mut reused = s
        .root
        .derive(&s.root_key, body(sub, "intern", tools, T + 60, &k))
        .unwrap();
    reused.body.id = s.root.body.id.clone();
    assert!(s.verifier.verify(&reused, T).is_err());
}

#[test]
fn forged_expired_and_unknown_issuer_credentials_are_refused() {
    let s = setup();
    // Altered after signing.
    let mut altered = s.root.clone();
    altered.body.trust = "principal".into();
    assert!(matches!(
        s.verifier.verify(&altered, T),
        Err(CredentialError::BadSignature { .. })
    ));
    // Signed by a key that is not the Governor's.
    let rogue = Credential::issue(
        &key(8),
        "g1",
        body("coder-1", "senior", None, T + 60, &key(2)),
    )
    .unwrap();
    assert!(matches!(
        s.verifier.verify(&rogue, T),
        Err(CredentialError::BadSignature { .. })
    ));
    let unknown = Credential::issue(
        &s.governor,
        "g9",
        body("coder-1", "senior", None, T + 60, &key(2)),
    )
    .unwrap();
    assert!(matches!(
        s.verifier.verify(&unknown, T),
        Err(CredentialError::UnknownIssuer { .. })
    ));
    // Expired.
    assert!(matches!(
        s.verifier.verify(&s.root, T + 3600),
        Err(CredentialError::Expired { .. })
    ));
    // Garbage tokens.
    for junk in ["", "e30", "!!", &"A".repeat(20_000)] {
        assert!(s.verifier.verify_token(junk, T).is_err(), "{junk}");
    }
}

#[test]
fn revocation_reaches_derived_credentials_even_when_cached() {
    let s = setup();
    let sub_key = key(3);
    let sub = junior_sub(&s, &sub_key);
    let token = sub.to_token().unwrap();
    s.verifier.verify_token(&token, T).unwrap(); // now cached
    s.revocations.revoke_agent("coder-1");
    let err = s.verifier.verify_token(&token, T).unwrap_err();
    assert!(
        matches!(err, CredentialError::Revoked { .. }) && err.to_string().contains("coder-1"),
        "{err}"
    );
    // Revoking one credential id also reaches its descendants.
    let s = setup();
    let sub = junior_sub(&s, &sub_key);
    // A verified identity names its whole chain, which is what a session held open on it is
    // checked against later (`Revocations::revokes`).
    let who = s.verifier.verify(&sub, T).unwrap();
    assert_eq!(
        who.credentials,
        vec![s.root.body.id.clone(), sub.body.id.clone()]
    );
    assert_eq!(who.credentials.len(), who.chain.len());
    assert!(!s.revocations.revokes(&who.credentials, &who.chain));
    s.revocations.revoke_credential(&s.root.body.id);
    assert!(matches!(
        s.verifier.verify(&sub, T),
        Err(CredentialError::Revoked { .. })
    ));
    assert!(s.revocations.revokes(&who.credentials, &who.chain));
    let fresh = Revocations::new();
    fresh.revoke_agent(&who.chain[0]);
    assert!(fresh.revokes(&who.credentials, &who.chain));
    assert!(!fresh.revokes(&[], &[]));
}

#[test]
fn credential_fuzz_entry_never_panics() {
    let s = setup();
    let t = s.root.to_token().unwrap();
    for cut in (0..=t.len()).step_by(3) {
        warden_identity::fuzz::credential(&t.as_bytes()[..cut]);
    }
    // Deep nesting of parents.
    let deep = format!("{}{}", "{\"parent\":".repeat(5000), "}".repeat(5000));
    warden_identity::fuzz::credential(B64.encode(deep).as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Signed requests (RFC 9421).

#[test]
fn signed_requests_verify_once_within_the_window() {
    use warden_identity::request::{sign, verify, RequestError};
    let k = key(5);
    let vk = k.verifying_key();
    let guard = MemoryReplayGuard::new();
    let body = br#"{"agent":"a"}"#;
    let (d, i, s) = sign(&k, "cred-1", "POST", "/v1/proposals", body, T, "nonce-1");
    let check = |d: &str, i: &str, s: &str, body: &[u8], now: i64, kid: &str| {
        verify(
            &vk,
            kid,
            "POST",
            "/v1/proposals",
            body,
            Some(d),
            Some(i),
            Some(s),
            now,
            &guard,
        )
    };
    assert!(check(&d, &i, &s, body, T + 10, "cred-1").is_ok());
    assert_eq!(
        check(&d, &i, &s, body, T + 10, "cred-1"),
        Err(RequestError::Replayed)
    );
    let (d, i, s) = sign(&k, "cred-1", "POST", "/v1/proposals", body, T, "nonce-2");
    assert_eq!(
        check(&d, &i, &s, b"{}", T, "cred-1"),
        Err(RequestError::DigestMismatch)
    );
    assert!(matches!(
        check(&d, &i, &s, body, T + 301, "cred-1"),
        Err(RequestError::Stale { .. })
    ));
    assert_eq!(
        check(&d, &i, &s, body, T, "cred-2"),
        Err(RequestError::WrongKey)
    );
    // Another path or method was not what was signed.
    assert_eq!(
        verify(
            &vk,
            "cred-1",
            "POST",
            "/v1/decide",
            body,
            Some(&d),
            Some(&i),
            Some(&s),
            T,
            &guard
        ),
        Err(RequestError::BadSignature)
    );
    // Malformed headers are named, never a panic.
    for bad in [
        "",
        "sig1=",
        "sig1=(\"@method\")",
        "sig2=(\"@method\" \"@path\" \"content-digest\");created=1",
    ] {
        assert!(
            matches!(
                check(&d, bad, &s, body, T, "cred-1"),
                Err(RequestError::Header { .. })
            ),
            "{bad}"
        );
    }
    assert!(check(&d, &i, "sig1=:AAAA:", body, T, "cred-1").is_err());
    // Nothing refused above consumed nonce-2: it still verifies once.
    assert!(check(&d, &i, &s, body, T, "cred-1").is_ok());
}

// ---------------------------------------------------------------------------------------------
// Session lineage.

#[test]
fn lineage_binds_session_agent_chain_and_owner() {
    use warden_identity::lineage::{issue, LineageClaims, LineageError, LineageVerifier};
    let g = key(1);
    let v = LineageVerifier::new(g.verifying_key());
    let claims = LineageClaims {
        session: "s".into(),
        agent: "coder-1.sub".into(),
        owner: "alice@acme.example".into(),
        chain: vec!["coder-1".into(), "coder-1.sub".into()],
        credential: "c1".into(),
        expires_at: T + 60,
    };
    let token = issue(&g, &claims).unwrap();
    assert_eq!(v.verify(&token, T).unwrap(), claims);
    assert_eq!(v.verify(&token, T).unwrap(), claims); // cached
    assert_eq!(v.verify(&token, T + 60), Err(LineageError::Expired));
    assert!(claims.hash().unwrap().starts_with("sha256:"));
    // Not the Governor's key, or altered claims: refused.
    let rogue = issue(&key(2), &claims).unwrap();
    assert_eq!(v.verify(&rogue, T), Err(LineageError::BadSignature));
    let (body, sig) = token.split_once('.').unwrap();
    let mut raw = B64.decode(body).unwrap();
    let pos = raw.iter().position(|b| *b == b's').unwrap();
    raw[pos] = b't';
    let altered = format!("{}.{sig}", B64.encode(raw));
    assert_eq!(v.verify(&altered, T), Err(LineageError::BadSignature));
    for junk in ["", ".", "a.b", &"x".repeat(10_000)] {
        assert!(v.verify(junk, T).is_err(), "{junk}");
    }
    // The fuzz entry point over truncations of a real token and real headers.
    let (_, input, sig) =
        warden_identity::request::sign(&g, "cred", "POST", "/v1/proposals", b"{}", T, "n");
    let headers = format!("{input}\n{sig}");
    for text in [token.as_str(), headers.as_str()] {
        for cut in 0..=text.len() {
            warden_identity::fuzz::lineage_and_request(&text.as_bytes()[..cut]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replay guards: one suite, in process and shared through Redis.

fn replay_suite(
    a: &dyn warden_identity::ReplayGuard,
    b: &dyn warden_identity::ReplayGuard,
    salt: u8,
) {
    use warden_identity::ReplayError;
    let id = |n: u8| {
        let mut x = [salt; 16];
        x[15] = n;
        x
    };
    a.consume(&id(1), NOW + 30_000, NOW).unwrap();
    assert_eq!(
        a.consume(&id(1), NOW + 30_000, NOW + 1),
        Err(ReplayError::Seen)
    );
    // The second guard (another instance, when shared) sees it too.
    assert_eq!(
        b.consume(&id(1), NOW + 30_000, NOW + 1),
        Err(ReplayError::Seen)
    );
    b.consume(&id(2), NOW + 30_000, NOW).unwrap();
    // Racing instances: exactly one accepts each id.
    let wins = std::thread::scope(|s| {
        let h: Vec<_> = (0..8u8)
            .map(|t| {
                s.spawn(move || {
                    let g = if t % 2 == 0 { a } else { b };
                    (0..20u8)
                        .filter(|n| g.consume(&id(100 + n), NOW + 30_000, NOW).is_ok())
                        .count()
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    assert_eq!(wins, 20);
}

#[test]
fn replay_guard_suite_in_process() {
    let g = MemoryReplayGuard::new();
    replay_suite(&g, &g, 1);
}

#[test]
fn replay_guard_suite_redis() {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is unset; skipping the Redis replay-guard test");
        return;
    };
    // A prefix per run keeps runs apart on a shared Redis (the clock's nanoseconds: a later
    // run that reuses this PID never meets this run's ids).
    let prefix = format!(
        "warden-test:{}:{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let salt = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 251) as u8;
    let a = warden_identity::RedisReplayGuard::new(&url, &prefix).unwrap();
    let b = warden_identity::RedisReplayGuard::new(&url, &prefix).unwrap();
    replay_suite(&a, &b, salt);
    // Redis unreachable: refused, never accepted (fail closed).
    use warden_identity::ReplayGuard as _;
    let down = warden_identity::RedisReplayGuard::new("redis://127.0.0.1:1/", "x:").unwrap();
    assert!(matches!(
        down.consume(&[9; 16], NOW + 1000, NOW),
        Err(warden_identity::ReplayError::Unavailable(_))
    ));
}

/// A Redis that restarts closes the connection the guard kept: the next grant is consumed on a
/// new connection rather than refused, and an id consumed before the restart stays consumed
/// (the guard's own `redis-server`, its data in an append-only file, killed and started again).
#[test]
fn the_redis_replay_guard_reconnects_after_its_redis_restarts() {
    use warden_identity::ReplayGuard as _;
    let Some(mut redis) = warden_testkit::OwnRedis::start("the replay guard's restart test") else {
        return;
    };
    let guard = warden_identity::RedisReplayGuard::new(&redis.url(), "t:").unwrap();
    guard.consume(&[1; 16], NOW + 60_000, NOW).unwrap();
    redis.restart();
    guard.consume(&[2; 16], NOW + 60_000, NOW).unwrap();
    assert!(matches!(
        guard.consume(&[1; 16], NOW + 60_000, NOW),
        Err(warden_identity::ReplayError::Seen)
    ));
}

// ---------------------------------------------------------------------------------------------
// Fuzz seeds (`fuzz/seeds/{grant,credential,lineage_request}`), replayed with truncations;
// `WARDEN_WRITE_FUZZ_SEEDS=1` regenerates them with the fixed keys the fuzz entry points use.

fn seed_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target)
}

#[test]
fn identity_fuzz_seeds_replay() {
    if std::env::var_os("WARDEN_WRITE_FUZZ_SEEDS").is_some() {
        let w = |t: &str, n: &str, b: &[u8]| {
            std::fs::create_dir_all(seed_dir(t)).unwrap();
            std::fs::write(seed_dir(t).join(n), b).unwrap();
        };
        let gk = GrantKeys::new(1, vec![(1, Zeroizing::new([7u8; 32]))]).unwrap();
        w(
            "grant",
            "grant.txt",
            mint(&gk, &call("s", "sha256:aa"), 1, NOW, 30_000)
                .unwrap()
                .as_bytes(),
        );
        let g = key(7);
        let root_key = key(2);
        let root = Credential::issue(
            &g,
            "g1",
            body(
                "coder-1",
                "senior",
                Some(&["fs.read_file"]),
                T + 3600,
                &root_key,
            ),
        )
        .unwrap();
        w(
            "credential",
            "root.txt",
            root.to_token().unwrap().as_bytes(),
        );
        let sub = root
            .derive(
                &root_key,
                body(
                    "coder-1.sub",
                    "junior",
                    Some(&["fs.read_file"]),
                    T + 60,
                    &key(3),
                ),
            )
            .unwrap();
        w(
            "credential",
            "delegated.txt",
            sub.to_token().unwrap().as_bytes(),
        );
        let claims = warden_identity::lineage::LineageClaims {
            session: "s".into(),
            agent: "coder-1".into(),
            owner: "alice@acme.example".into(),
            chain: vec!["coder-1".into()],
            credential: "c".into(),
            expires_at: T + 60,
        };
        w(
            "lineage_request",
            "lineage.txt",
            warden_identity::lineage::issue(&g, &claims)
                .unwrap()
                .as_bytes(),
        );
        let (_, input, sig) =
            warden_identity::request::sign(&g, "cred", "POST", "/v1/proposals", b"{}", T, "n");
        w(
            "lineage_request",
            "headers.txt",
            format!("{input}\n{sig}").as_bytes(),
        );
    }
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 3] = [
        ("grant", warden_identity::fuzz::grant),
        ("credential", warden_identity::fuzz::credential),
        (
            "lineage_request",
            warden_identity::fuzz::lineage_and_request,
        ),
    ];
    for (t, run) in targets {
        let mut n = 0;
        for e in std::fs::read_dir(seed_dir(t)).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            for cut in (0..=bytes.len()).step_by(3) {
                run(&bytes[..cut]);
            }
            n += 1;
        }
        assert!(n > 0, "no seeds for {t}");
    }
}
