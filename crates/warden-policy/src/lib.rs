//! # warden-policy
//!
//! The Governor's decision core: the manifest (the single source of truth, modelled in
//! `warden-manifest`), the Cedar policies, and [`Governor::decide`], a pure, synchronous function that always answers `allow`, `deny`
//! or `escalate` with the rules that fired.
//!
//! ```text
//! manifest.yaml ──parse_manifest──▶ Manifest ──Governor::new(+ policy texts)──▶ Governor
//!                                                                                 │
//! Proposal ───────────────────────────────────────────────────────────── decide(state, now)
//!                                                                                 ▼
//!                                               Decision { decision, rules, reason, ... }
//! ```
//!
//! The checks `decide` makes, in order (the first that denies wins):
//!
//! 1. the proposal is well formed; the agent is known; it acts for its own tenant (INV-008);
//! 2. no kill switch or quarantine holds for it, its tenant, or everything;
//! 3. the tool is known (INV-005), available to the tenant, callable from the agent's zone, and
//!    the arguments match its JSON Schema;
//! 4. the agent's trust level may run the tool's tier at all;
//! 5. Cedar: some policy permits and none forbids (forbid wins);
//! 6. the session is not paused and the call is not the Nth identical call in a row;
//! 7. the tier's approval mode and the trust level decide allow or escalate;
//! 8. allowed calls are charged, atomically, to the tier rate limit, the agent, tenant and
//!    global budgets and the matching system-level invariants; if one is exhausted, deny and
//!    charge nothing.
//!
//! This crate performs no I/O: the caller reads files and passes their text in, and passes the
//! state store and the current time.

pub mod cedar;
pub mod decide;
pub mod flow;
mod native;

// The manifest model lives in `warden-manifest` (the Executor depends on it, not on this crate);
// its modules are re-exported so the Governor's users name one crate.
pub use warden_manifest::{approvers, diff, lines, manifest, rate, raw, upstream};

pub use cedar::{CedarError, PolicySource};
pub use decide::{bundle_hash, deny_unloaded, ApprovalEvidence, Evidence, Governor};
pub use manifest::{parse_manifest, Diagnostic, LoadError, Manifest};

/// Entry points for fuzz targets: each must never panic, whatever the input.
pub mod fuzz {
    /// Parses and validates arbitrary bytes as a manifest.
    pub fn manifest(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = crate::manifest::parse_manifest("fuzz.yaml", text);
        }
    }

    /// Parses arbitrary bytes as a proposal.
    pub fn proposal(data: &[u8]) {
        let _ = warden_core::Proposal::from_json_slice(data);
    }

    /// Scans arbitrary bytes as tool output and as a task, and decodes them as a stored
    /// session flow (information flow).
    pub fn flow(data: &[u8]) {
        let _ = warden_core::flow::SessionFlow::from_bytes(data);
        let text = String::from_utf8_lossy(data);
        let mut n = 0usize;
        crate::flow::scan(&text, &mut |_, _| n += 1);
        let mut f = warden_core::flow::SessionFlow::default();
        let _ = crate::flow::declare_task(&mut f, &text);
    }

    /// Reads arbitrary bytes as `PATTERN\nURI` (a resource entry's URI pattern, and a URI an
    /// agent asks to read). Answers whether the pattern admits the URI; when it does, the URI is
    /// the pattern's exact text, or under its prefix with nothing that climbs out of it even
    /// once percent-decoded.
    ///
    /// # Panics
    /// When a pattern admits a URI outside it (the property the fuzz target checks).
    #[expect(
        clippy::panic,
        reason = "the fuzz target's property: a violation must be loud"
    )]
    #[must_use]
    pub fn resource_uri(data: &[u8]) -> bool {
        let text = String::from_utf8_lossy(data);
        let (pattern, uri) = text.split_once('\n').unwrap_or((&text, ""));
        let Ok(p) = warden_manifest::actions::UriPattern::parse(pattern) else {
            return false;
        };
        if !p.matches(uri) {
            return false;
        }
        if !p.wildcard {
            assert_eq!(uri, p.prefix);
            return true;
        }
        let Some(rest) = uri.strip_prefix(&p.prefix) else {
            panic!("`{pattern}` admits `{uri}`, which does not start with its prefix");
        };
        let decoded = percent_decoded(rest);
        let climbs = decoded.contains('\\')
            || decoded
                .split(['/', '?', '#', ';'])
                .any(|s| s == "." || s == "..");
        assert!(
            !climbs,
            "`{pattern}` admits `{uri}`, which climbs out once decoded"
        );
        true
    }

    /// `s` with each `%XX` decoded once (invalid escapes kept).
    fn percent_decoded(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b, hex) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
