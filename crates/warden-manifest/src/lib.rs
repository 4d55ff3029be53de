//! # warden-manifest
//!
//! The manifest model: what a manifest says, never what to decide. [`raw`] is the manifest as
//! written (serde, `deny_unknown_fields`, with the line of every key from [`lines`]);
//! [`manifest`] validates it into the internal types the Governor and the Executor use, with
//! errors that name file, line and key; [`upstream`] holds the upstream servers, their
//! sandbox blocks and detectors; [`approvers`] the approvers, governance and notifications;
//! [`actions`] the resource and prompt entries; [`rate`] rates and windows; [`diff`] what changed between two versions.
//!
//! The Executor depends on this crate, not on the decision engine (`warden-policy`).

pub mod actions;
pub mod approvers;
pub mod diff;
pub mod lines;
pub mod manifest;
pub mod rate;
pub mod raw;
pub mod upstream;

pub use manifest::{parse_manifest, Diagnostic, LoadError, Manifest};
