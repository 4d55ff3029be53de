//! # warden-core
//!
//! The vocabulary every other Warden crate speaks, and nothing else:
//!
//! - [`Proposal`]: what an agent asks for (it can only ever *propose*);
//! - [`Decision`]: what the Governor answers: `allow`, `deny` or `escalate`, always with the
//!   rules that fired, a rationale, the manifest version and the policy-bundle hash (INV-014);
//! - [`state::StateStore`]: the contract for counters, session history and holds (kill switch,
//!   quarantine, paused sessions), designed around one atomic check-and-charge with expiry so
//!   that the embedded store and a shared Redis store behave the same;
//! - [`events::EventQueue`]: the contract for the queue of what operators are told about
//!   (approval requests, brakes, breakers), from the instance where it happened to the one
//!   that delivers it;
//! - [`canonical`]: canonical JSON (RFC 8785 style) and SHA-256 digests, so that an independent
//!   verifier can recompute every hash Warden cites.
//!
//! This crate performs no I/O and has no async code: it can be linked into the decision core.

pub mod brakes;
pub mod breakers;
pub mod canonical;
pub mod decision;
pub mod events;
pub mod fleet_manifest;
pub mod flow;
pub mod net;
pub mod proposal;
pub mod sessions;
pub mod state;
pub mod time;
pub mod trace;

pub use decision::{BudgetUse, Decision, Escalation, Verdict};
pub use proposal::{ActionKind, Completing, Operation, Proposal, ProposalError};
