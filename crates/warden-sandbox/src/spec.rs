//! What one sandboxed process gets: the launch specification passed from the Executor to the
//! sandbox helper (`warden sandbox exec`), and the per-layer report it produces.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the helper binary is mounted inside a bubblewrap view.
pub const HELPER_IN_VIEW: &str = "/run/warden/warden";
/// Where the egress socket is mounted inside a bubblewrap view.
pub const EGRESS_SOCKET_IN_VIEW: &str = "/run/warden/egress.sock";
/// The unprivileged uid and gid a sandbox runs as when Warden runs as root (`nobody`).
pub const NOBODY: u32 = 65_534;
/// Default loopback port of the egress forwarder inside the sandbox.
pub const DEFAULT_PROXY_PORT: u16 = 3128;

/// What a sandbox promises; the manifest says which ones a tool requires.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// No host filesystem outside the workspace (and a read-only system view).
    Filesystem,
    /// No network except through Warden's egress guard.
    Egress,
    /// No privilege: an unprivileged uid, no_new_privs, dangerous syscalls refused.
    Privilege,
    /// Bounded CPU, memory, processes.
    Limits,
    /// A kill that leaves nothing behind.
    Kill,
}

impl Guarantee {
    /// Every guarantee, in report order.
    pub const ALL: [Guarantee; 5] = [
        Guarantee::Filesystem,
        Guarantee::Egress,
        Guarantee::Privilege,
        Guarantee::Limits,
        Guarantee::Kill,
    ];

    /// Its name in the manifest and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Guarantee::Filesystem => "filesystem",
            Guarantee::Egress => "egress",
            Guarantee::Privilege => "privilege",
            Guarantee::Limits => "limits",
            Guarantee::Kill => "kill",
        }
    }

    /// Parses a manifest name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Guarantee> {
        Guarantee::ALL.into_iter().find(|g| g.name() == s)
    }
}

/// How far a mechanism is in force.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Nothing provides it.
    Absent,
    /// Partly provided.
    Degraded,
    /// Fully provided.
    Enforced,
}

impl Status {
    /// Its name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Status::Absent => "absent",
            Status::Degraded => "degraded",
            Status::Enforced => "enforced",
        }
    }
}

/// One mechanism, as it was found when the sandbox was entered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// The guarantee it serves.
    pub guarantee: Guarantee,
    /// The mechanism (`cgroup v1 memory`, `landlock ABI 7`, ...).
    pub mechanism: String,
    /// Whether it is in force.
    pub status: Status,
    /// Why, in words.
    pub detail: String,
}

impl Layer {
    /// A layer.
    pub fn new(
        guarantee: Guarantee,
        mechanism: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
    ) -> Self {
        Layer {
            guarantee,
            mechanism: mechanism.into(),
            status,
            detail: detail.into(),
        }
    }
}

/// Each guarantee's status over a set of layers: enforced when every layer serving it is,
/// absent when none is, degraded otherwise (and absent when no layer serves it at all).
#[must_use]
pub fn summarise(layers: &[Layer]) -> Vec<(Guarantee, Status)> {
    Guarantee::ALL
        .into_iter()
        .map(|g| {
            let mine: Vec<Status> = layers
                .iter()
                .filter(|l| l.guarantee == g)
                .map(|l| l.status)
                .collect();
            let status = if mine.is_empty() || mine.iter().all(|s| *s == Status::Absent) {
                Status::Absent
            } else if mine.iter().all(|s| *s == Status::Enforced) {
                Status::Enforced
            } else {
                Status::Degraded
            };
            (g, status)
        })
        .collect()
}

/// How the process is cut off from the host's namespaces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Isolation {
    /// bubblewrap at this path: own mount, pid, net, ipc and uts namespaces, a minimal
    /// read-only view of the system, the workspace read-write, a private `/tmp`.
    Bwrap {
        /// The `bwrap` binary.
        path: PathBuf,
    },
    /// Direct `unshare(2)` of the net, ipc, uts and mount namespaces (no pid namespace, no
    /// private view: Landlock alone guards the filesystem).
    Unshare,
    /// None.
    None,
}

/// Resource limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time of the whole process tree, in seconds: the cgroup's accounted total (the tree
    /// is killed when it passes it), and each process's `RLIMIT_CPU` (SIGXCPU, then SIGKILL a
    /// second later).
    pub cpu_seconds: u64,
    /// CPU the whole tree may use at once, in thousandths of a core (the cgroup's CPU quota:
    /// 1000 is one core).
    pub cpu_millicores: u64,
    /// Memory, in bytes (the cgroup's limit; the OOM killer ends the task beyond it).
    pub memory_bytes: u64,
    /// Processes and threads (the cgroup's `pids.max`).
    pub pids: u64,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Largest file it may write, in bytes (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// The workspace's total size, in bytes: it is a private in-memory filesystem of this size
    /// (its pages and inodes are charged to the task's memory limit), never the host's disk.
    pub workspace_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: 3_600,
            cpu_millicores: 1_000,
            memory_bytes: 512 << 20,
            pids: 128,
            open_files: 1_024,
            file_size_bytes: 256 << 20,
            workspace_bytes: 256 << 20,
        }
    }
}

/// The egress bridge: the only way out of the sandbox's network namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// The Unix socket of Warden's egress proxy, as a host path.
    pub socket: PathBuf,
    /// The loopback port the forwarder listens on inside the sandbox.
    pub port: u16,
}

/// One sandboxed launch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The program (an absolute path).
    pub program: PathBuf,
    /// Its arguments, passed as they are (never through a shell).
    pub args: Vec<String>,
    /// The workspace: its working directory and the only place it may write. Under bubblewrap
    /// a private in-memory filesystem of `limits.workspace_bytes` mounted at this path (the
    /// host directory stays empty); without a mount view, the host directory itself.
    pub workspace: PathBuf,
    /// Further host paths it may read and execute (the program's installation).
    pub read_only: Vec<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Cgroup directories the process joins before it executes anything.
    pub cgroups: Vec<PathBuf>,
    /// Namespaces.
    pub isolation: Isolation,
    /// The uid and gid to run as when started as root.
    pub drop_to: Option<u32>,
    /// Apply Landlock.
    pub landlock: bool,
    /// Apply the seccomp filter.
    pub seccomp: bool,
    /// The egress bridge; `None`: no network at all.
    pub egress: Option<Bridge>,
    /// Guarantees that must be enforced, or the program does not start.
    pub require: Vec<Guarantee>,
    /// Layers found so far (filled in by the Executor, then by each stage).
    #[serde(default)]
    pub layers: Vec<Layer>,
    /// Print the layer report as JSON instead of starting the program (`warden sandbox doctor`).
    #[serde(default)]
    pub report: bool,
}

impl Spec {
    /// A specification with every layer on and nothing required yet.
    #[must_use]
    pub fn new(program: PathBuf, args: Vec<String>, workspace: PathBuf) -> Self {
        Spec {
            program,
            args,
            workspace,
            read_only: Vec::new(),
            limits: Limits::default(),
            cgroups: Vec::new(),
            isolation: Isolation::None,
            drop_to: Some(NOBODY),
            landlock: true,
            seccomp: true,
            egress: None,
            require: Vec::new(),
            layers: Vec::new(),
            report: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarantee_is_enforced_only_when_every_layer_is() {
        let layers = vec![
            Layer::new(Guarantee::Filesystem, "bwrap", Status::Enforced, ""),
            Layer::new(Guarantee::Filesystem, "landlock", Status::Absent, ""),
            Layer::new(Guarantee::Kill, "cgroup.kill", Status::Enforced, ""),
            Layer::new(Guarantee::Limits, "rlimits", Status::Absent, ""),
        ];
        let s = summarise(&layers);
        assert_eq!(s[0], (Guarantee::Filesystem, Status::Degraded));
        assert_eq!(s[1], (Guarantee::Egress, Status::Absent));
        assert_eq!(s[3], (Guarantee::Limits, Status::Absent));
        assert_eq!(s[4], (Guarantee::Kill, Status::Enforced));
    }

    #[test]
    fn a_spec_round_trips_and_refuses_unknown_keys() {
        let spec = Spec::new("/bin/true".into(), vec!["x".into()], "/tmp/w".into());
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<Spec>(&text).unwrap(), spec);
        let bad = text.replacen('{', "{\"shell\":true,", 1);
        let err = serde_json::from_str::<Spec>(&bad).unwrap_err().to_string();
        assert!(err.contains("shell"), "{err}");
        assert_eq!(Guarantee::parse("egress"), Some(Guarantee::Egress));
        assert_eq!(Guarantee::parse("network"), None);
    }
}
