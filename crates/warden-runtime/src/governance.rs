//! Governance changes are governed (INV-020, issue 7): when the running manifest has a
//! `governance` key, a new manifest (or new policies) is swapped in only after the approvers it
//! names have approved that exact bundle — its hash, replacing this version.
//!
//! 1. `warden manifest propose` (admin API) validates the files on disk, diffs them against the
//!    running bundle, and opens an approval request whose preview is the diff;
//! 2. approvers vote with `warden approvals approve ID` (their own keys, as for calls);
//! 3. a reload (`SIGHUP`) swaps the new bundle in only if the files on disk still hash to the
//!    approved bundle; the approval is used once. A change to the files after the approval, or a
//!    reload without one, is refused and recorded.
//!
//! The requests are ordinary approval requests ([`crate::approvals`]) whose "agent" is
//! [`GOVERNANCE`], a name no agent can have (manifest ids cannot hold parentheses).

use std::path::Path;

use warden_identity::approval::{ApprovalError, ApprovalStore, Binding, Request, Requirement};
use warden_policy::approvers::Governance;
use warden_policy::Governor;

/// Why a manifest change was not proposed or not swapped in. The manifest in force stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// A proposal with no `governance` in the running manifest.
    #[error("the running manifest has no `governance`: a reload (SIGHUP) needs no approval")]
    Ungoverned,
    /// The new bundle does not load.
    #[error("{0}")]
    Load(#[from] warden_policy::LoadError),
    /// The new version does not move forward.
    #[error("version {new} is not newer than the running {running}")]
    NotNewer {
        /// The version in force.
        running: u64,
        /// The offered one.
        new: u64,
    },
    /// The new manifest changes what the running Executor was started with.
    #[error(
        "the new manifest changes upstreams, pins or secrets, which the running Executor \
         cannot take over: restart `warden serve` to apply it"
    )]
    NeedsRestart,
    /// The replacement has no approval yet.
    #[error(
        "replacing manifest version {version} with bundle {bundle} needs the approval of \
         {needs} (governance): run `warden manifest propose`, have it approved, then reload"
    )]
    NotApproved {
        /// The version in force.
        version: u64,
        /// The new bundle's hash.
        bundle: String,
        /// Who must approve it.
        needs: String,
    },
    /// The approval store refused (a denied, expired or used approval; a full book).
    #[error("the manifest change is not approved: {0}")]
    Refused(#[source] ApprovalError),
    /// The proposal could not be opened.
    #[error("{0}")]
    Open(#[source] ApprovalError),
    /// The swap itself failed.
    #[error("{0}")]
    Swap(#[from] crate::current::SwapError),
    /// The reload's worker died.
    #[error("the reload did not finish: {0}")]
    Interrupted(String),
    /// In a fleet: the instance may take only the bundle its fleet serves, or the fleet's
    /// manifest cannot be read.
    #[error("{0}")]
    Fleet(String),
}

/// The "agent" of governance requests.
pub const GOVERNANCE: &str = "(governance)";

/// The call a manifest replacement is: the new bundle hash replacing `current`'s version.
#[must_use]
pub fn binding(current: &Governor, new_bundle: &str) -> Binding {
    Binding {
        agent: GOVERNANCE.into(),
        tenant: String::new(),
        owner: String::new(),
        session: "manifest".into(),
        tool: "manifest.replace".into(),
        arguments_hash: new_bundle.into(),
        manifest_version: current.manifest().version,
    }
}

/// What the manifest's `governance` asks of an approval.
pub(crate) fn requirement(g: &Governance) -> Requirement {
    match &g.role {
        Some(role) => Requirement::Approvers {
            approvers: g.approvers,
            role: role.clone(),
        },
        None => Requirement::Humans {
            approvers: g.approvers,
        },
    }
}

/// Opens (or joins) the request to replace `current` with the bundle at `path`.
///
/// # Errors
/// Why not: governance is off, the files do not load, the version is not newer, or the book
/// refuses (a denied proposal stays denied).
pub fn propose(
    book: &dyn ApprovalStore,
    current: &Governor,
    path: &Path,
) -> Result<(Request, bool), ChangeError> {
    let Some(g) = &current.manifest().governance else {
        return Err(ChangeError::Ungoverned);
    };
    let new = crate::bundle::load_governor(path)?;
    let (from, to) = (current.manifest().version, new.manifest().version);
    if to <= from {
        return Err(ChangeError::NotNewer {
            running: from,
            new: to,
        });
    }
    let changes = warden_policy::diff::diff(current.manifest(), new.manifest());
    let loosened = changes
        .iter()
        .filter(|c| c.impact == warden_policy::diff::Impact::Loosened)
        .count();
    // Policy text is not diffed semantically: every policy file added, removed or changed is
    // listed with its hashes, for the approvers to read.
    let (old_files, new_files) = (current.policy_files(), new.policy_files());
    let policy_changes: Vec<serde_json::Value> = old_files
        .keys()
        .chain(new_files.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|f| old_files.get(*f) != new_files.get(*f))
        .map(|f| serde_json::json!({ "file": f, "from": old_files.get(f), "to": new_files.get(f) }))
        .collect();
    let preview = serde_json::json!({
        "summary": format!(
            "replace manifest version {from} with {to}: {} change(s), {loosened} loosening, {} policy file(s) changed",
            changes.len(),
            policy_changes.len()
        ),
        "from_bundle": current.policy_hash(),
        "to_bundle": new.policy_hash(),
        "loosened": loosened,
        "changes": changes,
        "policy_files_changed": policy_changes,
    });
    book.open(
        &binding(current, new.policy_hash()),
        requirement(g),
        true,
        preview,
        crate::now_unix_ms(),
    )
    .map_err(ChangeError::Open)
}

/// Before `new` replaces `current`: `Ok(None)` if the running manifest has no governance,
/// `Ok(Some(request))` with the approval it redeemed, or why the swap is refused.
///
/// # Errors
/// The replacement has no approval (or a denied, expired or used one).
pub fn admit(
    book: &dyn ApprovalStore,
    current: &Governor,
    new: &Governor,
) -> Result<Option<Request>, ChangeError> {
    let Some(g) = &current.manifest().governance else {
        return Ok(None);
    };
    let binding = binding(current, new.policy_hash());
    match book.redeem(&binding, None, &requirement(g), true, crate::now_unix_ms()) {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => Err(ChangeError::NotApproved {
            version: current.manifest().version,
            bundle: new.policy_hash().to_owned(),
            needs: crate::approvals::requirement_text(&requirement(g), false),
        }),
        Err(e) => Err(ChangeError::Refused(e)),
    }
}
