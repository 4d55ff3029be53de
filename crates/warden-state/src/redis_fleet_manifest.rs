//! [`RedisFleetManifest`]: the fleet's manifest in force in its Redis (issue 22): one key,
//! `<prefix>manifest`, holding `<version> <bundle hash>`, replaced only by a newer version (one
//! script compares and sets).

use std::time::Duration;

use crate::redis_pool::Pool;
use warden_core::fleet_manifest::{compare, FleetManifest, Published, Served};
use warden_core::state::StateError;

/// Stores ARGV[1] (`<version> <bundle>`) unless the key holds a version at least ARGV[2] (both
/// decimal without leading zeros, compared as such: by length, then digit by digit, so every
/// `u64` compares exactly); answers what the key held before (nil: nothing). What Warden did not
/// write is answered, never overwritten.
const PUBLISH: &str = r"
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local now = redis.call('GET', KEYS[1])
if now then
  local v = string.match(now, '^(%d+) sha256:%x+$')
  if v == nil or (#v > 1 and string.sub(v, 1, 1) == '0') then return now end
  if not newer(ARGV[2], v) then return now end
end
redis.call('SET', KEYS[1], ARGV[1])
return now
";

/// The register in a Redis shared by the instances of a fleet.
pub struct RedisFleetManifest {
    pool: Pool,
    key: String,
    ledger_key: String,
}

impl std::fmt::Debug for RedisFleetManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the key is shown.
        f.debug_struct("RedisFleetManifest")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

/// `<version> <bundle>` as stored.
fn parse(v: &str) -> Result<Served, StateError> {
    let bad = || {
        StateError::Unavailable(format!(
            "the fleet's manifest in force in Redis (`{}`) is not one Warden wrote",
            v.chars().take(80).collect::<String>()
        ))
    };
    let (version, bundle) = v.split_once(' ').ok_or_else(bad)?;
    if version.len() > 1 && version.starts_with('0') {
        return Err(bad());
    }
    let version = version.parse().map_err(|_| bad())?;
    let hex = bundle.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(Served {
        version,
        bundle: bundle.to_owned(),
    })
}

impl RedisFleetManifest {
    /// The register on the Redis at `url`, its key under `prefix`. Connects on first use.
    ///
    /// # Errors
    /// [`StateError::Unavailable`] for a malformed URL.
    pub fn new(url: &str, prefix: &str) -> Result<RedisFleetManifest, StateError> {
        Ok(RedisFleetManifest {
            pool: Pool::open(url).map_err(|e| unavailable(&e))?,
            key: format!("{prefix}manifest"),
            ledger_key: format!("{prefix}ledger-origin"),
        })
    }
}

impl FleetManifest for RedisFleetManifest {
    fn publish(&self, served: &Served) -> Result<Published, StateError> {
        let value = format!("{} {}", served.version, served.bundle);
        let before: Option<String> = self
            .pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg(PUBLISH)
                    .arg(1)
                    .arg(&self.key)
                    .arg(&value)
                    .arg(served.version)
                    .query(c)
            })
            .map_err(|e| unavailable(&e))?;
        let before = before.as_deref().map(parse).transpose()?;
        Ok(compare(before.as_ref(), served))
    }

    fn agree_ledger(&self, origin: &str) -> Result<Option<String>, StateError> {
        let theirs: String = self
            .pool
            .with(Duration::ZERO, |c| {
                redis::cmd("EVAL")
                    .arg("redis.call('SET', KEYS[1], ARGV[1], 'NX') return redis.call('GET', KEYS[1])")
                    .arg(1)
                    .arg(&self.ledger_key)
                    .arg(origin)
                    .query(c)
            })
            .map_err(|e| unavailable(&e))?;
        Ok((theirs != origin).then_some(theirs))
    }

    fn current(&self) -> Result<Option<Served>, StateError> {
        let value: Option<String> = self
            .pool
            .with(Duration::ZERO, |c| {
                redis::cmd("GET").arg(&self.key).query(c)
            })
            .map_err(|e| unavailable(&e))?;
        value.as_deref().map(parse).transpose()
    }
}
