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

    fn key(name: &str) -> SigningKey {
        let mut seed = [0u8; 32];
        for (i, b) in name.bytes().enumerate() {
            seed[i % 32] ^= b;
        }
        seed[31] ^= 0x5a;
        SigningKey::from_bytes(&seed)
    }

    /// alice owns the agent; bob and carol hold `ops`; dave holds nothing.
    fn approvers() -> HashMap<String, Approver> {
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

    fn is_agent(id: &str) -> bool {
        id.starts_with("coder-")
    }

    fn binding(args: &str) -> Binding {
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

    /// A fresh store of the implementation under test.
    fn book() -> Box<dyn ApprovalStore> {
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
        Ok(b.commit(&r.id, T).unwrap().status)
    }

    const HUMANS1: Requirement = Requirement::Humans { approvers: 1 };
    const HUMANS2: Requirement = Requirement::Humans { approvers: 2 };

    #[test]
    fn two_distinct_approvers_approve_exactly_that_call_once() {
        let store = book();
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
        let store = book();
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
        let store = book();
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
        b.release(&r.id);
        assert!(matches!(
            b.claim(&binding("h1"), None, T),
            Claim::Approved(_)
        ));
        b.spend(&r.id);
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
        let store = book();
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
        let store = book();
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
        let store = book();
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
        let store = book();
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, Requirement::Humans { approvers: 1 }, true);
        assert_eq!(cast(b, &r, "alice", Verdict::Approve), Ok(Status::Pending));
        assert_eq!(cast(b, &r, "bob", Verdict::Approve), Ok(Status::Approved));
        // Where the owner must approve, nobody else may (unless the call is critical).
        let store = book();
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
        let store = book();
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
        let store = book();
        let b: &dyn ApprovalStore = &*store;
        let r = open(b, HUMANS1, false);
        let vote = sign(&key("bob"), &r, Verdict::Approve, "bob", T).unwrap();
        let voted = b.vote(&vote, &approvers(), &is_agent, T).unwrap();
        assert!(voted.decided);
        // Not yet recorded: nothing changed, and another vote waits.
        assert_eq!(b.get(&r.id, T).unwrap().status, Status::Pending);
        assert_eq!(b.redeem(&binding("h1"), None, &HUMANS1, false, T), Ok(None));
        assert!(matches!(
            cast(b, &r, "carol", Verdict::Approve),
            Err(ApprovalError::Busy(_))
        ));
        // The record failed: the vote is taken back.
        b.withdraw(&r.id);
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
            let store = book();
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

suite!(book, |s| Box::new(warden_identity::approval::Book::new(s)));
