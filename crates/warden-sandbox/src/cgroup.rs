//! Cgroups: limits for a task's whole process tree, and a kill that leaves nothing behind.
//!
//! cgroup v2 when the unified hierarchy has the `memory` and `pids` controllers; otherwise the
//! v1 `memory`, `pids` and `cpu` hierarchies, with the (controller-less) unified hierarchy kept
//! for its `cgroup.kill`, else the v1 `freezer` (freeze, kill every member, thaw, until empty).

use crate::spec::{Guarantee, Layer, Limits, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// The directory Warden's cgroups live under, in each hierarchy.
const PARENT: &str = "warden";

/// The cgroup layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure or hybrid cgroup v2 with the controllers enabled at `root`.
    V2 {
        /// The unified hierarchy.
        root: PathBuf,
    },
    /// v1 controllers.
    V1 {
        /// The `memory` hierarchy.
        memory: Option<PathBuf>,
        /// The `pids` hierarchy.
        pids: Option<PathBuf>,
        /// The `cpu` hierarchy.
        cpu: Option<PathBuf>,
        /// The `freezer` hierarchy.
        freezer: Option<PathBuf>,
        /// A unified hierarchy without controllers (for `cgroup.kill`).
        unified: Option<PathBuf>,
    },
}

fn dir(p: &Path) -> Option<PathBuf> {
    p.join("cgroup.procs").exists().then(|| p.to_path_buf())
}

impl Layout {
    /// Finds this host's layout; `None` when no cgroup hierarchy is mounted.
    #[must_use]
    pub fn detect() -> Option<Layout> {
        Layout::detect_at(Path::new(ROOT))
    }

    fn detect_at(root: &Path) -> Option<Layout> {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return Some(Layout::V2 {
                root: root.to_path_buf(),
            });
        }
        let v1 = Layout::V1 {
            memory: dir(&root.join("memory")),
            pids: dir(&root.join("pids")),
            cpu: dir(&root.join("cpu")).or_else(|| dir(&root.join("cpu,cpuacct"))),
            freezer: dir(&root.join("freezer")),
            unified: dir(&root.join("unified")).or_else(|| dir(root)),
        };
        match &v1 {
            Layout::V1 {
                memory: None,
                pids: None,
                freezer: None,
                unified: None,
                ..
            } => None,
            _ => Some(v1),
        }
    }

    /// What this layout provides for limits and kill.
    #[must_use]
    pub fn layers(&self) -> Vec<Layer> {
        match self {
            Layout::V2 { root } => vec![
                Layer::new(
                    Guarantee::Limits,
                    "cgroup v2 memory, pids, cpu",
                    Status::Enforced,
                    format!("under {}", root.join(PARENT).display()),
                ),
                if kernel_has_cgroup_kill(root) {
                    Layer::new(
                        Guarantee::Kill,
                        "cgroup v2 cgroup.kill",
                        Status::Enforced,
                        "kills every process of the task at once, double forks included",
                    )
                } else {
                    Layer::new(
                        Guarantee::Kill,
                        "cgroup v2 cgroup.freeze",
                        Status::Enforced,
                        "no cgroup.kill (kernel before 5.14): freeze, kill every member, thaw, until empty",
                    )
                },
            ],
            Layout::V1 {
                memory,
                pids,
                freezer,
                unified,
                ..
            } => {
                let limits = match (memory, pids) {
                    (Some(_), Some(_)) => Layer::new(
                        Guarantee::Limits,
                        "cgroup v1 memory, pids",
                        Status::Enforced,
                        "no v2 controllers here: v1 hierarchies",
                    ),
                    (None, None) => Layer::new(
                        Guarantee::Limits,
                        "cgroup",
                        Status::Absent,
                        "neither a memory nor a pids controller is mounted",
                    ),
                    _ => Layer::new(
                        Guarantee::Limits,
                        "cgroup v1",
                        Status::Degraded,
                        format!(
                            "memory {}, pids {}",
                            if memory.is_some() { "yes" } else { "missing" },
                            if pids.is_some() { "yes" } else { "missing" }
                        ),
                    ),
                };
                let kill_v2 = unified.as_ref().is_some_and(|u| kernel_has_cgroup_kill(u));
                let kill = if kill_v2 {
                    Layer::new(
                        Guarantee::Kill,
                        "cgroup v2 cgroup.kill (unified hierarchy, no controllers)",
                        Status::Enforced,
                        "kills every process of the task at once, double forks included",
                    )
                } else if freezer.is_some() {
                    Layer::new(
                        Guarantee::Kill,
                        "cgroup v1 freezer",
                        Status::Enforced,
                        "freeze, kill every member, thaw, until empty",
                    )
                } else if pids.is_some() || memory.is_some() {
                    Layer::new(
                        Guarantee::Kill,
                        "cgroup v1 membership",
                        Status::Degraded,
                        "members killed one by one: a fork racing the kill may survive a round",
                    )
                } else {
                    Layer::new(
                        Guarantee::Kill,
                        "cgroup",
                        Status::Absent,
                        "no cgroup to kill",
                    )
                };
                vec![limits, kill]
            }
        }
    }
}

/// Whether the kernel has `cgroup.kill` (5.14+): its non-root cgroups carry the file.
fn kernel_has_cgroup_kill(unified: &Path) -> bool {
    let probe = unified.join(PARENT);
    std::fs::create_dir_all(&probe).is_ok() && probe.join("cgroup.kill").exists()
}

/// Why a cgroup could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {error}")]
pub struct CgroupError {
    /// The file or directory.
    pub path: String,
    /// The error.
    pub error: std::io::Error,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|error| CgroupError {
        path: path.display().to_string(),
        error,
    })
}

fn mkdir(path: &Path) -> Result<PathBuf, CgroupError> {
    std::fs::create_dir_all(path).map_err(|error| CgroupError {
        path: path.display().to_string(),
        error,
    })?;
    Ok(path.to_path_buf())
}

/// Makes a task's own cgroup; one that already exists is refused (it would hold another
/// task's processes, and its kill would reach them).
fn leaf(path: &Path) -> Result<PathBuf, CgroupError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::create_dir(path).map_err(|error| CgroupError {
        path: path.display().to_string(),
        error,
    })?;
    Ok(path.to_path_buf())
}

/// One task's cgroups. Dropping it kills whatever is left in them and removes them.
#[derive(Debug)]
pub struct Cgroup {
    /// Directories the task joins.
    join: Vec<PathBuf>,
    /// A v2 directory with `cgroup.kill`.
    kill: Option<PathBuf>,
    /// A v1 freezer directory.
    freezer: Option<PathBuf>,
    /// A v2 directory without `cgroup.kill`, frozen with `cgroup.freeze`.
    freeze_v2: Option<PathBuf>,
}

/// Valid cgroup names: what Warden makes itself (runner ids).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl Cgroup {
    /// Makes the cgroups named `name` with `limits`.
    ///
    /// # Errors
    /// A directory or limit file that cannot be written (fail closed: the task does not start).
    pub fn create(layout: &Layout, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        if !valid_name(name) {
            return Err(CgroupError {
                path: name.to_owned(),
                error: std::io::Error::other("not a valid cgroup name"),
            });
        }
        let mut cg = Cgroup {
            join: Vec::new(),
            kill: None,
            freezer: None,
            freeze_v2: None,
        };
        match layout {
            Layout::V2 { root } => {
                let parent = mkdir(&root.join(PARENT))?;
                // Let the task's cgroup have the controllers (best effort for cpu).
                for c in ["+memory", "+pids", "+cpu"] {
                    let r = write(&parent.join("cgroup.subtree_control"), c);
                    if c != "+cpu" {
                        r?;
                    }
                }
                let d = leaf(&parent.join(name))?;
                cg.join.push(d.clone());
                if d.join("cgroup.kill").exists() {
                    cg.kill = Some(d.clone());
                } else {
                    cg.freeze_v2 = Some(d.clone());
                }
                write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                let _ = write(&d.join("memory.swap.max"), "0");
                write(&d.join("memory.oom.group"), "1")?;
                write(&d.join("pids.max"), &limits.pids.to_string())?;
            }
            Layout::V1 {
                memory,
                pids,
                cpu: _,
                freezer,
                unified,
            } => {
                if let Some(m) = memory {
                    let d = leaf(&m.join(PARENT).join(name))?;
                    write(
                        &d.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    // Without swap accounting this file does not exist; nothing to cap then.
                    let _ = write(
                        &d.join("memory.memsw.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    );
                    cg.join.push(d);
                }
                if let Some(p) = pids {
                    let d = leaf(&p.join(PARENT).join(name))?;
                    write(&d.join("pids.max"), &limits.pids.to_string())?;
                    cg.join.push(d);
                }
                if let Some(f) = freezer {
                    let d = leaf(&f.join(PARENT).join(name))?;
                    cg.join.push(d.clone());
                    cg.freezer = Some(d);
                }
                if let Some(u) = unified.as_ref().filter(|u| kernel_has_cgroup_kill(u)) {
                    let d = leaf(&u.join(PARENT).join(name))?;
                    cg.join.push(d.clone());
                    cg.kill = Some(d);
                }
            }
        }
        Ok(cg)
    }

    /// The directories a process joins (`Spec::cgroups`).
    #[must_use]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.join
    }

    /// The pids in the task's cgroups.
    #[must_use]
    pub fn pids(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self
            .join
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Kills every process of the task and waits (up to `within`) until none is left.
    /// Returns whether the cgroups are empty.
    pub fn kill(&self, within: Duration) -> bool {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let deadline = Instant::now() + within;
        loop {
            if self.pids().is_empty() {
                return true;
            }
            if let Some(k) = &self.kill {
                let _ = std::fs::write(k.join("cgroup.kill"), "1");
            } else {
                // INVARIANT (fail-closed): frozen processes cannot fork while they are killed.
                if let Some(f) = &self.freezer {
                    let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
                }
                if let Some(f) = &self.freeze_v2 {
                    let _ = std::fs::write(f.join("cgroup.freeze"), "1");
                }
                for pid in self.pids() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                if let Some(f) = &self.freezer {
                    let _ = std::fs::write(f.join("freezer.state"), "THAWED");
                }
                if let Some(f) = &self.freeze_v2 {
                    let _ = std::fs::write(f.join("cgroup.freeze"), "0");
                }
            }
            if Instant::now() >= deadline {
                return self.pids().is_empty();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the task was killed by the memory limit (v2 `memory.events`, v1 `memory.oom_control`).
    #[must_use]
    pub fn oom_killed(&self) -> bool {
        self.join.iter().any(|d| {
            let events = std::fs::read_to_string(d.join("memory.events")).unwrap_or_default();
            let v1 = std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            events
                .lines()
                .chain(v1.lines())
                .any(|l| l.starts_with("oom_kill ") && l.trim_end() != "oom_kill 0")
        })
    }
}

/// What [`reclaim`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Cgroups whose processes were killed and which were removed.
    pub removed: Vec<String>,
    /// Cgroups that could not be emptied or removed (left for the next start).
    pub failed: Vec<String>,
}

/// The Warden process that made the cgroup `name` (`<task>-<pid>-<n>`, as
/// [`crate::Host::prepare`] names them).
fn owner(name: &str) -> Option<i32> {
    let mut parts = name.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

/// Reclaims the cgroups left by Warden processes that are no longer running (a gateway killed
/// with `kill -9` never drops its tasks' cgroups): kills whatever still runs in them and
/// removes them. A cgroup whose maker is alive, in this PID namespace, is left alone, so
/// another Warden on the host keeps its tasks; one whose maker's PID was reused since is left
/// too (until that process exits).
#[must_use]
pub fn reclaim(layout: &Layout) -> Reclaimed {
    let (hierarchies, v2) = match layout {
        Layout::V2 { root } => (vec![root.clone()], true),
        Layout::V1 {
            memory,
            pids,
            cpu: _,
            freezer,
            unified,
        } => (
            [memory, pids, freezer, unified]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            false,
        ),
    };
    let mut names = std::collections::BTreeSet::new();
    for h in &hierarchies {
        let Ok(entries) = std::fs::read_dir(h.join(PARENT)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                names.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Reclaimed::default();
    for name in names {
        let Some(pid) = owner(&name).filter(|_| valid_name(&name)) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let dirs: Vec<PathBuf> = hierarchies
            .iter()
            .map(|h| h.join(PARENT).join(&name))
            .filter(|d| d.is_dir())
            .collect();
        let has_kill = |d: &&PathBuf| d.join("cgroup.kill").exists();
        let cg = Cgroup {
            kill: dirs.iter().find(has_kill).cloned(),
            freezer: match layout {
                Layout::V1 {
                    freezer: Some(f), ..
                } => Some(f.join(PARENT).join(&name)).filter(|d| d.is_dir()),
                _ => None,
            },
            freeze_v2: if v2 {
                dirs.first().filter(|d| !has_kill(d)).cloned()
            } else {
                None
            },
            join: dirs,
        };
        let paths = cg.join.clone();
        drop(cg);
        if paths.iter().any(|d| d.exists()) {
            out.failed.push(name);
        } else {
            out.removed.push(name);
        }
    }
    out
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill(Duration::from_secs(2));
        for d in &self.join {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maker_of_a_cgroup_is_read_from_its_name() {
        assert_eq!(owner("upstream-demo-1015-0"), Some(1015));
        assert_eq!(owner("test-kill-9-3-4242-17"), Some(4242));
        assert_eq!(owner("upstream-demo"), None);
        assert_eq!(owner("1015-0"), None);
        assert_eq!(owner("upstream-demo-x-0"), None);
        assert_eq!(owner("upstream-demo-0-0"), None);
        assert_eq!(owner("upstream-demo-12-"), None);
    }

    #[test]
    fn names_are_restricted_to_what_warden_makes() {
        assert!(valid_name("tenant-acme.session_1"));
        assert!(!valid_name("../escape"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }

    #[test]
    fn a_host_without_hierarchies_has_no_layout() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Layout::detect_at(empty.path()), None);
    }
}
