//! The approval book a fleet shares: [`RedisBook`] keeps approval requests in the Redis every
//! instance uses, so that a call escalated through one instance can be voted through a second
//! and run, once, through a third.
//!
//! Keys, under the fleet's prefix `P`:
//!
//! - `P approval:<id>`: the request, its vote being recorded and its hold (JSON);
//! - `P approval-call:<digest>`: the open request of one call ([`Binding::call`]);
//! - `P approval-agent:<agent>`: the ids of the agent's requests (its cap is counted over them);
//! - `P approval-nonce:<nonce>`: a vote's nonce, until its signature is stale;
//! - `P approvals` (sorted set by creation) and `P approval-agents` (set): what is kept, for
//!   listing, expiry and the decisions' shortcut.
//!
//! Every change is optimistic: the keys a step read are read again by one Lua script, which
//! writes only if none changed since (else the step is run again on what is there now). So two
//! instances never both count a vote, hold an approval or redeem it. A request an instance holds
//! for a call being decided, or a vote it counted and is recording, is a lease: if the instance
//! dies, the hold lapses and the vote is withdrawn after [`LEASE_MS`] (fail closed: an
//! unrecorded vote never counts). Expiry is computed on every read; the instance whose
//! [`ApprovalStore::take_expired`] first writes it reports it, once for the fleet.
//!
//! Any Redis error, and anything in Redis that Warden did not write, is
//! [`ApprovalError::Unavailable`]: nothing is changed and nothing authorized.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::book::{count_vote, nonce_forget_at, shown, VoteChecks, KEEP_FINISHED_MS};
use super::signature::hex;
use super::{
    valid_id, ApprovalError, ApprovalStore, Approver, Binding, Claim, Request, Requirement,
    Settings, SignedVote, Status, Voted,
};

/// How long an instance may hold an approved request for a call it is deciding, or keep a
/// counted vote it is recording, before the fleet takes it as let go: far above what a decision
/// or a ledger write takes.
pub const LEASE_MS: i64 = 30_000;
/// How often an instance reads which agents have requests (the decisions' shortcut) and the
/// status of the requests its calls wait for.
const POLL: Duration = Duration::from_millis(200);
/// How often a step is run again when another instance changed what it read.
const ATTEMPTS: u32 = 32;

/// Writes the keys a step changed if none of the keys it read changed since.
/// KEYS: the keys read (then the sorted set, the agents' set). ARGV: their count, then per key
/// the value read (`-` absent, `=value`), what to write (`.` nothing, `-` delete, `=value`) and
/// its time to live in ms (`0` keeps the one it has); then a sorted-set score and member and
/// a set member to add (empty: none).
const APPLY: &str = r"
local n = tonumber(ARGV[1])
for i = 1, n do
  local seen = ARGV[3 * i - 1]
  local now = redis.call('GET', KEYS[i])
  if seen == '-' then
    if now then return 'conflict' end
  elseif (not now) or ('=' .. now) ~= seen then
    return 'conflict'
  end
end
for i = 1, n do
  local new = ARGV[3 * i]
  local px = tonumber(ARGV[3 * i + 1])
  local tag = string.sub(new, 1, 1)
  if tag == '-' then
    redis.call('DEL', KEYS[i])
  elseif tag == '=' then
    if px > 0 then
      redis.call('SET', KEYS[i], string.sub(new, 2), 'PX', px)
    else
      redis.call('SET', KEYS[i], string.sub(new, 2), 'KEEPTTL')
    end
  end
end
local base = 3 * n + 2
if ARGV[base + 1] ~= '' then redis.call('ZADD', KEYS[n + 1], ARGV[base], ARGV[base + 1]) end
if ARGV[base + 2] ~= '' then redis.call('SADD', KEYS[n + 2], ARGV[base + 2]) end
return 'ok'
";

/// Forgets, from the sorted set and the agents' set, what Redis expired.
/// KEYS: the sorted set, the agents' set. ARGV: the request and agent key prefixes.
const PRUNE: &str = r"
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then redis.call('ZREM', KEYS[1], id) end
end
for _, agent in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[2] .. agent) == 0 then redis.call('SREM', KEYS[2], agent) end
end
return 0
";

/// A request as kept in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    request: Request,
    /// A counted vote whose ledger record is not yet confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncommitted: Option<Uncommitted>,
    /// Held for a call being decided until then (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_until_ms: Option<i64>,
    /// Its expiry was reported (by some instance's `take_expired`).
    #[serde(default)]
    reported: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Uncommitted {
    approver: String,
    /// The vote's nonce: only its own commit or withdrawal acts on it.
    nonce: String,
    to: Status,
    until_ms: i64,
}

impl Record {
    /// The record as it stands at `now_ms`: a lease that lapsed is let go (its vote withdrawn),
    /// an open request past its expiry and not held is expired.
    fn settle(mut self, now_ms: i64) -> Record {
        if self
            .uncommitted
            .as_ref()
            .is_some_and(|u| now_ms >= u.until_ms)
        {
            if let Some(u) = self.uncommitted.take() {
                self.request.votes.retain(|v| v.approver != u.approver);
            }
        }
        if self.held_until_ms.is_some_and(|t| now_ms >= t) {
            // INVARIANT (single use, fail-closed): a hold whose instance never spent nor
            // released it may have run its call: the approval is gone (expired, and reported
            // so), never approved again.
            self.held_until_ms = None;
            if self.request.status == Status::Approved {
                self.request.status = Status::Expired;
            }
        }
        if self.open() && self.held_until_ms.is_none() && now_ms >= self.request.expires_ms {
            self.request.status = Status::Expired;
        }
        self
    }

    fn open(&self) -> bool {
        matches!(self.request.status, Status::Pending | Status::Approved)
    }

    /// Whether it is the request of its call (what an unnamed claim finds): open, or denied
    /// until its expiry (a denial is final for the call).
    fn stands_for_call(&self, now_ms: i64) -> bool {
        self.open() || (self.request.status == Status::Denied && now_ms < self.request.expires_ms)
    }

    /// How long Redis keeps it, from `now_ms`: until it has been finished for an hour.
    fn ttl_ms(&self, now_ms: i64) -> i64 {
        self.request
            .expires_ms
            .saturating_sub(now_ms)
            .max(0)
            .saturating_add(KEEP_FINISHED_MS)
    }
}

/// What an approval named by a call is to it.
enum Named {
    /// Its request (key and record), for that call.
    Found(String, Box<Record>),
    /// Given under an older manifest version: it no longer fits (ask again).
    OlderVersion,
    /// Unknown, or for another call.
    Refused(ApprovalError),
}

/// Why a step stopped.
enum Fail {
    /// The approval rules refused.
    Refused(ApprovalError),
    /// Redis failed, or held something Warden did not write.
    Store(String),
    /// The connection was found closed (a Redis that restarted closes every connection).
    Dropped(String),
}

impl From<redis::RedisError> for Fail {
    fn from(e: redis::RedisError) -> Self {
        if e.is_connection_dropped() {
            Fail::Dropped(format!("redis: {e}"))
        } else {
            Fail::Store(format!("redis: {e}"))
        }
    }
}

/// What one step read, and will write if none of it changed.
struct Txn<'c> {
    conn: &'c mut redis::Connection,
    reads: Vec<(String, Option<String>)>,
    writes: HashMap<String, (Option<String>, i64)>,
    scored: Option<(i64, String)>,
    agent: Option<String>,
}

impl Txn<'_> {
    /// Reads `keys`, remembering what they held.
    fn get(&mut self, keys: &[String]) -> Result<Vec<Option<String>>, Fail> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query(self.conn)?;
        if values.len() != keys.len() {
            return Err(Fail::Store(
                "MGET answered the wrong number of values".into(),
            ));
        }
        self.reads
            .extend(keys.iter().cloned().zip(values.iter().cloned()));
        Ok(values)
    }

    fn get_one(&mut self, key: &str) -> Result<Option<String>, Fail> {
        Ok(self.get(&[key.to_owned()])?.into_iter().next().flatten())
    }

    /// Reads the record at `key`, as it stands at `now_ms`.
    fn record(&mut self, key: &str, now_ms: i64) -> Result<Option<Record>, Fail> {
        self.get_one(key)?
            .map(|v| parse(&v).map(|r| r.settle(now_ms)))
            .transpose()
    }

    /// Writes `value` (`None` deletes) at `key`, which the step read; `ttl_ms` 0 keeps its
    /// time to live.
    fn set(&mut self, key: &str, value: Option<String>, ttl_ms: i64) {
        self.writes.insert(key.to_owned(), (value, ttl_ms));
    }

    fn put(&mut self, key: &str, record: &Record, now_ms: Option<i64>) -> Result<(), Fail> {
        let json = serde_json::to_string(record).map_err(|e| Fail::Store(e.to_string()))?;
        let ttl = now_ms.map_or(0, |now| record.ttl_ms(now));
        self.set(key, Some(json), ttl);
        Ok(())
    }
}

/// Runs `script` with `keys` and `args`.
fn eval<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    script: &str,
    keys: &[String],
    args: &[String],
) -> Result<T, Fail> {
    Ok(redis::cmd("EVAL")
        .arg(script)
        .arg(keys.len())
        .arg(keys)
        .arg(args)
        .query(conn)?)
}

fn parse(v: &str) -> Result<Record, Fail> {
    serde_json::from_str(v).map_err(|e| {
        Fail::Store(format!(
            "an approval request in Redis is not one Warden wrote ({e})"
        ))
    })
}

/// What is shared between a [`RedisBook`] and its watching thread.
struct Shared {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    prefix: String,
    settings: Mutex<Settings>,
    /// Agents that have requests kept (read every [`POLL`]; this instance's own at once).
    agents: RwLock<HashSet<String>>,
    /// The requests this instance's calls wait for.
    watched: Mutex<HashMap<String, tokio::sync::watch::Sender<Status>>>,
}

/// Approval requests in a fleet's Redis ([`ApprovalStore`]).
pub struct RedisBook {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the prefix is shown.
        f.debug_struct("RedisBook")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is whole or not at all: recover the guard.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisBook {
    /// The book on the Redis at `url`, its keys under `prefix`. Connects on first use; a thread
    /// reads, every 200 ms, which agents have requests and how the awaited ones stand.
    ///
    /// # Errors
    /// [`ApprovalError::Unavailable`] for a malformed URL or a thread that cannot start.
    pub fn new(url: &str, prefix: &str, settings: Settings) -> Result<RedisBook, ApprovalError> {
        let client = redis::Client::open(url)
            .map_err(|e| ApprovalError::Unavailable(format!("redis URL: {e}")))?;
        let shared = Arc::new(Shared {
            client,
            conn: Mutex::new(None),
            prefix: prefix.to_owned(),
            settings: Mutex::new(settings),
            agents: RwLock::new(HashSet::new()),
            watched: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("warden-approvals".into())
            .spawn(move || watch(&weak))
            .map_err(|e| ApprovalError::Unavailable(format!("watching thread: {e}")))?;
        Ok(RedisBook { shared })
    }
}

impl Shared {
    fn record_key(&self, id: &str) -> String {
        format!("{}approval:{id}", self.prefix)
    }

    fn call_key(&self, binding: &Binding) -> String {
        let call = serde_json::json!([
            binding.agent,
            binding.tenant,
            binding.owner,
            binding.tool,
            binding.arguments_hash,
            binding.manifest_version,
        ]);
        format!(
            "{}approval-call:{}",
            self.prefix,
            warden_core::canonical::json_digest(&call)
        )
    }

    fn agent_key(&self, agent: &str) -> String {
        format!("{}approval-agent:{agent}", self.prefix)
    }

    fn nonce_key(&self, nonce: &str) -> String {
        format!("{}approval-nonce:{nonce}", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}approvals", self.prefix)
    }

    fn agents_key(&self) -> String {
        format!("{}approval-agents", self.prefix)
    }

    fn settings(&self) -> Settings {
        *lock(&self.settings)
    }

    /// Runs `f` on the connection (opened if needed); a Redis error drops it (the next call
    /// reconnects). A kept connection found closed (Redis restarted since it was opened) is
    /// replaced and `f` run once more on the new one, rather than refusing the first request
    /// after a restart. The rerun does nothing twice: every write goes through `APPLY`, which
    /// applies only over the values the step read, and a vote's nonce is kept with it, so a rerun
    /// after a write that did land reads it back (a vote then refused as replayed, and withdrawn
    /// with its lease).
    fn with<T>(&self, f: impl FnMut(&mut redis::Connection) -> Result<T, Fail>) -> Result<T, Fail> {
        let mut slot = lock(&self.conn);
        crate::kept_connection::run(&self.client, &mut slot, f, |e: &Fail| match e {
            Fail::Refused(_) => crate::kept_connection::Meant::Kept,
            Fail::Store(_) => crate::kept_connection::Meant::Broken,
            Fail::Dropped(_) => crate::kept_connection::Meant::Closed,
        })
    }

    /// Runs `step` until what it read is unchanged when its writes apply.
    fn run<T>(
        &self,
        mut step: impl FnMut(&mut Txn<'_>) -> Result<T, Fail>,
    ) -> Result<T, ApprovalError> {
        let out = self.with(|conn| {
            for _ in 0..ATTEMPTS {
                let mut txn = Txn {
                    conn,
                    reads: Vec::new(),
                    writes: HashMap::new(),
                    scored: None,
                    agent: None,
                };
                let out = step(&mut txn)?;
                if self.apply(txn)? {
                    return Ok(out);
                }
            }
            Err(Fail::Store(
                "the request kept changing under this instance; try again".into(),
            ))
        });
        out.map_err(|f| match f {
            Fail::Refused(e) => e,
            Fail::Store(why) | Fail::Dropped(why) => ApprovalError::Unavailable(why),
        })
    }

    /// [`Txn::apply`] with the two index keys.
    fn apply(&self, txn: Txn<'_>) -> Result<bool, Fail> {
        if txn.writes.is_empty() && txn.scored.is_none() && txn.agent.is_none() {
            return Ok(true);
        }
        for key in txn.writes.keys() {
            if !txn.reads.iter().any(|(k, _)| k == key) {
                return Err(Fail::Store(format!("write to `{key}` without reading it")));
            }
        }
        let mut keys: Vec<String> = Vec::with_capacity(txn.reads.len() + 2);
        let mut args: Vec<String> = vec![txn.reads.len().to_string()];
        for (key, seen) in &txn.reads {
            keys.push(key.clone());
            args.push(
                seen.as_ref()
                    .map_or_else(|| "-".into(), |v| format!("={v}")),
            );
            let (new, ttl) = match txn.writes.get(key) {
                None => (".".to_owned(), 0),
                Some((None, _)) => ("-".to_owned(), 0),
                Some((Some(v), ttl)) => (format!("={v}"), *ttl),
            };
            args.push(new);
            args.push(ttl.max(0).to_string());
        }
        keys.push(self.index_key());
        keys.push(self.agents_key());
        let (score, member) = txn.scored.unwrap_or((0, String::new()));
        args.extend([score.to_string(), member, txn.agent.unwrap_or_default()]);
        let answer: String = eval(txn.conn, APPLY, &keys, &args)?;
        Ok(answer == "ok")
    }

    /// The ids of `agent`'s requests, as kept.
    fn agent_ids(txn: &mut Txn<'_>, key: &str) -> Result<Vec<String>, Fail> {
        match txn.get_one(key)? {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_str(&v).map_err(|e| {
                Fail::Store(format!(
                    "an agent's approval list in Redis is not one Warden wrote ({e})"
                ))
            }),
        }
    }

    /// `binding`'s agent's open requests under its manifest version (but `except`), and the
    /// ids still kept.
    fn open_of(
        &self,
        txn: &mut Txn<'_>,
        binding: &Binding,
        except: Option<&str>,
        now_ms: i64,
    ) -> Result<(usize, Vec<String>), Fail> {
        let ids = Self::agent_ids(txn, &self.agent_key(&binding.agent))?;
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let values = txn.get(&keys)?;
        let mut open = 0;
        let mut kept = Vec::new();
        for (id, value) in ids.into_iter().zip(values) {
            let Some(value) = value else { continue };
            let r = parse(&value)?.settle(now_ms);
            if r.open()
                && r.request.binding.agent == binding.agent
                && r.request.binding.manifest_version == binding.manifest_version
                && except != Some(id.as_str())
            {
                open += 1;
            }
            kept.push(id);
        }
        Ok((open, kept))
    }

    /// The request named `id`, for `binding`'s call.
    fn named(
        &self,
        txn: &mut Txn<'_>,
        id: &str,
        binding: &Binding,
        now_ms: i64,
    ) -> Result<Named, Fail> {
        let key = self.record_key(id);
        let record = if valid_id(id) {
            txn.record(&key, now_ms)?
        } else {
            None
        };
        let Some(record) = record else {
            return Ok(Named::Refused(ApprovalError::Unknown(shown(id))));
        };
        // INVARIANT (bound approvals): an approval authorizes only the exact call it was given
        // for.
        Ok(match record.request.binding.first_difference(binding) {
            None => Named::Found(key, Box::new(record)),
            // Given under an older manifest: it no longer fits; ask again.
            Some("manifest version") => Named::OlderVersion,
            Some(field) => Named::Refused(ApprovalError::OtherCall {
                id: id.to_owned(),
                field,
            }),
        })
    }

    /// The request that stands for `binding`'s call, with its key.
    fn of_call(
        &self,
        txn: &mut Txn<'_>,
        binding: &Binding,
        now_ms: i64,
    ) -> Result<Option<(String, Record)>, Fail> {
        let Some(id) = txn.get_one(&self.call_key(binding))? else {
            return Ok(None);
        };
        let key = self.record_key(&id);
        Ok(txn
            .record(&key, now_ms)?
            .filter(|r| r.stands_for_call(now_ms))
            .map(|r| (key, r)))
    }

    /// Marks `record` (at `key`) expired because its call now needs something else, and frees
    /// its call (it is reported by `take_expired`).
    fn supersede(&self, txn: &mut Txn<'_>, key: &str, mut record: Record) -> Result<(), Fail> {
        record.request.status = Status::Expired;
        record.held_until_ms = None;
        record.reported = false;
        let call = self.call_key(&record.request.binding);
        if txn.get_one(&call)?.as_deref() == Some(record.request.id.as_str()) {
            txn.set(&call, None, 0);
        }
        txn.put(key, &record, None)
    }

    /// Tells this instance's waiting calls where `id` stands.
    fn notify(&self, id: &str, status: Status) {
        if let Some(tx) = lock(&self.watched).get(id) {
            tx.send_if_modified(|s| std::mem::replace(s, status) != status);
        }
    }

    /// One round of the watching thread.
    fn refresh(&self) -> Result<(), Fail> {
        let agents_key = self.agents_key();
        let agents: HashSet<String> =
            self.with(|c| Ok(redis::cmd("SMEMBERS").arg(&agents_key).query(c)?))?;
        // This instance's own additions since stay (they are in Redis too, unless pruned).
        *self.agents.write().unwrap_or_else(PoisonError::into_inner) = agents;
        let ids: Vec<String> = {
            let mut watched = lock(&self.watched);
            watched.retain(|_, tx| tx.receiver_count() > 0);
            watched.keys().cloned().collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let values: Vec<Option<String>> =
            self.with(|c| Ok(redis::cmd("MGET").arg(&keys).query(c)?))?;
        let now_ms = now_unix_ms();
        for (id, value) in ids.iter().zip(values) {
            let status = match value {
                Some(v) => parse(&v)?.settle(now_ms).request.status,
                None => Status::Expired,
            };
            self.notify(id, status);
        }
        Ok(())
    }
}

/// The watching thread: until the book is dropped.
fn watch(shared: &Weak<Shared>) {
    loop {
        std::thread::sleep(POLL);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // A failed round is tried again on the next; decisions fail closed on their own reads
        // meanwhile.
        if let Err(
            Fail::Store(why) | Fail::Dropped(why) | Fail::Refused(ApprovalError::Unavailable(why)),
        ) = shared.refresh()
        {
            tracing::debug!(%why, "could not read the fleet's approvals");
        }
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ApprovalStore for RedisBook {
    fn settings(&self) -> Settings {
        self.shared.settings()
    }

    fn set_settings(&self, settings: Settings) {
        *lock(&self.shared.settings) = settings;
    }

    fn open(
        &self,
        binding: &Binding,
        requirement: Requirement,
        critical: bool,
        preview: serde_json::Value,
        now_ms: i64,
    ) -> Result<(Request, bool), ApprovalError> {
        let s = &*self.shared;
        let settings = s.settings();
        let mut superseded = None;
        let out = s.run(|txn| {
            superseded = None;
            let mut except = None;
            if let Some((key, record)) = s.of_call(txn, binding, now_ms)? {
                let id = record.request.id.clone();
                match record.request.status {
                    Status::Denied => {
                        return Err(Fail::Refused(ApprovalError::NotApproved {
                            id,
                            status: Status::Denied,
                        }))
                    }
                    // The same call under the same requirement joins the open request.
                    _ if record.request.requirement == requirement
                        && record.request.critical == critical =>
                    {
                        return Ok((record.request, false));
                    }
                    // The requirement changed: the old request cannot satisfy it.
                    _ => {
                        s.supersede(txn, &key, record)?;
                        superseded = Some(id.clone());
                        except = Some(id);
                    }
                }
            }
            let (open, mut kept) = s.open_of(txn, binding, except.as_deref(), now_ms)?;
            // INVARIANT (bounded): an agent cannot flood approvers or memory with requests.
            if open >= settings.max_open_per_agent {
                return Err(Fail::Refused(ApprovalError::TooManyOpen {
                    agent: binding.agent.clone(),
                    open,
                }));
            }
            let mut raw = [0u8; 12];
            getrandom::fill(&mut raw).map_err(|_| Fail::Refused(ApprovalError::NoRandomness))?;
            let request = Request {
                id: format!("apr_{}", hex(&raw)),
                binding: binding.clone(),
                requirement: requirement.clone(),
                critical,
                preview: preview.clone(),
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(settings.request_ttl_ms),
                status: Status::Pending,
                votes: Vec::new(),
            };
            let key = s.record_key(&request.id);
            if txn.get_one(&key)?.is_some() {
                return Err(Fail::Store("an approval id was drawn twice".into()));
            }
            let record = Record {
                request: request.clone(),
                uncommitted: None,
                held_until_ms: None,
                reported: false,
            };
            txn.put(&key, &record, Some(now_ms))?;
            let lives = settings
                .request_ttl_ms
                .saturating_add(settings.redeem_ttl_ms)
                .saturating_add(KEEP_FINISHED_MS);
            txn.set(&s.call_key(binding), Some(request.id.clone()), lives);
            kept.push(request.id.clone());
            let ids = serde_json::to_string(&kept).map_err(|e| Fail::Store(e.to_string()))?;
            txn.set(&s.agent_key(&binding.agent), Some(ids), lives);
            txn.scored = Some((now_ms, request.id.clone()));
            txn.agent = Some(binding.agent.clone());
            Ok((request, true))
        })?;
        if let Some(id) = superseded {
            s.notify(&id, Status::Expired);
        }
        s.agents
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(binding.agent.clone());
        Ok(out)
    }

    fn vote(
        &self,
        vote: &SignedVote,
        approvers: &HashMap<String, Approver>,
        is_agent: &dyn Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<Voted, ApprovalError> {
        let s = &*self.shared;
        if !valid_id(&vote.request) {
            return Err(ApprovalError::Unknown(shown(&vote.request)));
        }
        let window = s.settings().vote_window_ms;
        s.run(|txn| {
            let key = s.record_key(&vote.request);
            let Some(mut record) = txn.record(&key, now_ms)? else {
                return Err(Fail::Refused(ApprovalError::Unknown(vote.request.clone())));
            };
            // A nonce of the wrong form is refused by the checks below; only a well-formed one
            // names a key.
            let well_formed =
                vote.nonce.len() == 32 && vote.nonce.bytes().all(|b| b.is_ascii_hexdigit());
            let nonce = s.nonce_key(&vote.nonce);
            let seen = well_formed && txn.get_one(&nonce)?.is_some();
            let checks = VoteChecks {
                approvers,
                is_agent,
                seen: &|_| seen,
                busy: record.uncommitted.is_some(),
                window_ms: window,
                now_ms,
            };
            checks.admit(&record.request, vote).map_err(Fail::Refused)?;
            let to = count_vote(&mut record.request, vote, now_ms);
            // Counted, but nothing changes until the vote's record is durable (commit).
            record.uncommitted = Some(Uncommitted {
                approver: vote.approver.clone(),
                nonce: vote.nonce.clone(),
                to,
                until_ms: now_ms.saturating_add(LEASE_MS),
            });
            txn.put(&key, &record, Some(now_ms))?;
            let forget = nonce_forget_at(vote, window).saturating_sub(now_ms).max(1);
            txn.set(&nonce, Some("1".into()), forget);
            let mut request = record.request;
            request.status = to;
            Ok(Voted {
                decided: to != Status::Pending,
                request,
            })
        })
    }

    fn commit(&self, id: &str, nonce: &str, now_ms: i64) -> Option<Request> {
        let s = &*self.shared;
        if !valid_id(id) {
            return None;
        }
        let redeem = s.settings().redeem_ttl_ms;
        let request = s
            .run(|txn| {
                let key = s.record_key(id);
                let Some(mut record) = txn.record(&key, now_ms)? else {
                    return Ok(None);
                };
                // Only this very vote, still within its lease (else it was withdrawn).
                let mine = record
                    .uncommitted
                    .as_ref()
                    .is_some_and(|u| u.nonce == nonce);
                if !mine {
                    return Ok(None);
                }
                if let Some(u) = record.uncommitted.take() {
                    if record.request.status == Status::Pending && u.to != Status::Pending {
                        record.request.status = u.to;
                        if u.to == Status::Approved {
                            record.request.expires_ms = now_ms.saturating_add(redeem);
                        }
                    }
                    txn.put(&key, &record, Some(now_ms))?;
                }
                Ok(Some(record.request))
            })
            // INVARIANT (fail-closed): a vote whose commit did not reach the store stays
            // uncommitted and is withdrawn when its lease lapses; it authorizes nothing.
            .ok()
            .flatten()?;
        s.notify(id, request.status);
        Some(request)
    }

    fn withdraw(&self, id: &str, nonce: &str) {
        let s = &*self.shared;
        if !valid_id(id) {
            return;
        }
        // A withdrawal that cannot reach the store lapses with its lease instead.
        let _ = s.run(|txn| {
            let key = s.record_key(id);
            let Some(value) = txn.get_one(&key)? else {
                return Ok(());
            };
            let mut record = parse(&value)?;
            if record
                .uncommitted
                .as_ref()
                .is_some_and(|u| u.nonce == nonce)
            {
                if let Some(u) = record.uncommitted.take() {
                    record.request.votes.retain(|v| v.approver != u.approver);
                }
                txn.put(&key, &record, None)?;
            }
            Ok(())
        });
    }

    fn claim(&self, binding: &Binding, id: Option<&str>, now_ms: i64) -> Claim {
        let s = &*self.shared;
        let settings = s.settings();
        let claimed = s.run(|txn| {
            let found = match id {
                Some(id) => match s.named(txn, id, binding, now_ms)? {
                    Named::Found(key, record) => Some((key, *record)),
                    Named::OlderVersion => None,
                    Named::Refused(e) => return Ok(Claim::Refused(e)),
                },
                None => s.of_call(txn, binding, now_ms)?,
            };
            if let Some((key, mut record)) = found {
                let id = record.request.id.clone();
                return Ok(match record.request.status {
                    Status::Pending => Claim::Pending(id),
                    // Held by a concurrent call of the same: as good as used for this one.
                    Status::Approved if record.held_until_ms.is_some() => {
                        Claim::Refused(ApprovalError::NotApproved {
                            id,
                            status: Status::Used,
                        })
                    }
                    Status::Approved => {
                        record.held_until_ms = Some(now_ms.saturating_add(LEASE_MS));
                        txn.put(&key, &record, Some(now_ms))?;
                        Claim::Approved(Box::new(record.request))
                    }
                    status => Claim::Refused(ApprovalError::NotApproved { id, status }),
                });
            }
            let (open, _) = s.open_of(txn, binding, None, now_ms)?;
            // INVARIANT (bounded): an agent cannot flood approvers or memory with requests.
            if open >= settings.max_open_per_agent {
                return Ok(Claim::Full(ApprovalError::TooManyOpen {
                    agent: binding.agent.clone(),
                    open,
                }));
            }
            Ok(Claim::None)
        });
        // INVARIANT (fail-closed): a claim the store could not answer refuses the call.
        claimed.unwrap_or_else(Claim::Refused)
    }

    fn has_requests_of(&self, agent: &str) -> bool {
        // A request opened through another instance is seen here within one poll; a call that
        // misses it meanwhile is decided without its approval (stricter, never laxer) and
        // joins the open request when escalated.
        self.shared
            .agents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(agent)
    }

    fn spend(&self, id: &str, now_ms: i64) {
        let s = &*self.shared;
        if !valid_id(id) {
            return;
        }
        // INVARIANT (single use): an approval authorizes one execution. A spend that cannot
        // reach the store leaves the request held until its lease lapses; the grant minted
        // from the decision is itself single-use.
        let spent = s.run(|txn| {
            let key = s.record_key(id);
            let Some(mut record) = txn.record(&key, now_ms)? else {
                return Ok(false);
            };
            // Only a held approval is spent: one whose hold lapsed is expired already (and
            // stays so, to be reported).
            if record.request.status != Status::Approved || record.held_until_ms.is_none() {
                return Ok(false);
            }
            record.held_until_ms = None;
            record.request.status = Status::Used;
            let call = s.call_key(&record.request.binding);
            if txn.get_one(&call)?.as_deref() == Some(id) {
                txn.set(&call, None, 0);
            }
            txn.put(&key, &record, None)?;
            Ok(true)
        });
        if spent == Ok(true) {
            s.notify(id, Status::Used);
        }
    }

    fn release(&self, id: &str, now_ms: i64) {
        let s = &*self.shared;
        if !valid_id(id) {
            return;
        }
        // A release that cannot reach the store lapses with its lease instead. One that comes
        // after the lease lapsed finds the approval expired (settled), and leaves it so.
        let _ = s.run(|txn| {
            let key = s.record_key(id);
            let Some(value) = txn.get_one(&key)? else {
                return Ok(());
            };
            let raw = parse(&value)?;
            let held = raw.held_until_ms.is_some();
            let mut record = raw.settle(now_ms);
            if held {
                record.held_until_ms = None;
                txn.put(&key, &record, None)?;
            }
            Ok(())
        });
    }

    fn redeem(
        &self,
        binding: &Binding,
        id: Option<&str>,
        requirement: &Requirement,
        critical: bool,
        now_ms: i64,
    ) -> Result<Option<Request>, ApprovalError> {
        let s = &*self.shared;
        let mut superseded = None;
        let out = s.run(|txn| {
            superseded = None;
            let (key, mut record) = match id {
                Some(id) => match s.named(txn, id, binding, now_ms)? {
                    Named::Found(key, record) => (key, *record),
                    Named::OlderVersion => return Ok(None),
                    Named::Refused(e) => return Err(Fail::Refused(e)),
                },
                None => match s.of_call(txn, binding, now_ms)? {
                    Some(found) => found,
                    None => return Ok(None),
                },
            };
            let id = record.request.id.clone();
            match record.request.status {
                Status::Pending => return Ok(None),
                Status::Approved => {}
                status => return Err(Fail::Refused(ApprovalError::NotApproved { id, status })),
            }
            // INVARIANT (bound approvals): approved for what the call needs now, not for a
            // lesser requirement it needed before.
            if record.request.requirement != *requirement || record.request.critical != critical {
                s.supersede(txn, &key, record)?;
                superseded = Some(id);
                return Ok(None);
            }
            // INVARIANT (single use): an approval authorizes one execution.
            record.request.status = Status::Used;
            record.held_until_ms = None;
            let call = s.call_key(binding);
            if txn.get_one(&call)?.is_some() {
                txn.set(&call, None, 0);
            }
            txn.put(&key, &record, Some(now_ms))?;
            Ok(Some(record.request))
        })?;
        if let Some(id) = superseded {
            s.notify(&id, Status::Expired);
        }
        if let Some(r) = &out {
            s.notify(&r.id, Status::Used);
        }
        Ok(out)
    }

    fn get(&self, id: &str, now_ms: i64) -> Option<Request> {
        let s = &*self.shared;
        if !valid_id(id) {
            return None;
        }
        s.run(|txn| Ok(txn.record(&s.record_key(id), now_ms)?.map(|r| r.request)))
            .ok()
            .flatten()
    }

    fn list(&self, now_ms: i64) -> Vec<Request> {
        let s = &*self.shared;
        let listed = s.run(|txn| {
            let index = s.index_key();
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .query(txn.conn)?;
            let keys: Vec<String> = ids.iter().map(|id| s.record_key(id)).collect();
            let mut all = Vec::new();
            for value in txn.get(&keys)?.into_iter().flatten() {
                all.push(parse(&value)?.settle(now_ms).request);
            }
            Ok(all)
        });
        let mut all = listed.unwrap_or_default();
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        all
    }

    fn subscribe(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Status>> {
        let s = &*self.shared;
        let status = self.get(id, now_unix_ms())?.status;
        let mut watched = lock(&s.watched);
        let tx = watched
            .entry(id.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(status).0);
        Some(tx.subscribe())
    }

    fn take_expired(&self, now_ms: i64) -> Vec<Request> {
        let s = &*self.shared;
        let index = s.index_key();
        let kept = s.with(|c| {
            let _: i64 = eval(
                c,
                PRUNE,
                &[index.clone(), s.agents_key()],
                &[s.record_key(""), s.agent_key("")],
            )?;
            let ids: Vec<String> = redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query(c)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| s.record_key(id)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(c)?;
            Ok(ids.into_iter().zip(values).collect::<Vec<_>>())
        });
        let Ok(kept) = kept else {
            return Vec::new();
        };
        // Only those expired and not yet reported are tried (one round trip each).
        let due = kept.into_iter().filter_map(|(id, value)| {
            let r = parse(&value?).ok()?.settle(now_ms);
            (r.request.status == Status::Expired && !r.reported).then_some(id)
        });
        let mut expired = Vec::new();
        for id in due {
            // Each request on its own: the instance whose write lands reports it.
            let reported = s.run(|txn| {
                let key = s.record_key(&id);
                let Some(mut record) = txn.record(&key, now_ms)? else {
                    return Ok(None);
                };
                if record.request.status != Status::Expired || record.reported {
                    return Ok(None);
                }
                record.reported = true;
                let call = s.call_key(&record.request.binding);
                if txn.get_one(&call)?.as_deref() == Some(id.as_str()) {
                    txn.set(&call, None, 0);
                }
                txn.put(&key, &record, Some(now_ms))?;
                Ok(Some(record.request))
            });
            if let Ok(Some(r)) = reported {
                s.notify(&r.id, Status::Expired);
                expired.push(r);
            }
        }
        expired
    }
}
