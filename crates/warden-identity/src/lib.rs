//! Identity primitives for the governed path.
//!
//! - [`grant`]: single-use grants the Governor mints for one exact allowed call and the Executor
//!   redeems before running it (HMAC-SHA256; see `docs/grants.md` for why not Ed25519).
//! - [`replay`]: remembers used ids so a grant is accepted once.
//!
//! No I/O: keys are handed in by the composition root.

pub mod grant;
pub mod replay;

pub use grant::{Call, GrantClaims, GrantError, GrantKeys};
pub use replay::{MemoryReplayGuard, ReplayError, ReplayGuard};

/// Entry points for fuzz targets: never panic, whatever the input.
pub mod fuzz {
    /// Opens arbitrary text as a grant token under a fixed key.
    pub fn grant(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let key = zeroize::Zeroizing::new([7u8; 32]);
        if let Ok(keys) = crate::GrantKeys::new(1, vec![(1, key)]) {
            let _ = keys.open(text);
        }
    }
}
