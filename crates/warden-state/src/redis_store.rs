//! [`RedisState`]: the state store shared by the instances of a fleet (issue 22), behind the same
//! [`StateStore`] contract and test suite as the embedded stores.
//!
//! Every operation is one Lua script, so Redis runs it atomically and a decision costs one round
//! trip: [`SETTLE`] reads the holds over the call's scopes, observes the call in its session's
//! history and checks and charges every counter, in the order the contract gives. Keys, all under
//! the store's prefix:
//!
//! - `c:<counter key>`: a hash `{v, e}` (value, end of its window in the caller's clock); Redis
//!   expires it when its window ends (`EXPIRE` by `e - now`), and a script treats it as zero once
//!   `e <= now` whatever Redis has done yet;
//! - `s:<session key>`: a hash `{f, r, e}` (fingerprint, repeats, end), expiring after `ttl`;
//! - `h:<scope>`: a hash from hold kind to the hold (JSON); `holds`: the set of scopes that have
//!   any (for [`StateStore::all_holds`]).
//!
//! Counter values are Lua numbers: exact up to 2^53, far above any budget or rate limit.
//! Multi-key scripts need every key on one node: a single Redis (or a primary with replicas), not
//! Redis Cluster. Holds are only as durable as the Redis they are in: run it with
//! `appendonly yes` (docs/state.md).

use std::time::Duration;

use warden_core::state::{
    Charge, ChargeOutcome, Hold, HoldKind, HoldScope, Settle, Settled, StateError, StateStore,
};
use warden_core::time::UnixSeconds;

/// One decision: holds, then the observation, then the charge (see the module's docs).
///
/// KEYS: the hold keys (`nh` of them), the session key if observing, the counter keys, and last
/// the fleet's epoch key.
/// ARGV: now, nh, observe (0/1), fingerprint, ttl, loop_at, nc (-1: no charge), then
/// `amount, limit, expires_at` per counter, and last the epoch this instance started with.
/// Returns: `[n, hold JSON × n, repeats (-1: not observed), code (-1: not charged, 0: charged,
/// 1: exceeded), then after 0 each counter's value after the charge, after 1 index, current]`, or `[-2]` when the epoch is not the one expected (the state
/// was lost or reset since this instance started).
const SETTLE: &str = r"
if redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then return {-2} end
local now = tonumber(ARGV[1])
local nh = tonumber(ARGV[2])
local held = {}
for i = 1, nh do
  for _, v in ipairs(redis.call('HVALS', KEYS[i])) do held[#held + 1] = v end
end
local out = {#held}
for _, v in ipairs(held) do out[#out + 1] = v end
if #held > 0 then
  out[#out + 1] = -1; out[#out + 1] = -1; return out
end
local k = nh + 1
if ARGV[3] == '1' then
  local skey = KEYS[k]; k = k + 1
  local ttl = math.max(tonumber(ARGV[5]), 1)
  local h = redis.call('HMGET', skey, 'f', 'r', 'e')
  local repeats = 1
  if h[1] == ARGV[4] and tonumber(h[3] or '0') > now then repeats = tonumber(h[2]) + 1 end
  redis.call('HSET', skey, 'f', ARGV[4], 'r', repeats, 'e', now + ttl)
  redis.call('EXPIRE', skey, ttl)
  out[#out + 1] = repeats
  if repeats >= tonumber(ARGV[6]) then out[#out + 1] = -1; return out end
else
  out[#out + 1] = -1
end
local nc = tonumber(ARGV[7])
if nc < 0 then out[#out + 1] = -1; return out end
local current, added = {}, {}
for i = 0, nc - 1 do
  local key = KEYS[k + i]
  local amount, limit = tonumber(ARGV[8 + 3 * i]), tonumber(ARGV[9 + 3 * i])
  if current[key] == nil then
    local c = redis.call('HMGET', key, 'v', 'e')
    local v = 0
    if c[1] and tonumber(c[2]) > now then v = tonumber(c[1]) end
    current[key] = v; added[key] = 0
  end
  local before = current[key] + added[key]
  if before + amount > limit then
    out[#out + 1] = 1; out[#out + 1] = i; out[#out + 1] = before; return out
  end
  added[key] = added[key] + amount
end
local used = {}
for i = 0, nc - 1 do
  local key = KEYS[k + i]
  local amount, ends = tonumber(ARGV[8 + 3 * i]), tonumber(ARGV[10 + 3 * i])
  local c = redis.call('HMGET', key, 'v', 'e')
  local v, e = 0, ends
  if c[1] and tonumber(c[2]) > now then v = tonumber(c[1]); e = math.max(tonumber(c[2]), ends) end
  redis.call('HSET', key, 'v', v + amount, 'e', e)
  redis.call('EXPIRE', key, math.max(e - now, 1))
  used[#used + 1] = v + amount
end
out[#out + 1] = 0
for _, v in ipairs(used) do out[#out + 1] = v end
return out
";

/// Sets a hold. KEYS: the scope's hash, the set of scopes. ARGV: scope, kind, hold JSON.
const SET_HOLD: &str = r"
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Lifts a hold. KEYS: the scope's hash, the set of scopes. ARGV: scope, kind. Returns 1 if one
/// was in force.
const CLEAR_HOLD: &str = r"
local n = redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return n
";

/// Every hold. KEYS: the set of scopes. ARGV: the prefix of the scopes' hashes.
const ALL_HOLDS: &str = r"
local out = {}
for _, scope in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, v in ipairs(redis.call('HVALS', ARGV[1] .. scope)) do out[#out + 1] = v end
end
return out
";

/// The state store in a Redis shared by every instance.
pub struct RedisState {
    pool: crate::redis_pool::Pool,
    prefix: String,
    /// The fleet's epoch when this instance connected (`<prefix>epoch`): made by the first
    /// instance of a fleet; gone, or another, once Redis lost or reset its data.
    epoch: String,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the prefix is shown.
        f.debug_struct("RedisState")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

/// A scope's name in keys.
fn scope_name(scope: &HoldScope) -> String {
    match scope {
        HoldScope::Global => "g".to_owned(),
        HoldScope::Tenant(t) => format!("t:{t}"),
        HoldScope::Agent(a) => format!("a:{a}"),
        HoldScope::Session(s) => format!("s:{s}"),
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    warden_core::canonical::push_hex(&mut s, bytes);
    s
}

impl RedisState {
    /// A store on the Redis at `url`, its keys under `prefix` (e.g. `warden:state:`): every
    /// instance of one fleet uses the same prefix. Connects once to check the server answers.
    ///
    /// # Errors
    /// [`StateError::Unavailable`]: a malformed URL, or no answer from the server.
    pub fn connect(url: &str, prefix: &str) -> Result<RedisState, StateError> {
        let mut store = RedisState {
            pool: crate::redis_pool::Pool::open(url).map_err(|e| unavailable(&e))?,
            prefix: prefix.to_owned(),
            epoch: String::new(),
        };
        let pong: String = store
            .pool
            .with(Duration::ZERO, |c| ::redis::cmd("PING").query(c))
            .map_err(|e| unavailable(&e))?;
        if pong != "PONG" {
            return Err(unavailable(&format!("PING answered {pong:?}")));
        }
        // The fleet's epoch: kept if there is one, else this instance starts one.
        let fresh = format!(
            "{:x}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        );
        let key = store.epoch_key();
        store.epoch = store
            .pool
            .with(Duration::ZERO, |c| {
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query::<()>(c)?;
                ::redis::cmd("GET").arg(&key).query::<Option<String>>(c)
            })
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| unavailable(&"the fleet's epoch vanished as it was set"))?;
        Ok(store)
    }

    /// Runs `script` with `keys` and `args`. INVARIANT (fail-closed): any error is
    /// [`StateError::Unavailable`] and the connection is dropped (the next call reconnects).
    fn eval<T: ::redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StateError> {
        self.pool
            .with(Duration::ZERO, |c| {
                ::redis::cmd("EVAL")
                    .arg(script)
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args)
                    .query(c)
            })
            .map_err(|e| unavailable(&e))
    }

    fn hold_key(&self, scope: &HoldScope) -> String {
        format!("{}h:{}", self.prefix, scope_name(scope))
    }

    fn holds_set(&self) -> String {
        format!("{}holds", self.prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }
}

fn parse_hold(json: &str) -> Result<Hold, StateError> {
    serde_json::from_str(json)
        .map_err(|e| StateError::Corrupted(format!("a hold in redis is not valid: {e}")))
}

/// Orders holds as the embedded stores do: by the scope's place in `scopes`, then by kind.
fn in_order(mut holds: Vec<Hold>, scopes: &[HoldScope]) -> Vec<Hold> {
    holds.sort_by_key(|h| (scopes.iter().position(|s| *s == h.scope), h.kind));
    holds
}

fn int(v: Option<&::redis::Value>) -> Result<i64, StateError> {
    match v {
        Some(::redis::Value::Int(n)) => Ok(*n),
        other => Err(StateError::Corrupted(format!(
            "unexpected answer from the settle script: {other:?}"
        ))),
    }
}

/// Reads [`SETTLE`]'s answer.
fn parse_settled(reply: &[::redis::Value], scopes: &[HoldScope]) -> Result<Settled, StateError> {
    let mut it = reply.iter();
    let first = int(it.next())?;
    // INVARIANT (fail-closed): a state that was lost (a Redis restarted without its data) is
    // never taken for a fresh one: budgets would start again from zero and holds be gone.
    if first == -2 {
        return Err(StateError::Unavailable(
            "the shared state in Redis was lost or reset since this instance started (its epoch \
             is gone): budgets and holds set before may be gone, so nothing is decided until \
             the instance is restarted by an operator who accepts that (docs/state.md)"
                .into(),
        ));
    }
    let n = usize::try_from(first).unwrap_or(0);
    let mut holds = Vec::with_capacity(n);
    for _ in 0..n {
        let json: String = it
            .next()
            .map(::redis::from_redis_value)
            .transpose()
            .map_err(|e| StateError::Corrupted(format!("a hold in redis: {e}")))?
            .unwrap_or_default();
        holds.push(parse_hold(&json)?);
    }
    let repeats = u32::try_from(int(it.next())?).ok();
    let mut used = Vec::new();
    let charged = match int(it.next())? {
        0 => {
            // Each counter's value after the charge, in the charges' order.
            for v in it.by_ref() {
                used.push(u64::try_from(int(Some(v))?).unwrap_or(0));
            }
            Some(ChargeOutcome::Charged)
        }
        1 => {
            let index = usize::try_from(int(it.next())?).unwrap_or(0);
            let current = u64::try_from(int(it.next())?).unwrap_or(0);
            Some(ChargeOutcome::Exceeded { index, current })
        }
        _ => None,
    };
    Ok(Settled {
        holds: in_order(holds, scopes),
        repeats,
        charged,
        used,
    })
}

impl StateStore for RedisState {
    fn check_and_charge(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
    ) -> Result<ChargeOutcome, StateError> {
        let settled = self.settle(&Settle {
            scopes: &[],
            observe: None,
            charge: Some(charges),
            now,
        })?;
        settled
            .charged
            .ok_or_else(|| StateError::Corrupted("the charge was not answered".into()))
    }

    fn observe_call(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: UnixSeconds,
        ttl: i64,
    ) -> Result<u32, StateError> {
        let settled = self.settle(&Settle {
            scopes: &[],
            observe: Some(warden_core::state::Observe {
                session,
                fingerprint,
                ttl,
                loop_at: u32::MAX,
            }),
            charge: None,
            now,
        })?;
        settled
            .repeats
            .ok_or_else(|| StateError::Corrupted("the observation was not answered".into()))
    }

    fn settle(&self, s: &Settle<'_>) -> Result<Settled, StateError> {
        let mut keys: Vec<String> = s.scopes.iter().map(|sc| self.hold_key(sc)).collect();
        let mut args = vec![s.now.to_string(), s.scopes.len().to_string()];
        match &s.observe {
            Some(o) => {
                keys.push(format!("{}s:{}", self.prefix, o.session));
                args.extend([
                    "1".to_owned(),
                    hex(&o.fingerprint),
                    o.ttl.to_string(),
                    o.loop_at.to_string(),
                ]);
            }
            None => args.extend(["0".into(), String::new(), "0".into(), "0".into()]),
        }
        match s.charge {
            Some(charges) => {
                args.push(charges.len().to_string());
                for c in charges {
                    keys.push(format!("{}c:{}", self.prefix, c.key));
                    args.extend([
                        c.amount.to_string(),
                        c.limit.to_string(),
                        c.expires_at.to_string(),
                    ]);
                }
            }
            None => args.push("-1".into()),
        }
        keys.push(self.epoch_key());
        args.push(self.epoch.clone());
        let reply: Vec<::redis::Value> = self.eval(SETTLE, &keys, &args)?;
        parse_settled(&reply, s.scopes)
    }

    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        let settled = self.settle(&Settle {
            scopes,
            observe: None,
            charge: None,
            now: 0,
        })?;
        Ok(settled.holds)
    }

    fn set_hold(&self, hold: Hold) -> Result<(), StateError> {
        let json = serde_json::to_string(&hold)
            .map_err(|e| StateError::Unavailable(format!("cannot encode the hold: {e}")))?;
        let keys = [self.hold_key(&hold.scope), self.holds_set()];
        let args = [scope_name(&hold.scope), hold.kind.as_str().to_owned(), json];
        let _: i64 = self.eval(SET_HOLD, &keys, &args)?;
        Ok(())
    }

    fn clear_hold(&self, scope: &HoldScope, kind: HoldKind) -> Result<bool, StateError> {
        let keys = [self.hold_key(scope), self.holds_set()];
        let args = [scope_name(scope), kind.as_str().to_owned()];
        let n: i64 = self.eval(CLEAR_HOLD, &keys, &args)?;
        Ok(n > 0)
    }

    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        let keys = [self.holds_set()];
        let args = [format!("{}h:", self.prefix)];
        let all: Vec<String> = self.eval(ALL_HOLDS, &keys, &args)?;
        let mut holds = all
            .iter()
            .map(|j| parse_hold(j))
            .collect::<Result<Vec<_>, _>>()?;
        holds.sort_by(|a, b| (&a.scope, a.kind).cmp(&(&b.scope, b.kind)));
        Ok(holds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_have_distinct_names() {
        let names = [
            scope_name(&HoldScope::Global),
            scope_name(&HoldScope::Tenant("x".into())),
            scope_name(&HoldScope::Agent("x".into())),
            scope_name(&HoldScope::Session("x".into())),
        ];
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn an_unreachable_redis_is_unavailable_not_empty() {
        // Nothing listens on port 1: the store does not open, and says why.
        match RedisState::connect("redis://127.0.0.1:1/", "t:") {
            Err(StateError::Unavailable(why)) => assert!(why.contains("redis"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
