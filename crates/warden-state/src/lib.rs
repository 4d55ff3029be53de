//! # warden-state
//!
//! Implementations of [`warden_core::state::StateStore`]:
//!
//! - [`MemoryState`]: in-process, lost on exit (tests, benchmarks, `warden check` without
//!   `--state`);
//! - [`FileState`]: the embedded default, kept in the data directory as a write-ahead journal
//!   that is replayed and compacted when the store opens, so that counters, session history and
//!   holds survive a restart;
//!
//! and of [`warden_core::events::EventQueue`]:
//!
//! - [`MemoryEvents`]: the in-process [`warden_core::events::EventQueue`] (events are
//!   notifications; the ledger keeps the facts, so nothing durable is needed here).
//!
//! Both state stores share one engine ([`engine::Engine`]), so they cannot disagree on
//! semantics; the shared test suites in `tests/store.rs` and `tests/events.rs` run against
//! each implementation.

mod engine;
mod events;
mod file;
mod memory;

pub use events::MemoryEvents;
pub use file::{FileState, OpenError};
pub use memory::MemoryState;
