//! # warden-gateway
//!
//! The Interceptor: where agents (and the operator) reach Warden. An agent can only *propose*
//! a call here. Every front-end holds a [`warden_runtime::Runtime`] and nothing else — this
//! crate does not depend on the Governor's state, the ledger, the grant keys or the Executor,
//! so it cannot decide, record, mint a grant or reach an upstream.
//!
//! - [`native_api`]: the HTTP API (`/healthz`, `/v1/manifest`, `/v1/decide` dry runs,
//!   `/v1/sessions`, signed `/v1/proposals`);
//! - [`mcp`]: the MCP front-end (Streamable HTTP at `/mcp`, and stdio), which turns
//!   `tools/call` into proposals;
//! - `mcp_client` (private): the agent's client as an upstream's requests reach it (stdio);
//! - `mcp_rounds` (private): calls of 2026-07-28 clients parked between input-required rounds;
//! - `mcp_forward` (private): a retry that reaches another instance of a fleet than the one its
//!   call is parked on, passed to that one;
//! - [`mcp_sessions`]: the MCP sessions Warden keeps (issued ids, calls in flight, bounds);
//! - `mcp_stream` (private): a session's standalone stream (`GET /mcp`) for clients before
//!   2026-07-28: list changes and resource updates;
//! - [`operator_api`]: the admin listener (brakes, approval votes, governance, trust), with its
//!   own token.

pub mod mcp;
mod mcp_changes;
mod mcp_client;
mod mcp_forward;
mod mcp_pages;
mod mcp_rounds;
pub mod mcp_sessions;
mod mcp_stream;
pub mod native_api;
pub mod operator_api;
