//! The state engine shared by every local backend: pure data structures, no I/O.

use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use warden_core::state::{Charge, ChargeOutcome, Hold, HoldKind, HoldScope, Settle, Settled};
use warden_core::time::UnixSeconds;

/// How many mutating operations between sweeps of expired entries.
const SWEEP_EVERY: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counter {
    pub value: u64,
    pub expires_at: UnixSeconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionHistory {
    #[serde(with = "hex32")]
    pub fingerprint: [u8; 32],
    pub repeats: u32,
    pub expires_at: UnixSeconds,
}

/// One durable change. The journal is a sequence of these; replaying them rebuilds the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Op {
    Charge {
        entries: Vec<(String, u64, UnixSeconds)>,
    },
    Observe {
        session: String,
        history: SessionHistory,
    },
    SetHold {
        hold: Hold,
    },
    ClearHold {
        scope: HoldScope,
        kind: HoldKind,
    },
}

/// A key's 128-bit fingerprint: SipHash-1-3 under a secret random key, of the key string
/// prefixed once with 0 and once with 1 (two outputs of a keyed PRF on distinct inputs). Maps are keyed by it so that a lookup reads only the table, never the key's own heap
/// string: with 10,000 agents the per-agent keys are out of cache, and each string compare was
/// another cache miss. The key itself is kept beside the value, for snapshots.
// INVARIANT (distinct keys stay distinct): without the secret hash keys, two key strings share
// a fingerprint with probability 2^-128; an agent choosing session ids cannot aim for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fp(u64, u64);

/// Hashes an [`Fp`] by taking its bits (they are already uniformly random).
#[derive(Debug, Default)]
struct FpHasher(u64);

impl Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type FpMap<V> = HashMap<Fp, V, BuildHasherDefault<FpHasher>>;

#[derive(Debug, Default)]
struct Fingerprints(RandomState);

impl Fingerprints {
    fn of(&self, key: &str) -> Fp {
        Fp(self.0.hash_one((0u8, key)), self.0.hash_one((1u8, key)))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Engine {
    fingerprints: Fingerprints,
    /// Counters and their keys, by fingerprint.
    counters: FpMap<(Counter, Box<str>)>,
    /// Session histories and their session keys, by fingerprint.
    sessions: FpMap<(SessionHistory, Box<str>)>,
    // INVARIANT (O(1) hold lookup): holds are indexed by scope, so a decision's lookup costs
    // the same whatever the number of paused sessions or quarantined agents.
    holds: HashMap<HoldScope, BTreeMap<HoldKind, Hold>>,
    ops_since_sweep: u32,
    /// Entries left by the last sweep (the live ones then): the next sweep is due after
    /// max([`SWEEP_EVERY`], this many) mutations.
    live_after_sweep: usize,
}

impl Engine {
    /// Decides a charge without changing anything; returns the op to apply if it fits.
    pub fn plan_charge(&self, charges: &[Charge], now: UnixSeconds) -> (ChargeOutcome, Option<Op>) {
        self.plan_charge_counting(charges, now, &mut Vec::new())
    }

    /// [`Engine::plan_charge`], also pushing each counter's value after the charge to `used`.
    fn plan_charge_counting(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
        used: &mut Vec<u64>,
    ) -> (ChargeOutcome, Option<Op>) {
        let outcome = self.check_only(charges, now, used);
        if outcome != ChargeOutcome::Charged {
            return (outcome, None);
        }
        let entries = charges
            .iter()
            .map(|c| (c.key.clone(), c.amount, c.expires_at))
            .collect();
        (ChargeOutcome::Charged, Some(Op::Charge { entries }))
    }

    /// Whether every charge fits (nothing is changed).
    fn check_only(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
        used: &mut Vec<u64>,
    ) -> ChargeOutcome {
        let fps: Vec<Fp> = charges
            .iter()
            .map(|c| self.fingerprints.of(&c.key))
            .collect();
        self.check_fps(charges, &fps, now, used)
    }

    /// Whether every charge fits; each counter's value after its charge is pushed to `used`
    /// (complete only when they all fit).
    fn check_fps(
        &self,
        charges: &[Charge],
        fps: &[Fp],
        now: UnixSeconds,
        used: &mut Vec<u64>,
    ) -> ChargeOutcome {
        for (index, (charge, fp)) in charges.iter().zip(fps).enumerate() {
            let current = self.counter_value(*fp, now);
            // Several charges may name the same key; count them together.
            let earlier: u64 = charges
                .iter()
                .take(index)
                .filter(|c| c.key == charge.key)
                .map(|c| c.amount)
                .fold(0u64, u64::saturating_add);
            let after = current
                .saturating_add(earlier)
                .saturating_add(charge.amount);
            if after > charge.limit {
                used.clear();
                return ChargeOutcome::Exceeded {
                    index,
                    current: current.saturating_add(earlier),
                };
            }
            used.push(after);
        }
        ChargeOutcome::Charged
    }

    /// [`StateStore::settle`](warden_core::state::StateStore::settle), its order written once:
    /// the holds; if none, the observation; if no loop, the charge. With a `journal`, nothing
    /// changes here: the ops to write ahead (then apply) are pushed to it. Without, they are
    /// applied at once, the charge in place (no key is copied into an op).
    pub fn settle(&mut self, s: &Settle<'_>, mut journal: Option<&mut Vec<Op>>) -> Settled {
        let mut settled = Settled {
            holds: self.holds_for(s.scopes),
            repeats: None,
            charged: None,
            used: Vec::new(),
        };
        if !settled.holds.is_empty() {
            return settled;
        }
        if let Some(o) = s.observe {
            let (repeats, op) = self.plan_observe(o.session, o.fingerprint, s.now, o.ttl);
            match journal.as_deref_mut() {
                Some(ops) => ops.push(op),
                None => self.apply(op, s.now),
            }
            settled.repeats = Some(repeats);
            if repeats >= o.loop_at {
                return settled;
            }
        }
        if let Some(charges) = s.charge {
            settled.charged = Some(match journal {
                Some(ops) => {
                    let (outcome, op) =
                        self.plan_charge_counting(charges, s.now, &mut settled.used);
                    ops.extend(op);
                    outcome
                }
                None => self.charge_counting(charges, s.now, &mut settled.used),
            });
        }
        settled
    }

    /// Checks and, if every charge fits, applies them in place (no journal op is built).
    pub fn charge_in_place(&mut self, charges: &[Charge], now: UnixSeconds) -> ChargeOutcome {
        self.charge_counting(charges, now, &mut Vec::new())
    }

    /// [`Engine::charge_in_place`], also pushing each counter's value after the charge to
    /// `used`.
    fn charge_counting(
        &mut self,
        charges: &[Charge],
        now: UnixSeconds,
        used: &mut Vec<u64>,
    ) -> ChargeOutcome {
        let fps: Vec<Fp> = charges
            .iter()
            .map(|c| self.fingerprints.of(&c.key))
            .collect();
        let outcome = self.check_fps(charges, &fps, now, used);
        if outcome != ChargeOutcome::Charged {
            return outcome;
        }
        for (c, fp) in charges.iter().zip(fps) {
            match self.counters.get_mut(&fp).map(|(slot, _)| slot) {
                Some(slot) => {
                    if slot.expires_at <= now {
                        *slot = Counter {
                            value: 0,
                            expires_at: c.expires_at,
                        };
                    }
                    slot.value = slot.value.saturating_add(c.amount);
                    slot.expires_at = slot.expires_at.max(c.expires_at);
                }
                None => {
                    self.counters.insert(
                        fp,
                        (
                            Counter {
                                value: c.amount,
                                expires_at: c.expires_at,
                            },
                            c.key.as_str().into(),
                        ),
                    );
                }
            }
        }
        self.tick(now);
        outcome
    }

    fn counter_value(&self, fp: Fp, now: UnixSeconds) -> u64 {
        match self.counters.get(&fp) {
            Some((c, _)) if c.expires_at > now => c.value,
            _ => 0,
        }
    }

    /// Plans an observation: the op to record and the resulting repeat count.
    pub fn plan_observe(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: UnixSeconds,
        ttl: i64,
    ) -> (u32, Op) {
        let repeats = match self.sessions.get(&self.fingerprints.of(session)) {
            Some((h, _)) if h.expires_at > now && h.fingerprint == fingerprint => {
                h.repeats.saturating_add(1)
            }
            _ => 1,
        };
        let history = SessionHistory {
            fingerprint,
            repeats,
            expires_at: now.saturating_add(ttl.max(1)),
        };
        (
            repeats,
            Op::Observe {
                session: session.to_string(),
                history,
            },
        )
    }

    pub fn apply(&mut self, op: Op, now: UnixSeconds) {
        match op {
            Op::Charge { entries } => {
                for (key, amount, expires_at) in entries {
                    let fp = self.fingerprints.of(&key);
                    let (slot, _) = self.counters.entry(fp).or_insert_with(|| {
                        (
                            Counter {
                                value: 0,
                                expires_at,
                            },
                            key.into_boxed_str(),
                        )
                    });
                    if slot.expires_at <= now {
                        *slot = Counter {
                            value: 0,
                            expires_at,
                        };
                    }
                    slot.value = slot.value.saturating_add(amount);
                    slot.expires_at = slot.expires_at.max(expires_at);
                }
            }
            Op::Observe { session, history } => {
                let fp = self.fingerprints.of(&session);
                self.sessions
                    .insert(fp, (history, session.into_boxed_str()));
            }
            Op::SetHold { hold } => {
                self.holds
                    .entry(hold.scope.clone())
                    .or_default()
                    .insert(hold.kind, hold);
            }
            Op::ClearHold { scope, kind } => {
                if let Some(kinds) = self.holds.get_mut(&scope) {
                    kinds.remove(&kind);
                    if kinds.is_empty() {
                        self.holds.remove(&scope);
                    }
                }
            }
        }
        self.tick(now);
    }

    /// Counts one mutation; sweeps expired entries every [`SWEEP_EVERY`] mutations, or, if
    /// the last sweep left more entries than that, every as many mutations as it left. A sweep
    /// visits every entry and a mutation adds at most a few, so a sweep's cost stays a few
    /// entries per mutation whatever the number of agents and sessions, and the map never grows
    /// past a small multiple of its live entries (or of [`SWEEP_EVERY`]), even when every call
    /// brings a new key. Hold changes carry no clock (`i64::MIN`) and do not trigger a sweep.
    fn tick(&mut self, now: UnixSeconds) {
        self.ops_since_sweep = self.ops_since_sweep.saturating_add(1);
        let period = u32::try_from(self.live_after_sweep)
            .unwrap_or(u32::MAX)
            .max(SWEEP_EVERY);
        if self.ops_since_sweep >= period && now != i64::MIN {
            self.sweep(now);
        }
    }

    /// Forgets counters and session histories whose time is over.
    pub fn sweep(&mut self, now: UnixSeconds) {
        self.counters.retain(|_, (c, _)| c.expires_at > now);
        self.sessions.retain(|_, (h, _)| h.expires_at > now);
        self.ops_since_sweep = 0;
        self.live_after_sweep = self.counters.len().saturating_add(self.sessions.len());
    }

    pub fn has_hold(&self, scope: &HoldScope, kind: HoldKind) -> bool {
        self.holds.get(scope).is_some_and(|k| k.contains_key(&kind))
    }

    pub fn holds_for(&self, scopes: &[HoldScope]) -> Vec<Hold> {
        scopes
            .iter()
            .filter_map(|scope| self.holds.get(scope))
            .flat_map(|kinds| kinds.values().cloned())
            .collect()
    }

    pub fn all_holds(&self) -> Vec<Hold> {
        let mut all: Vec<Hold> = self
            .holds
            .values()
            .flat_map(|kinds| kinds.values().cloned())
            .collect();
        all.sort_by(|a, b| (&a.scope, a.kind).cmp(&(&b.scope, b.kind)));
        all
    }

    /// The smallest sequence of ops that rebuilds this engine (for journal compaction).
    pub fn snapshot_ops(&self, now: UnixSeconds) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut entries: Vec<(String, u64, UnixSeconds)> = self
            .counters
            .values()
            .filter(|(c, _)| c.expires_at > now)
            .map(|(c, k)| (k.to_string(), c.value, c.expires_at))
            .collect();
        entries.sort();
        if !entries.is_empty() {
            ops.push(Op::Charge { entries });
        }
        let mut sessions: Vec<(&str, &SessionHistory)> =
            self.sessions.values().map(|(h, k)| (&**k, h)).collect();
        sessions.sort_by(|a, b| a.0.cmp(b.0));
        for (session, history) in sessions {
            if history.expires_at > now {
                ops.push(Op::Observe {
                    session: session.to_string(),
                    history: *history,
                });
            }
        }
        for hold in self.all_holds() {
            ops.push(Op::SetHold { hold });
        }
        ops
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Write as _;

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(64);
        for b in v {
            let _ = write!(out, "{b:02x}");
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(serde::de::Error::custom(
                "fingerprint must be 64 hex digits",
            ));
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).map_err(serde::de::Error::custom)?;
            *slot = u8::from_str_radix(text, 16).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use super::*;

    fn charge(key: &str, limit: u64, expires_at: UnixSeconds) -> Charge {
        Charge {
            key: key.into(),
            amount: 1,
            limit,
            expires_at,
        }
    }

    #[test]
    fn keys_count_apart_and_snapshots_keep_them() {
        let mut e = Engine::default();
        for i in 0..1000 {
            let key = format!("agent/a{}/calls", i % 10);
            assert_eq!(
                e.charge_in_place(&[charge(&key, 100, 50)], 1),
                ChargeOutcome::Charged
            );
        }
        // Each of the ten keys was charged 100 times: the next charge of any of them is refused.
        for i in 0..10 {
            let key = format!("agent/a{i}/calls");
            assert!(matches!(
                e.charge_in_place(&[charge(&key, 100, 50)], 1),
                ChargeOutcome::Exceeded { current: 100, .. }
            ));
        }
        e.apply(
            Op::Observe {
                session: "a1/s".into(),
                history: SessionHistory {
                    fingerprint: [7; 32],
                    repeats: 2,
                    expires_at: 50,
                },
            },
            1,
        );
        // A snapshot names every key, sorted, and rebuilds the same engine.
        let ops = e.snapshot_ops(1);
        let Op::Charge { entries } = &ops[0] else {
            panic!("{ops:?}")
        };
        let keys: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 10);
        assert!(entries.iter().all(|(_, v, _)| *v == 100));
        let mut rebuilt = Engine::default();
        for op in ops.clone() {
            rebuilt.apply(op, 1);
        }
        assert_eq!(rebuilt.snapshot_ops(1), ops);
        assert_eq!(rebuilt.plan_observe("a1/s", [7; 32], 1, 60).0, 3);
        assert_eq!(rebuilt.plan_observe("a2/s", [7; 32], 1, 60).0, 1);
    }

    #[test]
    fn sweeps_stay_amortised_and_still_forget() {
        let mut e = Engine::default();
        // 10,000 live sessions, then 10,000 that expire at t = 10.
        for i in 0..10_000 {
            let (repeats, op) = e.plan_observe(&format!("live/{i}"), [0; 32], 1, 1_000);
            assert_eq!(repeats, 1);
            e.apply(op, 1);
        }
        for i in 0..10_000 {
            let (_, op) = e.plan_observe(&format!("short/{i}"), [0; 32], 1, 9);
            e.apply(op, 1);
        }
        assert_eq!(e.sessions.len(), 20_000);
        // After t = 10, as many mutations as there are entries sweep the expired ones away.
        for i in 0..20_000 {
            let (_, op) = e.plan_observe(&format!("live/{}", i % 10_000), [1; 32], 20, 1_000);
            e.apply(op, 20);
        }
        assert_eq!(e.sessions.len(), 10_000);
        assert!(e.sessions.values().all(|(_, k)| k.starts_with("live/")));
    }

    #[test]
    fn a_new_key_on_every_call_is_still_swept() {
        // Every call brings a fresh session id (and nothing else changes); each history lives
        // 10 s, and the clock moves one second per 1,000 calls.
        let mut e = Engine::default();
        let mut most = 0;
        for i in 0..200_000i64 {
            let now = i / 1000;
            let (_, op) = e.plan_observe(&format!("fresh/{i}"), [0; 32], now, 10);
            e.apply(op, now);
            most = most.max(e.sessions.len());
        }
        // About 10,000 are live at any time; expired ones never pile up past a small multiple.
        assert!(most <= 3 * 10_000 + 4096, "{most} entries at most");
    }
}
