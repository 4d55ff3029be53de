//! Cgroups: limits for a task's whole process tree, and a kill that leaves nothing behind.
//!
//! cgroup v2 when the unified hierarchy has the `memory` and `pids` controllers; otherwise the
//! v1 `memory`, `pids`, `cpu` and `cpuacct` hierarchies, with the (controller-less) unified
//! hierarchy kept for its `cgroup.kill`, else the v1 `freezer` (freeze, kill every member, thaw,
//! until empty).
//!
//! CPU is bounded for the whole tree, not per process (issue 18: respawning children each
//! stayed under their own `RLIMIT_CPU` and used three times the limit together): a quota caps
//! how much of the machine the tree uses at once (`cpu.max`, v1 `cpu.cfs_quota_us`), and a
//! watchdog thread reads the tree's accounted total (`cpu.stat`, v1 `cpuacct.usage`) and kills
//! the tree once it passes `cpu_seconds`.

use crate::spec::{Guarantee, Layer, Limits, Status};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
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
        /// The `cpuacct` hierarchy (the same directory as `cpu` where they are mounted together).
        cpuacct: Option<PathBuf>,
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
            cpuacct: dir(&root.join("cpuacct")).or_else(|| dir(&root.join("cpu,cpuacct"))),
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
                    "cgroup v2 memory, pids",
                    Status::Enforced,
                    format!("under {}", root.join(PARENT).display()),
                ),
                if v2_has_cpu(root) {
                    Layer::new(
                        Guarantee::Limits,
                        "cgroup v2 cpu",
                        Status::Enforced,
                        "a CPU quota and the CPU seconds of the whole tree",
                    )
                } else {
                    Layer::new(
                        Guarantee::Limits,
                        "cgroup v2 cpu",
                        Status::Degraded,
                        "no cpu controller: CPU seconds counted per process only (RLIMIT_CPU)",
                    )
                },
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
                cpu,
                cpuacct,
                freezer,
                unified,
            } => {
                let cpu = if cpu.is_some() && cpuacct.is_some() {
                    Layer::new(
                        Guarantee::Limits,
                        "cgroup v1 cpu, cpuacct",
                        Status::Enforced,
                        "a CPU quota and the CPU seconds of the whole tree",
                    )
                } else {
                    Layer::new(
                        Guarantee::Limits,
                        "cgroup v1 cpu, cpuacct",
                        Status::Degraded,
                        "no cpu or cpuacct hierarchy: CPU seconds counted per process only (RLIMIT_CPU)",
                    )
                };
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
                vec![limits, cpu, kill]
            }
        }
    }
}

/// Whether the unified hierarchy offers the `cpu` controller.
fn v2_has_cpu(root: &Path) -> bool {
    std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
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
    tree: Arc<Tree>,
}

/// The directories of one task's cgroups, shared with the CPU watchdog.
#[derive(Debug)]
struct Tree {
    /// Directories the task joins.
    join: Vec<PathBuf>,
    /// A v2 directory with `cgroup.kill`.
    kill: Option<PathBuf>,
    /// A v1 freezer directory.
    freezer: Option<PathBuf>,
    /// A v2 directory without `cgroup.kill`, frozen with `cgroup.freeze`.
    freeze_v2: Option<PathBuf>,
    /// The tree's CPU account, where the host keeps one.
    meter: Option<Meter>,
}

/// A tree's accounted CPU time and its budget.
#[derive(Debug)]
struct Meter {
    /// `cpu.stat` (v2, `usage_usec`) or `cpuacct.usage` (v1, nanoseconds).
    usage: PathBuf,
    /// The tree is killed once it has used more.
    budget: Duration,
    /// Set when the watchdog killed the tree for passing its budget.
    exceeded: AtomicBool,
}

impl Meter {
    fn used(&self) -> Option<Duration> {
        let text = std::fs::read_to_string(&self.usage).ok()?;
        if self.usage.ends_with("cpu.stat") {
            let usec = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(Duration::from_micros(usec))
        } else {
            Some(Duration::from_nanos(text.trim().parse().ok()?))
        }
    }
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

/// The CFS period Warden sets, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The quota, in microseconds per [`CPU_PERIOD_US`], for `millicores` (the kernel's least is
/// one millisecond).
fn cpu_quota_us(millicores: u64) -> u64 {
    millicores
        .saturating_mul(CPU_PERIOD_US)
        .checked_div(1_000)
        .unwrap_or(0)
        .max(1_000)
}

/// What [`Cgroup::create`] collects before the task's `Tree` exists.
#[derive(Default)]
struct Made {
    join: Vec<PathBuf>,
    kill: Option<PathBuf>,
    freezer: Option<PathBuf>,
    freeze_v2: Option<PathBuf>,
    usage: Option<PathBuf>,
}

impl Cgroup {
    /// Makes the cgroups named `name` with `limits`, and puts the tree's CPU total under
    /// watch.
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
        let mut made = Made::default();
        // Each directory is remembered as soon as it exists, so a later failure removes it.
        let result = match layout {
            Layout::V2 { root } => create_v2(root, name, limits, &mut made),
            Layout::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
                freezer,
                unified,
            } => {
                let v1 = V1 {
                    memory: memory.as_deref(),
                    pids: pids.as_deref(),
                    cpu: cpu.as_deref(),
                    cpuacct: cpuacct.as_deref(),
                    freezer: freezer.as_deref(),
                    unified: unified.as_deref(),
                };
                create_v1(&v1, name, limits, &mut made)
            }
        };
        let meter = made.usage.take().map(|usage| Meter {
            usage,
            budget: Duration::from_secs(limits.cpu_seconds),
            exceeded: AtomicBool::new(false),
        });
        let cg = Cgroup {
            tree: Arc::new(Tree {
                join: made.join,
                kill: made.kill,
                freezer: made.freezer,
                freeze_v2: made.freeze_v2,
                meter,
            }),
        };
        result?;
        if cg.tree.meter.is_some() {
            watch(&cg.tree)?;
        }
        Ok(cg)
    }

    /// The directories a process joins (`Spec::cgroups`).
    #[must_use]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.tree.join
    }

    /// The pids in the task's cgroups.
    #[must_use]
    pub fn pids(&self) -> Vec<i32> {
        self.tree.pids()
    }

    /// Kills every process of the task and waits (up to `within`) until none is left.
    /// Returns whether the cgroups are empty.
    pub fn kill(&self, within: Duration) -> bool {
        self.tree.kill(within)
    }

    /// The CPU time the whole tree has used, where the host accounts it.
    #[must_use]
    pub fn cpu_used(&self) -> Option<Duration> {
        self.tree.meter.as_ref().and_then(Meter::used)
    }

    /// Whether the tree was killed for passing its CPU seconds.
    #[must_use]
    pub fn cpu_exceeded(&self) -> bool {
        self.tree
            .meter
            .as_ref()
            .is_some_and(|m| m.exceeded.load(Ordering::SeqCst))
    }

    /// Whether the task was killed by the memory limit (v2 `memory.events`, v1 `memory.oom_control`).
    #[must_use]
    pub fn oom_killed(&self) -> bool {
        self.tree.join.iter().any(|d| {
            let events = std::fs::read_to_string(d.join("memory.events")).unwrap_or_default();
            let v1 = std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            events
                .lines()
                .chain(v1.lines())
                .any(|l| l.starts_with("oom_kill ") && l.trim_end() != "oom_kill 0")
        })
    }
}

fn create_v2(root: &Path, name: &str, limits: &Limits, made: &mut Made) -> Result<(), CgroupError> {
    let parent = mkdir(&root.join(PARENT))?;
    // Let the task's cgroup have the controllers (cpu where the host offers it; the layer
    // report says when it does not).
    for c in ["+memory", "+pids", "+cpu"] {
        let r = write(&parent.join("cgroup.subtree_control"), c);
        if c != "+cpu" {
            r?;
        }
    }
    let d = leaf(&parent.join(name))?;
    made.join.push(d.clone());
    if d.join("cgroup.kill").exists() {
        made.kill = Some(d.clone());
    } else {
        made.freeze_v2 = Some(d.clone());
    }
    write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
    let _ = write(&d.join("memory.swap.max"), "0");
    write(&d.join("memory.oom.group"), "1")?;
    write(&d.join("pids.max"), &limits.pids.to_string())?;
    if d.join("cpu.max").exists() {
        let quota = format!("{} {CPU_PERIOD_US}", cpu_quota_us(limits.cpu_millicores));
        write(&d.join("cpu.max"), &quota)?;
        // `cpu.stat` counts the whole subtree's usage.
        made.usage = Some(d.join("cpu.stat"));
    }
    Ok(())
}

/// The v1 hierarchies of this host.
struct V1<'a> {
    memory: Option<&'a Path>,
    pids: Option<&'a Path>,
    cpu: Option<&'a Path>,
    cpuacct: Option<&'a Path>,
    freezer: Option<&'a Path>,
    unified: Option<&'a Path>,
}

fn create_v1(h: &V1<'_>, name: &str, limits: &Limits, made: &mut Made) -> Result<(), CgroupError> {
    if let Some(m) = h.memory {
        let d = leaf(&m.join(PARENT).join(name))?;
        made.join.push(d.clone());
        write(
            &d.join("memory.limit_in_bytes"),
            &limits.memory_bytes.to_string(),
        )?;
        // Without swap accounting this file does not exist; nothing to cap then.
        let _ = write(
            &d.join("memory.memsw.limit_in_bytes"),
            &limits.memory_bytes.to_string(),
        );
    }
    if let Some(p) = h.pids {
        let d = leaf(&p.join(PARENT).join(name))?;
        made.join.push(d.clone());
        write(&d.join("pids.max"), &limits.pids.to_string())?;
    }
    if let (Some(cpu), Some(acct)) = (h.cpu, h.cpuacct) {
        let d = leaf(&cpu.join(PARENT).join(name))?;
        made.join.push(d.clone());
        write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(
            &d.join("cpu.cfs_quota_us"),
            &cpu_quota_us(limits.cpu_millicores).to_string(),
        )?;
        // Mounted together (`cpu,cpuacct`), one directory serves both.
        let same = std::fs::canonicalize(cpu).ok() == std::fs::canonicalize(acct).ok();
        let a = if same {
            d
        } else {
            let a = leaf(&acct.join(PARENT).join(name))?;
            made.join.push(a.clone());
            a
        };
        made.usage = Some(a.join("cpuacct.usage"));
    }
    if let Some(f) = h.freezer {
        let d = leaf(&f.join(PARENT).join(name))?;
        made.join.push(d.clone());
        made.freezer = Some(d);
    }
    if let Some(u) = h.unified.filter(|u| kernel_has_cgroup_kill(u)) {
        let d = leaf(&u.join(PARENT).join(name))?;
        made.join.push(d.clone());
        made.kill = Some(d);
    }
    Ok(())
}

impl Tree {
    fn pids(&self) -> Vec<i32> {
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

    fn kill(&self, within: Duration) -> bool {
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

    /// Kills the tree if it has used more CPU than its budget.
    fn check_cpu(&self) {
        let Some(m) = &self.meter else { return };
        if m.exceeded.load(Ordering::SeqCst) {
            return;
        }
        if m.used().is_some_and(|used| used > m.budget) {
            // INVARIANT (fail-closed, issue 18): a tree past its CPU seconds is killed whole,
            // however many processes shared them.
            m.exceeded.store(true, Ordering::SeqCst);
            self.kill(Duration::from_secs(2));
        }
    }
}

/// How often the watchdog reads each tree's CPU total: a tree overshoots its budget by at most
/// this times its quota.
const CPU_WATCH_EVERY: Duration = Duration::from_millis(250);

/// The trees under the CPU watchdog.
static WATCHED: Mutex<Vec<Weak<Tree>>> = Mutex::new(Vec::new());

/// Puts `tree` under the CPU watchdog (one thread per process, started on first use).
fn watch(tree: &Arc<Tree>) -> Result<(), CgroupError> {
    static STARTED: OnceLock<bool> = OnceLock::new();
    let started = *STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("warden-cpu-watch".into())
            .spawn(watchdog)
            .is_ok()
    });
    if !started {
        // INVARIANT (fail-closed): a tree whose CPU total nobody watches does not start.
        return Err(CgroupError {
            path: "warden-cpu-watch".into(),
            error: std::io::Error::other("cannot start the CPU watchdog thread"),
        });
    }
    let mut list = WATCHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    list.retain(|w| w.strong_count() > 0);
    list.push(Arc::downgrade(tree));
    Ok(())
}

fn watchdog() {
    loop {
        std::thread::sleep(CPU_WATCH_EVERY);
        let live: Vec<Arc<Tree>> = {
            let mut list = WATCHED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for tree in live {
            tree.check_cpu();
        }
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
    reclaim_in(layout, PARENT)
}

/// The hierarchies of `layout` (each directory once).
#[must_use]
pub fn hierarchies(layout: &Layout) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = match layout {
        Layout::V2 { root } => vec![root.clone()],
        Layout::V1 {
            memory,
            pids,
            cpu,
            cpuacct,
            freezer,
            unified,
        } => [memory, pids, cpu, cpuacct, freezer, unified]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
    };
    let mut seen = std::collections::BTreeSet::new();
    all.retain(|h| seen.insert(std::fs::canonicalize(h).unwrap_or_else(|_| h.clone())));
    all
}

/// [`reclaim`] under the directory `parent` of each hierarchy instead of Warden's own (tests
/// use a private one, so that a gateway starting beside them reclaims nothing of theirs).
#[must_use]
pub fn reclaim_in(layout: &Layout, parent: &str) -> Reclaimed {
    let hierarchies = hierarchies(layout);
    let v2 = matches!(layout, Layout::V2 { .. });
    let mut names = std::collections::BTreeSet::new();
    for h in &hierarchies {
        let Ok(entries) = std::fs::read_dir(h.join(parent)) else {
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
            .map(|h| h.join(parent).join(&name))
            .filter(|d| d.is_dir())
            .collect();
        let has_kill = |d: &&PathBuf| d.join("cgroup.kill").exists();
        let cg = Cgroup {
            tree: Arc::new(Tree {
                kill: dirs.iter().find(has_kill).cloned(),
                freezer: match layout {
                    Layout::V1 {
                        freezer: Some(f), ..
                    } => Some(f.join(parent).join(&name)).filter(|d| d.is_dir()),
                    _ => None,
                },
                freeze_v2: if v2 {
                    dirs.first().filter(|d| !has_kill(d)).cloned()
                } else {
                    None
                },
                join: dirs,
                meter: None,
            }),
        };
        let paths = cg.tree.join.clone();
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
        for d in &self.tree.join {
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
