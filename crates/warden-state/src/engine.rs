//! The state engine shared by every local backend: pure data structures, no I/O.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use warden_core::state::{Charge, ChargeOutcome, Hold, HoldKind, HoldScope};
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

#[derive(Debug, Default)]
pub(crate) struct Engine {
    counters: HashMap<String, Counter>,
    sessions: HashMap<String, SessionHistory>,
    // INVARIANT (O(1) hold lookup): holds are indexed by scope, so a decision's lookup costs
    // the same whatever the number of paused sessions or quarantined agents.
    holds: HashMap<HoldScope, BTreeMap<HoldKind, Hold>>,
    ops_since_sweep: u32,
}

impl Engine {
    /// Decides a charge without changing anything; returns the op to apply if it fits.
    pub fn plan_charge(&self, charges: &[Charge], now: UnixSeconds) -> (ChargeOutcome, Option<Op>) {
        let outcome = self.check_only(charges, now);
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
    fn check_only(&self, charges: &[Charge], now: UnixSeconds) -> ChargeOutcome {
        for (index, charge) in charges.iter().enumerate() {
            let current = self.counter_value(&charge.key, now);
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
                return ChargeOutcome::Exceeded {
                    index,
                    current: current.saturating_add(earlier),
                };
            }
        }
        ChargeOutcome::Charged
    }

    /// Checks and, if every charge fits, applies them in place (no journal op is built).
    pub fn charge_in_place(&mut self, charges: &[Charge], now: UnixSeconds) -> ChargeOutcome {
        let outcome = self.check_only(charges, now);
        if outcome != ChargeOutcome::Charged {
            return outcome;
        }
        for c in charges {
            match self.counters.get_mut(c.key.as_str()) {
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
                        c.key.clone(),
                        Counter {
                            value: c.amount,
                            expires_at: c.expires_at,
                        },
                    );
                }
            }
        }
        self.tick(now);
        outcome
    }

    fn counter_value(&self, key: &str, now: UnixSeconds) -> u64 {
        match self.counters.get(key) {
            Some(c) if c.expires_at > now => c.value,
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
        let repeats = match self.sessions.get(session) {
            Some(h) if h.expires_at > now && h.fingerprint == fingerprint => {
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
                    let slot = self.counters.entry(key).or_insert(Counter {
                        value: 0,
                        expires_at,
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
                self.sessions.insert(session, history);
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

    /// Counts one mutation; sweeps expired entries every [`SWEEP_EVERY`].
    fn tick(&mut self, now: UnixSeconds) {
        self.ops_since_sweep = self.ops_since_sweep.saturating_add(1);
        if self.ops_since_sweep >= SWEEP_EVERY {
            self.sweep(now);
        }
    }

    /// Forgets counters and session histories whose time is over.
    pub fn sweep(&mut self, now: UnixSeconds) {
        self.counters.retain(|_, c| c.expires_at > now);
        self.sessions.retain(|_, h| h.expires_at > now);
        self.ops_since_sweep = 0;
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
        let mut keys: Vec<&String> = self.counters.keys().collect();
        keys.sort();
        let entries: Vec<(String, u64, UnixSeconds)> = keys
            .into_iter()
            .filter_map(|k| {
                self.counters
                    .get(k)
                    .filter(|c| c.expires_at > now)
                    .map(|c| (k.clone(), c.value, c.expires_at))
            })
            .collect();
        if !entries.is_empty() {
            ops.push(Op::Charge { entries });
        }
        let mut sessions: Vec<(&String, &SessionHistory)> = self.sessions.iter().collect();
        sessions.sort_by(|a, b| a.0.cmp(b.0));
        for (session, history) in sessions {
            if history.expires_at > now {
                ops.push(Op::Observe {
                    session: session.clone(),
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
