//! Warden's sandbox: everything the Executor starts runs inside it (issue 6; INV-006, INV-011,
//! INV-012, INV-024).
//!
//! Layers, each reported as enforced, degraded or absent ([`spec::Layer`]):
//!
//! - **limits**: a cgroup per task (v2, else v1 `memory` and `pids`) joined before the program
//!   executes, and rlimits (CPU seconds, open files, file size, no core dumps);
//! - **privilege**: an unprivileged uid when Warden runs as root, `no_new_privs`, a seccomp
//!   filter ([`seccomp`]), pid/ipc/uts namespaces;
//! - **filesystem**: a bubblewrap view (the system read-only, the workspace read-write, a
//!   private `/tmp`, nothing else) and Landlock;
//! - **egress**: a network namespace with no route out; the [`egress`] proxy, reached over a Unix
//!   socket through the [`forward`]er, is the only way out;
//! - **kill**: `cgroup.kill` (or the v1 freezer) ends the whole tree, double forks included.
//!
//! The launch is split in two ([`stage`]): this crate builds the [`spec::Spec`] and the
//! cgroups ([`cgroup`]) on Warden's side; the helper (`warden sandbox exec`, this binary run
//! again) applies the layers to itself and becomes the program.

pub mod cgroup;
pub mod egress;
pub mod forward;
mod seccomp;
pub mod spec;
pub mod stage;

use spec::{summarise, Guarantee, Isolation, Layer, Spec, Status};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this process runs as root (the sandbox then drops to [`spec::NOBODY`]).
#[must_use]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Why a sandboxed launch could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The cgroup could not be made.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The workspace could not be made.
    #[error("workspace {path}: {error}")]
    Workspace {
        /// The directory.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The specification could not be encoded.
    #[error("cannot encode the sandbox spec: {0}")]
    Spec(String),
    /// A required guarantee is absent on this host, known before launching.
    #[error("sandbox guarantee `{guarantee}` is required but {status} on this host ({why}); the tool does not run")]
    Unavailable {
        /// The guarantee.
        guarantee: &'static str,
        /// Its status here.
        status: &'static str,
        /// The mechanisms and why.
        why: String,
    },
}

/// What this host offers, found once at start (`warden sandbox doctor` prints it).
#[derive(Debug, Clone)]
pub struct Host {
    /// The helper binary (`warden`).
    pub helper: PathBuf,
    /// The cgroup layout.
    pub layout: Option<cgroup::Layout>,
    /// How processes are isolated.
    pub isolation: Isolation,
    /// Why bubblewrap is not used, if it is not.
    pub isolation_note: String,
}

/// Runs bubblewrap once with the namespaces the sandbox uses.
fn bwrap_works(path: &Path) -> Result<(), String> {
    let mut cmd = Command::new(path);
    cmd.args([
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
    ]);
    if !nix::unistd::geteuid().is_root() {
        cmd.arg("--unshare-user");
    }
    let out = cmd
        .arg("true")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Host {
    /// Probes this host. `helper` is the `warden` binary that runs `sandbox exec`.
    #[must_use]
    pub fn probe(helper: PathBuf) -> Host {
        let layout = cgroup::Layout::detect();
        let (isolation, isolation_note) = match on_path("bwrap") {
            Some(path) => match bwrap_works(&path) {
                Ok(()) => (Isolation::Bwrap { path }, String::new()),
                Err(e) => (Isolation::Unshare, e),
            },
            None => (
                Isolation::Unshare,
                "bubblewrap (`bwrap`) is not installed".into(),
            ),
        };
        Host {
            helper,
            layout,
            isolation,
            isolation_note,
        }
    }

    /// The layers the Executor provides before the helper runs (cgroups, kill).
    #[must_use]
    pub fn base_layers(&self) -> Vec<Layer> {
        match &self.layout {
            Some(l) => l.layers(),
            None => vec![
                Layer::new(
                    Guarantee::Limits,
                    "cgroup",
                    Status::Absent,
                    "no cgroup hierarchy is mounted",
                ),
                Layer::new(
                    Guarantee::Kill,
                    "cgroup",
                    Status::Absent,
                    "no cgroup hierarchy is mounted",
                ),
            ],
        }
    }

    /// Fails early when a required guarantee that Warden's side provides (limits, kill) is
    /// absent here; the helper checks the rest as it applies them.
    ///
    /// # Errors
    /// The first required guarantee the host cannot enforce.
    pub fn check(&self, require: &[Guarantee]) -> Result<(), SandboxError> {
        let layers = self.base_layers();
        for (g, status) in summarise(&layers) {
            if matches!(g, Guarantee::Limits | Guarantee::Kill)
                && require.contains(&g)
                && status != Status::Enforced
            {
                return Err(SandboxError::Unavailable {
                    guarantee: g.name(),
                    status: status.name(),
                    why: layers
                        .iter()
                        .filter(|l| l.guarantee == g)
                        .map(|l| format!("{}: {}", l.mechanism, l.detail))
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
        if require.contains(&Guarantee::Filesystem) || require.contains(&Guarantee::Egress) {
            if let Isolation::Unshare | Isolation::None = self.isolation {
                if require.contains(&Guarantee::Filesystem) {
                    return Err(SandboxError::Unavailable {
                        guarantee: "filesystem",
                        status: "degraded",
                        why: format!("no mount view: {}", self.isolation_note),
                    });
                }
            }
        }
        Ok(())
    }

    /// The profile a receipt names: the isolation and each guarantee's status here.
    #[must_use]
    pub fn profile(&self, require: &[Guarantee]) -> String {
        let iso = match &self.isolation {
            Isolation::Bwrap { .. } => "bwrap",
            Isolation::Unshare => "unshare",
            Isolation::None => "none",
        };
        let req: Vec<&str> = require.iter().map(|g| g.name()).collect();
        format!(
            "warden-sandbox/{iso}+landlock+seccomp; required: {}",
            if req.is_empty() {
                "none".into()
            } else {
                req.join(",")
            }
        )
    }

    /// Prepares a launch: makes the task's cgroup (named `name`) and workspace, and returns
    /// the command that runs `spec` through the helper. Keep the [`cgroup::Cgroup`]: dropping
    /// it kills the task.
    ///
    /// # Errors
    /// A required guarantee absent here, or a cgroup or workspace that cannot be made.
    pub fn prepare(
        &self,
        name: &str,
        mut spec: Spec,
    ) -> Result<(Option<cgroup::Cgroup>, Command), SandboxError> {
        self.check(&spec.require)?;
        // Paths are mounted at themselves inside the view: they must be absolute.
        for p in std::iter::once(&mut spec.workspace).chain(spec.read_only.iter_mut()) {
            if p.is_relative() {
                *p = std::path::absolute(&*p).map_err(|error| SandboxError::Workspace {
                    path: p.display().to_string(),
                    error,
                })?;
            }
        }
        std::fs::create_dir_all(&spec.workspace).map_err(|error| SandboxError::Workspace {
            path: spec.workspace.display().to_string(),
            error,
        })?;
        if nix::unistd::geteuid().is_root() {
            if let Some(id) = spec.drop_to {
                std::os::unix::fs::chown(&spec.workspace, Some(id), Some(id)).map_err(|error| {
                    SandboxError::Workspace {
                        path: spec.workspace.display().to_string(),
                        error,
                    }
                })?;
            }
        }
        // Each launch its own cgroup: a name is never reused, so an old task's kill cannot
        // reach a new one.
        static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{name}-{}-{n}", std::process::id());
        spec.layers = self.base_layers();
        let cg = match &self.layout {
            Some(layout) => match cgroup::Cgroup::create(layout, &name, &spec.limits) {
                Ok(cg) => Some(cg),
                // Without write access to the hierarchy (Warden not root) a task that does not
                // require limits or kill runs without a cgroup, and its report says so.
                Err(e)
                    if !spec.require.contains(&Guarantee::Limits)
                        && !spec.require.contains(&Guarantee::Kill) =>
                {
                    spec.layers = vec![
                        Layer::new(Guarantee::Limits, "cgroup", Status::Absent, e.to_string()),
                        Layer::new(Guarantee::Kill, "cgroup", Status::Absent, e.to_string()),
                    ];
                    None
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        spec.cgroups = cg.as_ref().map(|c| c.dirs().to_vec()).unwrap_or_default();
        spec.isolation = self.isolation.clone();
        let json = serde_json::to_string(&spec).map_err(|e| SandboxError::Spec(e.to_string()))?;
        let mut cmd = Command::new(&self.helper);
        cmd.args(["sandbox", "exec", "--spec", &json]);
        Ok((cg, cmd))
    }
}

/// Why `warden sandbox doctor`'s probe could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoctorError {
    /// Its temporary workspace or socket could not be made.
    #[error("{}: {error}", path.display())]
    Setup {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The launch could not be prepared.
    #[error(transparent)]
    Prepare(#[from] SandboxError),
    /// The helper could not be run.
    #[error("cannot run the helper: {0}")]
    Run(#[source] std::io::Error),
    /// The helper exited with an error (its stderr).
    #[error("the sandbox helper failed: {0}")]
    Helper(String),
    /// The helper's report is not the JSON it should be.
    #[error("the sandbox helper's report is not valid: {0}")]
    Report(String),
}

/// Runs the helper in report mode with every layer on and returns what it found
/// (`warden sandbox doctor`).
///
/// # Errors
/// [`DoctorError`]: the probe could not run (a temporary directory, the helper, its output).
pub fn doctor(host: &Host) -> Result<Vec<Layer>, DoctorError> {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("warden-doctor-{}-{run}", std::process::id()));
    let workspace = dir.join("work");
    std::fs::create_dir_all(&workspace).map_err(|error| DoctorError::Setup {
        path: workspace.clone(),
        error,
    })?;
    let socket = dir.join("egress.sock");
    // A socket left by an earlier process of the same PID (killed before it cleaned up).
    let _ = std::fs::remove_file(&socket);
    let _listener =
        std::os::unix::net::UnixListener::bind(&socket).map_err(|error| DoctorError::Setup {
            path: socket.clone(),
            error,
        })?;
    let mut spec = Spec::new(PathBuf::from("/bin/true"), Vec::new(), workspace);
    spec.report = true;
    spec.egress = Some(spec::Bridge {
        socket,
        port: spec::DEFAULT_PROXY_PORT,
    });
    let name = format!("doctor-{}-{run}", std::process::id());
    let result = host.prepare(&name, spec).map_err(DoctorError::from);
    let out = result.and_then(|(cg, mut cmd)| {
        let out = cmd.output();
        drop(cg);
        out.map_err(DoctorError::Run)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        return Err(DoctorError::Helper(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let mut layers: Vec<Layer> =
        serde_json::from_slice(&out.stdout).map_err(|e| DoctorError::Report(e.to_string()))?;
    if !host.isolation_note.is_empty() {
        layers.push(Layer::new(
            Guarantee::Filesystem,
            "bubblewrap",
            Status::Absent,
            host.isolation_note.clone(),
        ));
    }
    Ok(layers)
}
