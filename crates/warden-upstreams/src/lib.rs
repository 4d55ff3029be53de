//! # warden-upstreams
//!
//! MCP servers Warden ships for its own manifests. The Executor starts them like any other
//! upstream (sandboxed, through `warden sandbox exec`); nothing here decides or records.
//!
//! - [`demo`]: `warden demo-server`, the starter manifest's harmless upstream;
//! - [`process`]: `warden process-server`, which runs the fixed programs of a manifest's
//!   `process` tools, one argument per template element and never through a shell.

pub mod demo;
pub mod process;

/// Why one of Warden's own upstreams could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The process tools' spec (written by the manifest's validation) does not parse.
    #[error("the process tools spec: {0}")]
    Spec(String),
    /// An argument template of the spec does not parse.
    #[error(transparent)]
    Template(#[from] warden_manifest::upstream::TemplateError),
    /// The MCP handshake with the client failed.
    #[error("MCP handshake failed: {0}")]
    Handshake(String),
}

/// Current Unix time in seconds.
#[must_use]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
