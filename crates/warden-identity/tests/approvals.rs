//! One conformance suite for the approval store port ([`ApprovalStore`]), run against every
//! implementation: `Book` (in process) today; a shared store joins with one more `suite!` line.
//! Approvals: issue 7, and the approval half of issue 4's replay protection.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

/// The suite, instantiated for the store `$make(settings)` builds.
macro_rules! suite {
    ($name:ident, $make:expr) => {
        mod $name {
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use warden_identity::approval::{
        sign, ApprovalError, ApprovalStore, Approver, Binding, Request, Requirement, Settings,
        Status, Verdict,
    };

    const T: i64 = 1_795_341_600_000;

    pub(crate) fn key(name: &str) -> SigningKey {
        let mut seed = [0u8; 32];
        for (i, b) in name.bytes().enumerate() {
            seed[i % 32] ^= b;
        }
        seed[31] ^= 0x5a;
        SigningKey::from_bytes(&seed)
    }

    /// alice owns the agent; bob and carol hold `ops`; dave holds nothing.
    pub(crate) fn approvers() -> HashMap<String, Approver> {
        [
            ("alice", &["ops"][..]),
            ("bob", &["ops"][..]),
            ("carol", &["ops"][..]),
            ("dave", &[][..]),
            ("coder-2", &["ops"][..]),
        ]
        .into_iter()
        .map(|(id, roles)| {
            (
                id.to_owned(),
                Approver {
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                    key: key(id).verifying_key(),
                },
            )
        })
        .collect()
    }

    pub(crate) fn is_agent(id: &str) -> bool {
        id.starts_with("coder-")
    }

    pub(crate) fn binding(args: &str) -> Binding {
        Binding {
            agent: "coder-1".into(),
            tenant: "acme".into(),
            owner: "alice".into(),
            session: "s1".into(),
            tool: "deploy.prod".into(),
            arguments_hash: args.into(),
            manifest_version: 3,
        }
    }

    /// A fresh store of the implementation under test (`None`: its service is not configured).
    fn book() -> Option<Box<dyn ApprovalStore>> {
        let settings = Settings {
            request_ttl_ms: 60_000,
            redeem_ttl_ms: 10_000,
            max_open_per_agent: 3,
            vote_window_ms: 30_000,
        };
        $make(settings)
    }

    fn open(b: &dyn ApprovalStore, req: Requirement, critical: bool) -> Request {
        b.open(&binding("h1"), req, critical, serde_json::Value::Null, T)
            .unwrap()
            .0
    }

    /// Votes and, as the gateway does once the vote is recorded, commits it.
    fn cast(b: &dyn ApprovalStore, r: &Request, who: &str, v: Verdict) -> Result<Status, ApprovalError> {
        let vote = sign(&key(who), r, v, who, T).unwrap();
        b.vote(&vote, &approvers(), &is_agent, T)?;
        Ok(b.commit(&r.id, &vote.nonce, T).unwrap().status)
    }

    const HUMANS1: Requirement = Requirement::Humans { approvers: 1 };
    const HUMANS2: Requirement = Requirement::Humans { approvers: 2 };

    #[test]
    fn two_distinct_approvers_approve_exactly_that_call_once() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, Requirement::Humans { approvers: 2 }, false);
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Pending));
        // The same approver twice does not make two.
        assert!(matches!(
            cast(b, &r, "bob", Verdict::Approve),
            Err(ApprovalError::AlreadyVoted { .. })
        ));
        assert_eq!(
            b.redeem(&binding("h1"), None, &HUMANS2, false, T),
            Ok(None),
            "not approved yet"
        );
        assert_eq!(
            cast(b, &r, "carol", Verdict::Approve),
            Ok(Status::Approved)
        );
        // Another call (other arguments) cannot use it, named or not.
        assert!(matches!(
            b.redeem(&binding("h2"), Some(&r.id), &HUMANS2, false, T),
            Err(ApprovalError::OtherCall {
                field: "arguments",
                ..
            })
        ));
        assert_eq!(b.redeem(&binding("h2"), None, &HUMANS2, false, T), Ok(None));
        let used = b
            .redeem(&binding("h1"), Some(&r.id), &HUMANS2, false, T)
            .unwrap()
            .unwrap();
        assert_eq!(used.approved_by(), vec!["bob", "carol"]);
        // Once.
        assert_eq!(b.redeem(&binding("h1"), None, &HUMANS2, false, T), Ok(None));
        assert!(matches!(
            b.redeem(&binding("h1"), Some(&r.id), &HUMANS2, false, T),
            Err(ApprovalError::NotApproved {
                status: Status::Used,
                ..
            })
        ));
    }

    /// A client that reconnects (a new MCP session) redeems the approval of its call, once;
    /// asking again from the new session joins the open request instead of opening another.
    #[test]
    fn an_approval_is_redeemed_from_any_session_of_its_agent_once() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, HUMANS1, false);
        let elsewhere = Binding {
            session: "s2".into(),
            ..binding("h1")
        };
        let (joined, new) = b
            .open(&elsewhere, HUMANS1, false, serde_json::Value::Null, T)
            .unwrap();
        assert_eq!((joined.id.as_str(), new), (r.id.as_str(), false));
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Approved));
        let used = b.redeem(&elsewhere, None, &HUMANS1, false, T).unwrap();
        assert_eq!(used.map(|u| u.id), Some(r.id.clone()));
        // Once, whichever session asks.
        assert_eq!(b.redeem(&binding("h1"), None, &HUMANS1, false, T), Ok(None));
        assert!(matches!(
            b.redeem(&binding("h1"), Some(&r.id), &HUMANS1, false, T),
            Err(ApprovalError::NotApproved {
                status: Status::Used,
                ..
            })
        ));
        // Another agent's session cannot: the agent is part of the call.
        let r = open(b, HUMANS1, false);
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Approved));
        let other_agent = Binding {
            agent: "coder-3".into(),
            ..binding("h1")
        };
        assert!(matches!(
            b.redeem(&other_agent, Some(&r.id), &HUMANS1, false, T),
            Err(ApprovalError::OtherCall { field: "agent", .. })
        ));
    }

    /// `claim`: what the book holds for a call about to be decided. An approved request is
    /// held for one call at a time, and spent only when the decision redeemed it.
    #[test]
    fn an_approved_request_is_held_for_one_call_and_spent_only_if_redeemed() {
        use warden_identity::approval::Claim;
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        assert!(matches!(b.claim(&binding("h1"), None, T), Claim::None));
        let r = open(b, HUMANS1, false);
        assert!(matches!(b.claim(&binding("h1"), None, T), Claim::Pending(id) if id == r.id));
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Approved));
        let Claim::Approved(held) = b.claim(&binding("h1"), None, T) else {
            panic!("not approved")
        };
        assert_eq!(held.id, r.id);
        // A concurrent identical call finds it in use.
        assert!(matches!(
            b.claim(&binding("h1"), Some(&r.id), T),
            Claim::Refused(ApprovalError::NotApproved {
                status: Status::Used,
                ..
            })
        ));
        // Not redeemed (the call needed something else): released, usable again.
        b.release(&r.id, T);
        assert!(matches!(
            b.claim(&binding("h1"), None, T),
            Claim::Approved(_)
        ));
        b.spend(&r.id, T);
        assert_eq!(b.get(&r.id, T).unwrap().status, Status::Used);
        assert!(matches!(b.claim(&binding("h1"), None, T), Claim::None));
        // Named for another call, or unknown: refused with why.
        assert!(matches!(
            b.claim(&binding("h2"), Some(&r.id), T),
            Claim::Refused(ApprovalError::OtherCall {
                field: "arguments",
                ..
            })
        ));
        assert!(matches!(
            b.claim(&binding("h2"), Some("apr_000000000000000000000000"), T),
            Claim::Refused(ApprovalError::Unknown(_))
        ));
        // At the cap of open requests (3 here), another call has no room.
        for h in ["a", "b", "c"] {
            b.open(&binding(h), HUMANS1, false, serde_json::Value::Null, T)
                .unwrap();
        }
        assert!(matches!(
            b.claim(&binding("d"), None, T),
            Claim::Full(ApprovalError::TooManyOpen { open: 3, .. })
        ));
        assert!(matches!(b.claim(&binding("a"), None, T), Claim::Pending(_)));
    }

    #[test]
    fn agents_never_approve_not_even_their_own_calls() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, Requirement::Humans { approvers: 1 }, false);
        // `coder-2` is listed with a key and a role, but it is an agent.
        assert!(matches!(
            cast(b, &r, "coder-2", Verdict::Approve),
            Err(ApprovalError::AgentApprover(_))
        ));
        let mut others = approvers();
        others.insert(
            "coder-1".into(),
            Approver {
                roles: Default::default(),
                key: key("coder-1").verifying_key(),
            },
        );
        let vote = sign(&key("coder-1"), &r, Verdict::Approve, "coder-1", T).unwrap();
        assert!(matches!(
            b.vote(&vote, &others, &|_| false, T),
            Err(ApprovalError::AgentApprover(_))
        ));
        assert_eq!(b.get(&r.id, T).unwrap().status, Status::Pending);
    }

    #[test]
    fn a_vote_for_other_arguments_or_another_version_does_not_count() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, Requirement::Humans { approvers: 1 }, false);
        let mut other = r.clone();
        other.binding.arguments_hash = "h2".into();
        let vote = sign(&key("bob"), &other, Verdict::Approve, "bob", T).unwrap();
        assert!(matches!(
            b.vote(&vote, &approvers(), &is_agent, T),
            Err(ApprovalError::VoteMismatch {
                field: "arguments",
                ..
            })
        ));
        let mut other = r.clone();
        other.binding.manifest_version = 4;
        let vote = sign(&key("bob"), &other, Verdict::Approve, "bob", T).unwrap();
        assert!(matches!(
            b.vote(&vote, &approvers(), &is_agent, T),
            Err(ApprovalError::VoteMismatch {
                field: "manifest version",
                ..
            })
        ));
        // A vote signed over another session's call does not verify here.
        let mut other = r.clone();
        other.binding.session = "s2".into();
        let vote = sign(&key("bob"), &other, Verdict::Approve, "bob", T).unwrap();
        assert!(matches!(
            b.vote(&vote, &approvers(), &is_agent, T),
            Err(ApprovalError::BadSignature(_))
        ));
        // Signed by someone else's key.
        let mut vote = sign(&key("dave"), &r, Verdict::Approve, "bob", T).unwrap();
        assert!(matches!(
            b.vote(&vote, &approvers(), &is_agent, T),
            Err(ApprovalError::BadSignature(_))
        ));
        vote.approver = "mallory".into();
        assert!(matches!(
            b.vote(&vote, &approvers(), &is_agent, T),
            Err(ApprovalError::UnknownApprover(_))
        ));
        assert_eq!(b.get(&r.id, T).unwrap().status, Status::Pending);
    }

    #[test]
    fn replayed_stale_and_late_approvals_are_refused() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, Requirement::Humans { approvers: 2 }, false);
        let vote = sign(&key("bob"), &r, Verdict::Approve, "bob", T).unwrap();
        b.vote(&vote, &approvers(), &is_agent, T).unwrap();
        assert!(matches!(
            b.vote(&vote, &approvers(), &is_agent, T + 1),
            Err(ApprovalError::Replayed(_))
        ));
        // Signed 31 s ago, outside the 30 s window.
        let old = sign(&key("carol"), &r, Verdict::Approve, "carol", T - 31_000).unwrap();
        assert!(matches!(
            b.vote(&old, &approvers(), &is_agent, T),
            Err(ApprovalError::Stale { .. })
        ));
        // The request expires after 60 s; a vote after that is refused and the expiry is
        // reported once.
        let late = sign(&key("carol"), &r, Verdict::Approve, "carol", T + 61_000).unwrap();
        assert!(matches!(
            b.vote(&late, &approvers(), &is_agent, T + 61_000),
            Err(ApprovalError::NotPending {
                status: Status::Expired,
                ..
            })
        ));
        assert_eq!(b.take_expired(T + 61_000).len(), 1);
        assert!(b.take_expired(T + 62_000).is_empty());
        // An approved call that does not run within the redeem window cannot run later.
        let r = open(b, Requirement::Humans { approvers: 1 }, false);
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Approved));
        assert!(matches!(
            b.redeem(&binding("h1"), Some(&r.id), &HUMANS1, false, T + 10_001),
            Err(ApprovalError::NotApproved {
                status: Status::Expired,
                ..
            })
        ));
    }

    #[test]
    fn the_owner_alone_never_approves_a_critical_call() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, Requirement::Humans { approvers: 1 }, true);
        assert_eq!(cast(b, &r, "alice", Verdict::Approve), Ok(Status::Pending));
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Approved));
        // Where the owner must approve, nobody else may (unless the call is critical).
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(
            b,
            Requirement::Owner {
                owner: "alice".into(),
            },
            false,
        );
        assert!(matches!(
            cast(b, &r, "bob", Verdict::Approve),
            Err(ApprovalError::NotOwner { .. })
        ));
        assert_eq!(
            cast(b, &r, "alice", Verdict::Approve),
            Ok(Status::Approved)
        );
    }

    #[test]
    fn roles_denials_merging_and_caps() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(
            b,
            Requirement::Approvers {
                approvers: 1,
                role: "ops".into(),
            },
            false,
        );
        assert!(matches!(
            cast(b, &r, "dave", Verdict::Approve),
            Err(ApprovalError::MissingRole { .. })
        ));
        // The same call again joins the open request.
        let ops = Requirement::Approvers {
            approvers: 1,
            role: "ops".into(),
        };
        let (same, new) = b
            .open(
                &binding("h1"),
                ops.clone(),
                false,
                serde_json::Value::Null,
                T,
            )
            .unwrap();
        assert_eq!((same.id.as_str(), new), (r.id.as_str(), false));
        assert_eq!(cast(b, &r, "bob", Verdict::Deny), Ok(Status::Denied));
        assert!(matches!(
            b.redeem(&binding("h1"), Some(&r.id), &ops, false, T),
            Err(ApprovalError::NotApproved {
                status: Status::Denied,
                ..
            })
        ));
        // A denial is final for that call: asking again does not open a fresh request.
        assert!(matches!(
            b.open(&binding("h1"), ops, false, serde_json::Value::Null, T),
            Err(ApprovalError::NotApproved {
                status: Status::Denied,
                ..
            })
        ));
        // Three open requests per agent, then refused.
        for h in ["a", "b", "c"] {
            b.open(
                &binding(h),
                Requirement::Humans { approvers: 1 },
                false,
                serde_json::Value::Null,
                T,
            )
            .unwrap();
        }
        assert!(matches!(
            b.open(
                &binding("d"),
                Requirement::Humans { approvers: 1 },
                false,
                serde_json::Value::Null,
                T
            ),
            Err(ApprovalError::TooManyOpen { open: 3, .. })
        ));
    }

    #[test]
    fn a_vote_counts_only_once_recorded_and_only_for_the_requirement_it_was_given_for() {
        let Some(store) = book() else { return };
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, HUMANS1, false);
        let vote = sign(&key("bob"), &r, Verdict::Approve, "bob", T).unwrap();
        let voted = b.vote(&vote, &approvers(), &is_agent, T).unwrap();
        assert!(voted.decided);
        // Not yet recorded: nothing changed, and another vote waits.
        assert_eq!(b.get(&r.id, T).unwrap().status, Status::Pending);
        // Only that vote's own commit (or withdrawal) touches it.
        let other = sign(&key("bob"), &r, Verdict::Approve, "bob", T).unwrap();
        assert_eq!(b.commit(&r.id, &other.nonce, T), None);
        b.withdraw(&r.id, &other.nonce);
        assert_eq!(b.get(&r.id, T).unwrap().votes.len(), 1);
        assert_eq!(b.redeem(&binding("h1"), None, &HUMANS1, false, T), Ok(None));
        assert!(matches!(
            cast(b, &r, "carol", Verdict::Approve),
            Err(ApprovalError::Busy(_))
        ));
        // The record failed: the vote is taken back.
        b.withdraw(&r.id, &vote.nonce);
        let after = b.get(&r.id, T).unwrap();
        assert_eq!((after.status, after.votes.len()), (Status::Pending, 0));
        // Recorded this time.
        assert_eq!(
            cast(b, &r, "carol", Verdict::Approve),
            Ok(Status::Approved)
        );
        // The call now needs more (two people, not the owner alone): the approval given for
        // one approver does not do; the request is superseded and a new one is needed.
        assert_eq!(b.redeem(&binding("h1"), None, &HUMANS2, true, T), Ok(None));
        assert_eq!(b.get(&r.id, T).unwrap().status, Status::Expired);
        let (fresh, new) = b
            .open(&binding("h1"), HUMANS2, true, serde_json::Value::Null, T)
            .unwrap();
        assert!(new && fresh.id != r.id);
        // Under a newer manifest, a named approval from the old one no longer fits.
        let mut v4 = binding("h1");
        v4.manifest_version = 4;
        assert_eq!(b.redeem(&v4, Some(&fresh.id), &HUMANS2, true, T), Ok(None));
        assert!(matches!(
            b.redeem(&v4, Some("apr_not-an-id"), &HUMANS2, true, T),
            Err(ApprovalError::Unknown(shown)) if shown.contains("not an approval id")
        ));
    }

    proptest! {
        /// Changing any field of a signed vote (other than to a value it already had) never
        /// gets it counted.
        #[test]
        fn a_tampered_vote_never_counts(field in 0usize..7, byte in any::<u8>()) {
            let Some(store) = book() else { return Ok(()) };
            let b: &dyn ApprovalStore = &*store;
            let r = open(b, Requirement::Humans { approvers: 1 }, false);
            let good = sign(&key("bob"), &r, Verdict::Approve, "bob", T).unwrap();
            let mut v = good.clone();
            let flip = |s: &mut String| {
                let mut bytes = s.clone().into_bytes();
                let i = usize::from(byte) % bytes.len().max(1);
                if bytes.is_empty() { bytes.push(b'x') } else { bytes[i] ^= 1 }
                *s = String::from_utf8_lossy(&bytes).into_owned();
            };
            match field {
                0 => flip(&mut v.request),
                1 => v.verdict = Verdict::Deny,
                2 => v.approver = "carol".into(),
                3 => flip(&mut v.arguments_hash),
                4 => v.manifest_version ^= 1 + u64::from(byte),
                5 => v.issued_at_ms += 1 + i64::from(byte),
                _ => flip(&mut v.nonce),
            }
            prop_assert!(b.vote(&v, &approvers(), &is_agent, T).is_err());
            prop_assert_eq!(b.get(&r.id, T).unwrap().status, Status::Pending);
        }
    }
        }
    };
}

suite!(book, |s| Some(
    Box::new(warden_identity::approval::Book::new(s)) as Box<_>
));
suite!(redis, |s| crate::redis_book(s)
    .map(|b| Box::new(b) as Box<_>));

/// The Redis of `WARDEN_TEST_REDIS_URL` (`.ci/run` sets it), under a prefix of this store's
/// own; `None` (and a notice) without it.
fn redis_book(
    s: warden_identity::approval::Settings,
) -> Option<warden_identity::approval::RedisBook> {
    let Ok(url) = std::env::var("WARDEN_TEST_REDIS_URL") else {
        eprintln!("notice: WARDEN_TEST_REDIS_URL is not set; skipping the Redis approval store");
        return None;
    };
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).unwrap();
    let prefix = format!("warden-test:{}:", u64::from_le_bytes(raw));
    Some(warden_identity::approval::RedisBook::new(&url, &prefix, s).unwrap())
}

/// What only a shared store has to show: several instances on one Redis are one book.
mod fleet {
    use super::redis::{approvers, binding, is_agent, key};
    use std::time::{Duration, Instant};
    use warden_identity::approval::{
        sign, ApprovalError, ApprovalStore, Claim, RedisBook, Requirement, Settings, Status,
        Verdict,
    };

    const HUMANS1: Requirement = Requirement::Humans { approvers: 1 };

    fn settings() -> Settings {
        Settings {
            request_ttl_ms: 600_000,
            redeem_ttl_ms: 600_000,
            max_open_per_agent: 3,
            vote_window_ms: 30_000,
        }
    }

    /// `n` books on one fresh prefix, as `n` instances of a fleet hold them.
    fn instances(n: usize) -> Option<(String, String, Vec<RedisBook>)> {
        let url = std::env::var("WARDEN_TEST_REDIS_URL").ok()?;
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).unwrap();
        let prefix = format!("warden-test:{}:", u64::from_le_bytes(raw));
        let books = (0..n)
            .map(|_| RedisBook::new(&url, &prefix, settings()).unwrap())
            .collect();
        Some((url, prefix, books))
    }

    fn now() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    }

    #[test]
    fn requested_on_one_instance_voted_on_a_second_run_once_on_a_third() {
        let Some((_, _, books)) = instances(3) else {
            return;
        };
        let [a, b, c] = [&books[0], &books[1], &books[2]];
        let t = now();
        let (r, new) = a
            .open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t)
            .unwrap();
        assert!(new);
        let mut waiting = a.subscribe(&r.id).unwrap();
        // The same call asked through another instance joins the request.
        let (joined, new) = c
            .open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t)
            .unwrap();
        assert!(!new);
        assert_eq!(joined.id, r.id);
        // The other instances learn that the agent has a request within a poll.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !(b.has_requests_of("coder-1") && c.has_requests_of("coder-1")) {
            assert!(Instant::now() < deadline, "the request was not seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let vote = sign(&key("bob"), &r, Verdict::Approve, "bob", t).unwrap();
        assert!(b.vote(&vote, &approvers(), &is_agent, t).unwrap().decided);
        // Counted but not committed: nothing is approved anywhere yet.
        assert!(matches!(
            c.claim(&binding("h1"), None, t),
            Claim::Pending(_)
        ));
        // The vote replayed through another instance is refused.
        assert!(matches!(
            c.vote(&vote, &approvers(), &is_agent, t),
            Err(ApprovalError::Replayed(_))
        ));
        assert_eq!(
            b.commit(&r.id, &vote.nonce, t).unwrap().status,
            Status::Approved
        );
        // The call waiting on the first instance hears it.
        let started = Instant::now();
        while *waiting.borrow_and_update() != Status::Approved {
            assert!(started.elapsed() < Duration::from_secs(3), "not heard");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The third instance holds it for its call; the others find it in use meanwhile.
        let Claim::Approved(held) = c.claim(&binding("h1"), None, t) else {
            panic!("not approved on the third instance")
        };
        assert_eq!(held.id, r.id);
        for other in [a, b] {
            assert!(matches!(
                other.claim(&binding("h1"), Some(&r.id), t),
                Claim::Refused(ApprovalError::NotApproved {
                    status: Status::Used,
                    ..
                })
            ));
        }
        c.spend(&r.id, t);
        // Once: no instance finds it again.
        for any in [a, b, c] {
            assert!(matches!(any.claim(&binding("h1"), None, t), Claim::None));
            assert_eq!(
                any.redeem(&binding("h1"), None, &HUMANS1, false, t),
                Ok(None)
            );
            assert_eq!(any.get(&r.id, t).unwrap().status, Status::Used);
        }
    }

    #[test]
    fn concurrent_redemptions_on_many_instances_run_the_call_once() {
        let Some((_, _, books)) = instances(6) else {
            return;
        };
        let t = now();
        let (r, _) = books[0]
            .open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t)
            .unwrap();
        let vote = sign(&key("carol"), &r, Verdict::Approve, "carol", t).unwrap();
        books[1].vote(&vote, &approvers(), &is_agent, t).unwrap();
        books[1].commit(&r.id, &vote.nonce, t).unwrap();
        for round in 0..2 {
            let won: usize = std::thread::scope(|s| {
                let tries: Vec<_> = books
                    .iter()
                    .map(|b| {
                        let id = r.id.clone();
                        s.spawn(move || {
                            b.redeem(&binding("h1"), Some(&id), &HUMANS1, false, t)
                                .ok()
                                .flatten()
                                .is_some()
                        })
                    })
                    .collect();
                tries
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .filter(|won| *won)
                    .count()
            });
            assert_eq!(won, usize::from(round == 0), "round {round}");
        }
        // Concurrent opens of one agent never pass its cap.
        let opened: usize = std::thread::scope(|s| {
            let tries: Vec<_> = books
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    s.spawn(move || {
                        b.open(
                            &binding(&format!("c{i}")),
                            HUMANS1,
                            false,
                            serde_json::Value::Null,
                            t,
                        )
                        .is_ok()
                    })
                })
                .collect();
            tries
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|won| *won)
                .count()
        });
        assert_eq!(opened, 3);
    }

    #[test]
    fn an_instance_that_dies_holding_a_vote_or_an_approval_authorizes_nothing_after_its_lease() {
        use warden_identity::approval::LEASE_MS;
        let Some((_, _, books)) = instances(2) else {
            return;
        };
        let (a, b) = (&books[0], &books[1]);
        let t = now();
        let (r, _) = a
            .open(
                &binding("h1"),
                Requirement::Humans { approvers: 2 },
                false,
                serde_json::Value::Null,
                t,
            )
            .unwrap();
        // A counts bob's vote and dies before its record: another vote waits meanwhile...
        let bob = sign(&key("bob"), &r, Verdict::Approve, "bob", t).unwrap();
        a.vote(&bob, &approvers(), &is_agent, t).unwrap();
        let carol = sign(&key("carol"), &r, Verdict::Approve, "carol", t).unwrap();
        assert!(matches!(
            b.vote(&carol, &approvers(), &is_agent, t),
            Err(ApprovalError::Busy(_))
        ));
        // ...and after the lease bob's vote is gone, never counted: A's late commit of it (its
        // record landed at last) counts nothing.
        let later = t + LEASE_MS;
        assert_eq!(a.commit(&r.id, &bob.nonce, later), None);
        let carol = sign(&key("carol"), &r, Verdict::Approve, "carol", later).unwrap();
        b.vote(&carol, &approvers(), &is_agent, later).unwrap();
        let after = b.commit(&r.id, &carol.nonce, later).unwrap();
        assert_eq!(after.status, Status::Pending);
        assert_eq!(after.approved_by(), vec!["carol"]);
        let alice = sign(&key("alice"), &r, Verdict::Approve, "alice", later).unwrap();
        b.vote(&alice, &approvers(), &is_agent, later).unwrap();
        assert_eq!(
            b.commit(&r.id, &alice.nonce, later).unwrap().status,
            Status::Approved
        );
        // A holds it for a call and dies: its call may have run, so once the hold lapses the
        // approval is expired (and reported), never approved again; A's late spend changes
        // nothing.
        assert!(matches!(
            a.claim(&binding("h1"), None, later),
            Claim::Approved(_)
        ));
        assert!(matches!(
            b.claim(&binding("h1"), None, later),
            Claim::Refused(_)
        ));
        let lapsed = later + LEASE_MS;
        assert!(matches!(
            b.claim(&binding("h1"), Some(&r.id), lapsed),
            Claim::Refused(ApprovalError::NotApproved {
                status: Status::Expired,
                ..
            })
        ));
        assert!(b.take_expired(lapsed).iter().any(|x| x.id == r.id));
        a.spend(&r.id, lapsed);
        assert_eq!(b.get(&r.id, lapsed).unwrap().status, Status::Expired);
    }

    #[test]
    fn what_warden_did_not_write_refuses_and_changes_nothing() {
        let Some((url, prefix, books)) = instances(1) else {
            return;
        };
        let a = &books[0];
        let t = now();
        let (r, _) = a
            .open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t)
            .unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        let record = format!("{prefix}approval:{}", r.id);
        for garbage in ["not json", "{\"request\": 1}"] {
            let _: () = redis::cmd("SET")
                .arg(&record)
                .arg(garbage)
                .query(&mut c)
                .unwrap();
            let vote = sign(&key("bob"), &r, Verdict::Approve, "bob", t).unwrap();
            assert!(matches!(
                a.vote(&vote, &approvers(), &is_agent, t),
                Err(ApprovalError::Unavailable(_))
            ));
            assert!(matches!(
                a.claim(&binding("h1"), None, t),
                Claim::Refused(ApprovalError::Unavailable(_))
            ));
            assert!(matches!(
                a.redeem(&binding("h1"), Some(&r.id), &HUMANS1, false, t),
                Err(ApprovalError::Unavailable(_))
            ));
        }
        // A key of the wrong type reads as no request (nothing authorized), and no write
        // goes past it.
        let _: () = redis::cmd("DEL").arg(&record).query(&mut c).unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(&record)
            .arg("x")
            .query(&mut c)
            .unwrap();
        assert!(matches!(a.claim(&binding("h1"), None, t), Claim::None));
        assert!(matches!(
            a.open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t),
            Err(ApprovalError::Unavailable(_))
        ));
        let _: () = redis::cmd("DEL").arg(&record).query(&mut c).unwrap();
        // Nothing was written meanwhile, and the book still answers.
        assert!(a.get(&r.id, t).is_none());
        assert!(matches!(a.claim(&binding("h1"), None, t), Claim::None));
    }

    /// A Redis that restarts closes the connection a book kept: the first step after it comes
    /// back runs on a new connection instead of being refused, and what was asked before is
    /// still there (the test's own `redis-server`, its data in an append-only file). Each
    /// restart is followed at once by a step, so the book's watcher (a read every 200 ms)
    /// cannot have replaced the closed connection first every time.
    #[test]
    fn the_first_steps_after_a_redis_restart_are_served() {
        let Some(mut redis) = warden_testkit::OwnRedis::start("the approvals' restart test") else {
            return;
        };
        let book = RedisBook::new(&redis.url(), "warden-test:restart:", settings()).unwrap();
        let t = now();
        let ask = || book.open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t);
        let (r, new) = ask().unwrap();
        assert!(new);
        for round in 0..5 {
            redis.restart();
            let joined = ask();
            assert!(
                matches!(&joined, Ok((j, false)) if j.id == r.id),
                "round {round}: {joined:?}"
            );
        }
        redis.restart();
        let vote = sign(&key("bob"), &r, Verdict::Approve, "bob", t).unwrap();
        let voted = book.vote(&vote, &approvers(), &is_agent, t);
        assert!(matches!(&voted, Ok(v) if v.decided), "{voted:?}");
        redis.restart();
        let committed = book.commit(&r.id, &vote.nonce, t);
        assert_eq!(committed.map(|c| c.status), Some(Status::Approved));
    }

    #[test]
    fn an_unreachable_redis_refuses_every_step() {
        let b = RedisBook::new("redis://127.0.0.1:1/", "warden-test:none:", settings()).unwrap();
        let t = now();
        assert!(matches!(
            b.open(&binding("h1"), HUMANS1, false, serde_json::Value::Null, t),
            Err(ApprovalError::Unavailable(_))
        ));
        assert!(matches!(
            b.claim(&binding("h1"), Some("apr_000000000000000000000000"), t),
            Claim::Refused(ApprovalError::Unavailable(_))
        ));
        assert!(matches!(
            b.redeem(&binding("h1"), None, &HUMANS1, false, t),
            Err(ApprovalError::Unavailable(_))
        ));
        assert!(b.list(t).is_empty());
        assert!(b.take_expired(t).is_empty());
    }
}
