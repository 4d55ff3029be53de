//! `/v1/decide` is a dry run: what the Governor would decide for a proposal now, with nothing
//! charged, recorded or run.
//!
//! It is unauthenticated (loopback only), so anyone on the host can name any agent: it must not
//! spend that agent's rate limits or budgets, feed its loop detector, pause its session, demote
//! it, open approvals or write decisions in its name. The decision is made by the same
//! `decide_scanned`, with the same argument scan as the governed path, over [`ReadOnly`] state:
//! holds (kill switch, quarantine, pauses, demotions) are read and apply; counters and session
//! history are neither read nor written, so rate limits, budgets and loop detection are not
//! evaluated, and the answer says so.

use warden_core::state::{
    Charge, ChargeOutcome, Hold, HoldScope, Settle, Settled, StateError, StateStore,
};
use warden_core::time::UnixSeconds;

/// The answer's note on what a dry run leaves out.
pub const NOTE: &str = "dry run: nothing was charged, recorded or run; rate limits, budgets and \
                        loop detection were not evaluated (the governed path, /mcp or \
                        /v1/proposals, applies them)";

/// A state store seen through a dry run: reads holds, writes nothing; answers "unavailable"
/// when the second field says why (an instance behind its fleet's manifest decides nothing,
/// not even a dry run).
pub struct ReadOnly<'a>(pub &'a dyn StateStore, pub Option<String>);

impl ReadOnly<'_> {
    fn open(&self) -> Result<(), StateError> {
        match &self.1 {
            Some(why) => Err(StateError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for ReadOnly<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadOnly")
    }
}

impl StateStore for ReadOnly<'_> {
    fn check_and_charge(
        &self,
        _charges: &[Charge],
        _now: UnixSeconds,
    ) -> Result<ChargeOutcome, StateError> {
        Ok(ChargeOutcome::Charged)
    }

    fn observe_call(
        &self,
        _session: &str,
        _fingerprint: [u8; 32],
        _now: UnixSeconds,
        _ttl: i64,
    ) -> Result<u32, StateError> {
        Ok(1)
    }

    fn settle(&self, s: &Settle<'_>) -> Result<Settled, StateError> {
        self.open()?;
        let holds = self.0.holds(s.scopes)?;
        if !holds.is_empty() {
            return Ok(Settled {
                holds,
                repeats: None,
                charged: None,
                used: Vec::new(),
            });
        }
        Ok(Settled {
            holds,
            repeats: s.observe.map(|_| 1),
            charged: s.charge.map(|_| ChargeOutcome::Charged),
            used: Vec::new(),
        })
    }

    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        self.open()?;
        self.0.holds(scopes)
    }

    fn set_hold(&self, _hold: Hold) -> Result<(), StateError> {
        Ok(())
    }

    fn clear_hold(
        &self,
        _scope: &HoldScope,
        _kind: warden_core::state::HoldKind,
    ) -> Result<bool, StateError> {
        Ok(false)
    }

    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        self.0.all_holds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::state::HoldKind;

    #[test]
    fn a_dry_run_reads_holds_and_changes_nothing() {
        let real = warden_state::MemoryState::new();
        let hold = Hold {
            scope: HoldScope::Agent("a".into()),
            kind: HoldKind::Kill,
            reason: "drill".into(),
            since: 1,
        };
        real.set_hold(hold.clone()).unwrap();
        let dry = ReadOnly(&real, None);
        assert_eq!(dry.holds(&[HoldScope::Agent("a".into())]).unwrap().len(), 1);
        // Behind its fleet: not even a dry run is decided.
        let behind = ReadOnly(&real, Some("behind the fleet".into()));
        assert!(behind.holds(&[HoldScope::Global]).is_err());
        let charge = Charge {
            key: "k".into(),
            amount: 1,
            limit: 1,
            expires_at: 100,
        };
        for _ in 0..3 {
            assert_eq!(
                dry.check_and_charge(std::slice::from_ref(&charge), 10)
                    .unwrap(),
                ChargeOutcome::Charged
            );
            assert_eq!(dry.observe_call("s", [0; 32], 10, 60).unwrap(), 1);
            let settled = dry
                .settle(&Settle {
                    scopes: &[HoldScope::Agent("b".into())],
                    observe: Some(warden_core::state::Observe {
                        session: "s",
                        fingerprint: [0; 32],
                        ttl: 60,
                        loop_at: 2,
                    }),
                    charge: Some(std::slice::from_ref(&charge)),
                    now: 10,
                })
                .unwrap();
            assert_eq!(
                (settled.repeats, settled.charged),
                (Some(1), Some(ChargeOutcome::Charged))
            );
        }
        dry.set_hold(Hold {
            scope: HoldScope::Global,
            ..hold.clone()
        })
        .unwrap();
        assert!(!dry.clear_hold(&hold.scope, HoldKind::Kill).unwrap());
        // The real store: the hold still there, nothing else added, the counter unspent.
        assert_eq!(real.all_holds().unwrap(), vec![hold]);
        assert_eq!(
            real.check_and_charge(&[charge], 10).unwrap(),
            ChargeOutcome::Charged
        );
    }
}
