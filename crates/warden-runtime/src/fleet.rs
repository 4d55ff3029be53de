//! One manifest in force across a fleet (issue 22): every instance serves the bundle the
//! fleet's register ([`FleetManifest`]) names, or decides nothing.
//!
//! - At start an instance publishes the bundle it loaded; if the fleet already serves a newer
//!   one, or another bundle under the same version, the start stops with why.
//! - After a reload (`SIGHUP`, or a governed change) it publishes the new bundle.
//! - Every second it reads the register. From the moment the fleet is seen ahead of it, it is
//!   *behind*: every decision is refused as governance unavailable (the state store it decides
//!   over answers "unavailable", so the Governor's own fail-closed rule denies), votes are
//!   refused, and `/readyz` says `manifest`. It reloads its files at once, again whenever they
//!   change, and every 30 s; it may take only the fleet's bundle. The register lost (a Redis
//!   restart that kept nothing): it publishes its bundle again — unless it has seen the fleet
//!   serve a newer one, which it then waits for (a stale instance never rolls the fleet back).
//! - A bundle the fleet already serves was admitted by the instance that published it (under
//!   `governance`, with its approval, used once): the others swap the same bundle in without a
//!   second approval.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use warden_core::fleet_manifest::{FleetManifest, Published, Served};
use warden_core::state::{
    Charge, ChargeOutcome, Hold, HoldKind, HoldScope, Settle, Settled, StateError, StateStore,
};
use warden_core::time::UnixSeconds;
use warden_policy::Governor;

/// How often an instance reads the fleet's manifest in force.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The bundle `g` serves.
#[must_use]
pub fn served(g: &Governor) -> Served {
    Served {
        version: g.manifest().version,
        bundle: g.policy_hash().to_owned(),
    }
}

/// Why this instance is behind its fleet, if it is.
#[derive(Debug, Default)]
pub struct Behind(RwLock<Option<String>>);

impl Behind {
    fn set(&self, why: Option<String>) {
        if let Ok(mut w) = self.0.write() {
            *w = why;
        }
    }

    /// Why, if behind.
    #[must_use]
    pub fn why(&self) -> Option<String> {
        self.0.read().map_or_else(
            |_| Some("the fleet manifest flag is poisoned".into()),
            |w| w.clone(),
        )
    }
}

/// An instance's part in its fleet's manifest.
#[derive(Clone)]
pub struct Fleet {
    /// The register.
    pub register: Arc<dyn FleetManifest>,
    /// Whether (and why) this instance is behind.
    pub behind: Arc<Behind>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("behind", &self.behind.why())
            .finish_non_exhaustive()
    }
}

/// Why an instance cannot join its fleet.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The fleet serves a newer manifest.
    #[error(
        "the fleet serves manifest version {} (bundle {}); this instance's files give version \
         {} (bundle {}): update them, then start again",
        fleet.version, fleet.bundle, mine.version, mine.bundle
    )]
    Behind {
        /// The fleet's.
        fleet: Served,
        /// This instance's.
        mine: Served,
    },
    /// The fleet serves another bundle under the same version.
    #[error(
        "the fleet serves manifest version {} as bundle {}, this instance's files as bundle {}: \
         two manifests carry one version number; give the change a new version",
        fleet.version, fleet.bundle, mine.bundle
    )]
    Conflict {
        /// The fleet's.
        fleet: Served,
        /// This instance's.
        mine: Served,
    },
    /// The fleet's shared ledger has another origin (another ledger key).
    #[error(
        "the fleet's shared ledger is `{fleet}`, this instance's key signs `{mine}`: it would \
         write a log of its own; give it the fleet's keys (docs/fleet.md)"
    )]
    OtherLedger {
        /// The fleet's.
        fleet: String,
        /// This instance's.
        mine: String,
    },
    /// The register cannot be reached.
    #[error("{0}")]
    Unavailable(#[from] StateError),
}

impl Fleet {
    /// Publishes the bundle `g` serves at start; with a ledger the fleet shares, checks that
    /// this instance signs the fleet's origin (`shared_ledger`).
    ///
    /// # Errors
    /// [`JoinError`]: the fleet is ahead, conflicts, or cannot be reached.
    pub fn join(&self, g: &Governor, shared_ledger: Option<&str>) -> Result<(), JoinError> {
        // INVARIANT (one log, issue 22): instances sharing a ledger store sign one origin.
        if let Some(origin) = shared_ledger {
            if let Some(fleet) = self.register.agree_ledger(origin)? {
                return Err(JoinError::OtherLedger {
                    fleet,
                    mine: origin.to_owned(),
                });
            }
        }
        let mine = served(g);
        match self.register.publish(&mine)? {
            Published::Stored | Published::Same => Ok(()),
            Published::Behind(fleet) => Err(JoinError::Behind { fleet, mine }),
            Published::Conflict(fleet) => Err(JoinError::Conflict { fleet, mine }),
        }
    }

    /// Whether a reload from `serving` to `version` / `bundle` is the fleet's own bundle
    /// (`Ok(true)`: admitted by the instance that published it), a change governed as on one
    /// instance (`Ok(false)`: the fleet serves what this instance serves, or nothing yet), or
    /// refused: the fleet has moved past this instance to another bundle (it may take only
    /// that one), or the fleet's manifest cannot be read.
    ///
    /// # Errors
    /// [`ChangeError::Fleet`](crate::governance::ChangeError::Fleet) as said.
    pub fn admits(
        &self,
        serving: &Served,
        version: u64,
        bundle: &str,
    ) -> Result<bool, crate::governance::ChangeError> {
        let fleet = self.register.current().map_err(|e| {
            crate::governance::ChangeError::Fleet(format!(
                "the fleet's manifest in force cannot be read ({e}): no reload until it can"
            ))
        })?;
        match fleet {
            Some(f) if f.version == version && f.bundle == bundle => Ok(true),
            None => Ok(false),
            Some(f) if f == *serving => Ok(false),
            Some(f) => Err(crate::governance::ChangeError::Fleet(format!(
                "the fleet serves manifest version {} (bundle {}): this instance, behind it, may \
                 take only that bundle, not version {version} (bundle {bundle})",
                f.version, f.bundle
            ))),
        }
    }
}

/// The state store a fleet instance decides over: the shared one, answering "unavailable" to
/// every decision's reads and writes while the instance is behind its fleet. Holds are read and
/// set as always (brakes work whatever the manifest).
pub struct Gated {
    /// The store.
    pub inner: Arc<dyn StateStore>,
    /// The flag.
    pub behind: Arc<Behind>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated")
            .field("behind", &self.behind.why())
            .finish_non_exhaustive()
    }
}

impl Gated {
    fn open(&self) -> Result<(), StateError> {
        // INVARIANT (fail-closed, issue 22): an instance behind its fleet's manifest decides
        // nothing.
        match self.behind.why() {
            Some(why) => Err(StateError::Unavailable(why)),
            None => Ok(()),
        }
    }
}

impl StateStore for Gated {
    fn check_and_charge(
        &self,
        charges: &[Charge],
        now: UnixSeconds,
    ) -> Result<ChargeOutcome, StateError> {
        self.open()?;
        self.inner.check_and_charge(charges, now)
    }

    fn observe_call(
        &self,
        session: &str,
        fingerprint: [u8; 32],
        now: UnixSeconds,
        ttl: i64,
    ) -> Result<u32, StateError> {
        self.open()?;
        self.inner.observe_call(session, fingerprint, now, ttl)
    }

    fn settle(&self, s: &Settle<'_>) -> Result<Settled, StateError> {
        self.open()?;
        self.inner.settle(s)
    }

    fn holds(&self, scopes: &[HoldScope]) -> Result<Vec<Hold>, StateError> {
        self.inner.holds(scopes)
    }

    fn set_hold(&self, hold: Hold) -> Result<(), StateError> {
        self.inner.set_hold(hold)
    }

    fn clear_hold(&self, scope: &HoldScope, kind: HoldKind) -> Result<bool, StateError> {
        self.inner.clear_hold(scope, kind)
    }

    fn all_holds(&self) -> Result<Vec<Hold>, StateError> {
        self.inner.all_holds()
    }
}

/// When the manifest file (or its directory's policies) last changed, as far as a reload can
/// tell cheaply: the manifest's modification time.
fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// How often an instance behind its fleet tries its files again when they did not change (each
/// failed try is recorded).
const RETRY_EVERY: Duration = Duration::from_secs(30);

/// Watches the fleet's register for `runtime` until it is dropped (see the module docs).
pub(crate) fn watch(runtime: &crate::Runtime, fleet: Fleet) {
    let weak = Arc::downgrade(&runtime.shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        // The fleet bundle and file time a reload was last tried for, and when.
        let mut tried: Option<(Served, Option<SystemTime>, tokio::time::Instant)> = None;
        // The newest manifest this instance has seen the fleet serve: it never publishes an
        // older one (a register that lost its key is not rolled back by a stale instance).
        let mut highest: Option<Served> = None;
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            let runtime = crate::Runtime { shared };
            let register = Arc::clone(&fleet.register);
            let read = tokio::task::spawn_blocking(move || register.current()).await;
            let fleet_now = match read {
                Ok(Ok(f)) => f,
                // Unreachable: decisions fail closed on the shared state meanwhile.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "could not read the fleet's manifest in force");
                    continue;
                }
                Err(_) => continue,
            };
            let mine = served(&runtime.shared.governor.get());
            if let Some(f) = &fleet_now {
                if highest.as_ref().is_none_or(|h| f.version > h.version) {
                    highest = Some(f.clone());
                }
            }
            let target = match fleet_now {
                Some(f) if f == mine => {
                    fleet.behind.set(None);
                    runtime.shared.clock.set(mine.version);
                    continue;
                }
                Some(f) if f.version >= mine.version => f,
                // The register lost, or behind this instance: publish again — unless the
                // fleet was seen serving newer than this instance, which then waits for it.
                _ => match highest.clone().filter(|h| h.version > mine.version) {
                    Some(h) => h,
                    None => {
                        let register = Arc::clone(&fleet.register);
                        let m = mine.clone();
                        let published =
                            tokio::task::spawn_blocking(move || register.publish(&m)).await;
                        // Only once the fleet serves this instance's bundle again is it not
                        // behind; anything else is decided on the next round.
                        if matches!(published, Ok(Ok(Published::Stored | Published::Same))) {
                            fleet.behind.set(None);
                            runtime.shared.clock.set(mine.version);
                        }
                        continue;
                    }
                },
            };
            // INVARIANT (fail-closed, issue 22): from the moment the fleet is seen ahead, this
            // instance decides nothing until it serves the fleet's bundle.
            let why = format!(
                "this instance serves manifest version {} (bundle {}), behind the fleet's version \
                 {} (bundle {})",
                mine.version, mine.bundle, target.version, target.bundle
            );
            if fleet.behind.why().is_none() {
                tracing::error!(%why, "behind the fleet");
                fleet.behind.set(Some(why.clone()));
                // Grants minted under this instance's version are refused from now on: none of
                // the old manifest's runs while it is behind.
                runtime.shared.clock.set(target.version);
            }
            let file = modified(&runtime.shared.config.manifest);
            let due = match &tried {
                Some((t, f, at)) if *t == target && *f == file => at.elapsed() >= RETRY_EVERY,
                _ => true,
            };
            if !due {
                continue;
            }
            tried = Some((target.clone(), file, tokio::time::Instant::now()));
            let outcome = runtime.reload().await;
            let now = served(&runtime.shared.governor.get());
            if now == target {
                tracing::info!(
                    version = target.version,
                    "caught up with the fleet's manifest"
                );
                fleet.behind.set(None);
            } else {
                let why = match outcome {
                    Err(e) => {
                        format!("{why}: its files must give the fleet's bundle (reload: {e})")
                    }
                    Ok(_) => format!("{why}: its files must give the fleet's bundle"),
                };
                fleet.behind.set(Some(why));
            }
        }
    });
}
