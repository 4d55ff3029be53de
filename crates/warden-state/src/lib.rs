//! # warden-state
//!
//! Implementations of [`warden_core::state::StateStore`]:
//!
//! - [`MemoryState`]: in-process, lost on exit (tests, benchmarks, `warden check` without
//!   `--state`);
//! - [`FileState`]: the embedded default, kept in the data directory as a write-ahead journal
//!   that is replayed and compacted when the store opens, so that counters, session history and
//!   holds survive a restart;
//! - [`RedisState`]: shared by the instances of a fleet (`warden serve --state redis://...`),
//!   each decision one Lua script and one round trip;
//!
//! and of [`warden_core::events::EventQueue`]:
//!
//! - [`MemoryEvents`]: the in-process [`warden_core::events::EventQueue`] (events are
//!   notifications; the ledger keeps the facts, so nothing durable is needed here);
//! - [`RedisEvents`]: the queue a fleet shares, one Redis list.
//!
//! and of [`warden_core::breakers::FailureCounts`]: [`MemoryFailures`] and [`RedisFailures`]
//! (breakers' consecutive failures);
//! and of [`warden_core::fleet_manifest::FleetManifest`]: [`MemoryFleetManifest`] and
//! [`RedisFleetManifest`] (which manifest a fleet serves);
//! and of [`warden_core::sessions::SessionDirectory`]: [`MemorySessions`] (in process) and
//! [`RedisSessions`] (a fleet's MCP sessions);
//! and of [`warden_core::sessions::NoticeBus`]: [`MemoryNotices`] and [`RedisNotices`] (what
//! one instance tells another about a session both serve).
//!
//! The embedded stores share one engine ([`engine::Engine`]), so they cannot disagree on
//! semantics; the Redis store implements the same steps in its script. The shared test suites
//! in `tests/store.rs` and `tests/events.rs` run against each implementation.

mod brakes;
mod engine;
mod events;
mod failures;
mod file;
mod fleet_manifest;
mod flows;
mod memory;
mod memory_bus;
mod notices;
mod redis_brakes;
mod redis_bus;
mod redis_events;
mod redis_failures;
mod redis_fleet_manifest;
mod redis_flows;
mod redis_notices;
mod redis_pool;
mod redis_sessions;
mod redis_store;
mod sessions;

pub use brakes::MemoryBrakes;
pub use events::MemoryEvents;
pub use failures::MemoryFailures;
pub use file::{FileState, OpenError};
pub use fleet_manifest::MemoryFleetManifest;
pub use flows::MemoryFlows;
pub use memory::MemoryState;
pub use notices::MemoryNotices;
pub use redis_brakes::RedisBrakes;
pub use redis_events::RedisEvents;
pub use redis_failures::RedisFailures;
pub use redis_fleet_manifest::RedisFleetManifest;
pub use redis_flows::RedisFlows;
pub use redis_notices::RedisNotices;
pub use redis_sessions::RedisSessions;
pub use redis_store::RedisState;
pub use sessions::MemorySessions;
