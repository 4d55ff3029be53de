//! # warden-state
//!
//! Implementations of [`warden_core::state::StateStore`]:
//!
//! - [`MemoryState`]: in-process, lost on exit (tests, benchmarks, `warden check` without
//!   `--state`);
//! - [`FileState`]: the embedded default, kept in the data directory as a write-ahead journal
//!   that is replayed and compacted when the store opens, so that counters, session history and
//!   holds survive a restart.
//!
//! Both share one engine ([`engine::Engine`]), so they cannot disagree on semantics; the shared
//! test suite in `tests/store.rs` runs against each.

mod engine;
mod file;
mod memory;

pub use file::{FileState, OpenError};
pub use memory::MemoryState;
