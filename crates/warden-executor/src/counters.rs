//! What the Executor counts for `/metrics` (issue 24): sandbox launches, egress connections,
//! tools withdrawn for their pins, upstream reconnects and failed connections. Relaxed atomics, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the Executor was made.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) sandbox_started: AtomicU64,
    pub(crate) sandbox_failed: AtomicU64,
    pub(crate) egress_allowed: AtomicU64,
    pub(crate) egress_refused: AtomicU64,
    pub(crate) tools_withdrawn: AtomicU64,
    pub(crate) upstream_reconnects: AtomicU64,
    pub(crate) upstream_connect_failures: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Sandboxed servers started.
    pub sandbox_started: u64,
    /// Sandboxed launches that failed (a layer missing, a cgroup or workspace not made).
    pub sandbox_failed: u64,
    /// Connections the egress guard let through.
    pub egress_allowed: u64,
    /// Connections it refused.
    pub egress_refused: u64,
    /// Calls refused because the tool was withdrawn for its pin (INV-023).
    pub tools_withdrawn: u64,
    /// Connections to an upstream made again after its first (a restart, a lost connection).
    pub upstream_reconnects: u64,
    /// Attempts to connect to an upstream that failed.
    pub upstream_connect_failures: u64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Their values now.
    #[must_use]
    pub fn read(&self) -> Counted {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counted {
            sandbox_started: r(&self.sandbox_started),
            sandbox_failed: r(&self.sandbox_failed),
            egress_allowed: r(&self.egress_allowed),
            egress_refused: r(&self.egress_refused),
            tools_withdrawn: r(&self.tools_withdrawn),
            upstream_reconnects: r(&self.upstream_reconnects),
            upstream_connect_failures: r(&self.upstream_connect_failures),
        }
    }
}
