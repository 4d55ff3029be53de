//! The helper's side: what `warden sandbox exec` does to itself before it becomes the program.
//!
//! Two stages. The outer stage runs on the host: it joins the task's cgroups and sets the
//! rlimits (both inherited by everything it starts), then either executes bubblewrap, which
//! builds the namespaces and the view and runs the inner stage inside them, or unshares what it
//! can itself. The inner stage drops to the unprivileged uid, sets no_new_privs, applies Landlock
//! and the seccomp filter, starts the egress forwarder, checks that every required guarantee is
//! enforced, and only then executes the program. Each step that fails or is unavailable becomes
//! a [`Layer`] that says so; a required guarantee that is not enforced stops the launch.

use crate::spec::{
    summarise, Guarantee, Isolation, Layer, Spec, Status, EGRESS_SOCKET_IN_VIEW, HELPER_IN_VIEW,
};
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Exit code of a launch the sandbox refused (a required guarantee missing, a bad spec).
pub const EXIT_REFUSED: u8 = 126;

/// Why a launch stopped before the program ran.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A guarantee the tool requires is not enforced here.
    #[error("sandbox guarantee `{guarantee}` is required but {status} here: {why}")]
    Required {
        /// The guarantee.
        guarantee: &'static str,
        /// What it is.
        status: &'static str,
        /// The layers that serve it.
        why: String,
    },
    /// A step failed.
    #[error("sandbox: {0}")]
    Step(String),
    /// The final exec failed.
    #[error("cannot execute `{program}`: {error}")]
    Exec {
        /// The program.
        program: String,
        /// The error.
        error: std::io::Error,
    },
}

/// What a stage ends in when it does not become the program: the report (`report: true`).
pub type Outcome = Result<Vec<Layer>, StageError>;

/// The outer stage (on the host). Returns only on failure or with the report; on success the
/// process has become bubblewrap or the program.
pub fn outer(mut spec: Spec) -> Outcome {
    // INVARIANT (fail-closed): the process joins its cgroups before it executes anything, so
    // every descendant is counted and killed with it.
    let me = std::process::id().to_string();
    for dir in &spec.cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &me)
            .map_err(|e| StageError::Step(format!("cannot join {}: {e}", procs.display())))?;
    }
    spec.layers.push(set_rlimits(&spec));
    match spec.isolation.clone() {
        Isolation::Bwrap { path } => {
            spec.layers.push(Layer::new(
                Guarantee::Filesystem,
                "bubblewrap mount namespace",
                Status::Enforced,
                "a read-only view of the system, the workspace read-write, a private /tmp",
            ));
            spec.layers.push(Layer::new(
                Guarantee::Egress,
                "bubblewrap network namespace",
                Status::Enforced,
                "no interface but loopback: no route out",
            ));
            spec.layers.push(Layer::new(
                Guarantee::Privilege,
                "bubblewrap pid, ipc and uts namespaces",
                Status::Enforced,
                "cannot see or signal processes outside the sandbox",
            ));
            spec.layers.push(Layer::new(
                Guarantee::Limits,
                "workspace quota",
                Status::Enforced,
                format!(
                    "the workspace is a private in-memory filesystem of {} bytes, charged to the memory limit: the host's disk and inodes are untouched",
                    spec.limits.workspace_bytes
                ),
            ));
            // INVARIANT (issue 18): nothing on a command line describes the launch: bubblewrap
            // is PID 1 inside the sandbox and `/proc/1/cmdline` is readable there, so its
            // options (host paths) come from a memory file (`--args`), and the inner stage's
            // spec (limits, cgroups) from another, which the inner stage empties once read.
            let (options, inner_spec) = bwrap_args(&spec)?;
            let spec_fd = memory_file("warden-spec", inner_spec.as_bytes())?;
            let mut bytes = Vec::new();
            for a in &options {
                bytes.extend_from_slice(a.as_bytes());
                bytes.push(0);
            }
            let args_fd = memory_file("warden-bwrap-args", &bytes)?;
            let raw = std::os::fd::AsRawFd::as_raw_fd;
            let error = Command::new(&path)
                .arg("--args")
                .arg(raw(&args_fd).to_string())
                .args([
                    "--",
                    HELPER_IN_VIEW,
                    "sandbox",
                    "exec",
                    "--inner",
                    "--spec-fd",
                ])
                .arg(raw(&spec_fd).to_string())
                .exec();
            Err(StageError::Exec {
                program: path.display().to_string(),
                error,
            })
        }
        Isolation::Unshare => {
            use nix::sched::CloneFlags as F;
            let flags = F::CLONE_NEWNET | F::CLONE_NEWIPC | F::CLONE_NEWUTS | F::CLONE_NEWNS;
            match nix::sched::unshare(flags) {
                Ok(()) => {
                    spec.layers.push(Layer::new(
                        Guarantee::Egress,
                        "unshare network namespace",
                        Status::Enforced,
                        "no route out",
                    ));
                    spec.layers.push(Layer::new(
                        Guarantee::Privilege,
                        "unshare ipc and uts namespaces",
                        Status::Degraded,
                        "no pid namespace: host processes are visible",
                    ));
                    if spec.egress.is_some() {
                        loopback_up()?;
                    }
                }
                Err(e) => {
                    spec.layers.push(Layer::new(
                        Guarantee::Egress,
                        "unshare network namespace",
                        Status::Absent,
                        format!("unshare failed: {e}"),
                    ));
                    spec.layers.push(Layer::new(
                        Guarantee::Privilege,
                        "namespaces",
                        Status::Absent,
                        format!("unshare failed: {e}: host processes are visible and reachable"),
                    ));
                }
            }
            spec.layers.push(Layer::new(
                Guarantee::Filesystem,
                "mount view",
                Status::Absent,
                "no bubblewrap: the host filesystem is guarded by Landlock alone",
            ));
            spec.layers.push(no_workspace_quota());
            inner(spec)
        }
        Isolation::None => {
            spec.layers.push(Layer::new(
                Guarantee::Egress,
                "network namespace",
                Status::Absent,
                "no namespaces on this host",
            ));
            spec.layers.push(Layer::new(
                Guarantee::Privilege,
                "namespaces",
                Status::Absent,
                "no namespaces on this host: host processes are visible and reachable",
            ));
            spec.layers.push(Layer::new(
                Guarantee::Filesystem,
                "mount view",
                Status::Absent,
                "no namespaces on this host",
            ));
            spec.layers.push(no_workspace_quota());
            inner(spec)
        }
    }
}

/// Without a mount view the workspace is the host directory, bounded per file only.
fn no_workspace_quota() -> Layer {
    Layer::new(
        Guarantee::Limits,
        "workspace quota",
        Status::Degraded,
        "no mount view: the workspace is the host directory, each file bounded (RLIMIT_FSIZE) but not their total",
    )
}

/// An anonymous memory file holding `bytes`, left open across `exec` (its descriptor number
/// is passed on the command line instead of its content).
fn memory_file(name: &str, bytes: &[u8]) -> Result<std::os::fd::OwnedFd, StageError> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::{Seek as _, Write as _};
    let fd = memfd_create(name, MFdFlags::empty())
        .map_err(|e| StageError::Step(format!("cannot make the memory file {name}: {e}")))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)
        .and_then(|()| file.rewind())
        .map_err(|e| StageError::Step(format!("cannot write the memory file {name}: {e}")))?;
    Ok(file.into())
}

/// Reads the inner stage's spec from descriptor `fd` (a memory file the outer stage made),
/// then empties the file, so that no process left holding it (bubblewrap's PID 1) shows it to
/// the program, and closes it.
///
/// # Errors
/// [`StageError::Step`]: the descriptor cannot be read or emptied.
pub fn spec_from_fd(fd: i32) -> Result<String, StageError> {
    use std::io::Read as _;
    let path = format!("/proc/self/fd/{fd}");
    let step = |e: std::io::Error| StageError::Step(format!("the spec descriptor {fd}: {e}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(step)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(step)?;
    file.set_len(0).map_err(step)?;
    drop(file);
    nix::unistd::close(fd)
        .map_err(|e| StageError::Step(format!("the spec descriptor {fd}: {e}")))?;
    Ok(text)
}

/// Brings up loopback in a fresh network namespace (for the egress forwarder).
fn loopback_up() -> Result<(), StageError> {
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| StageError::Step(format!("cannot run `ip link set lo up`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(StageError::Step(format!(
            "`ip link set lo up` failed: {status}"
        )))
    }
}

/// System paths bound read-only into the view (and readable under Landlock).
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// The files of `/etc` a program may need; nothing else of `/etc` (no shadow, no keys).
const ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/resolv.conf",
    "/etc/ssl",
];

fn text(p: &Path) -> Result<String, StageError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| StageError::Step(format!("path {} is not UTF-8", p.display())))
}

/// bubblewrap's options (namespaces, the view) and the inner stage's spec.
fn bwrap_args(spec: &Spec) -> Result<(Vec<String>, String), StageError> {
    let mut a: Vec<String> = [
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "warden-sandbox",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if !nix::unistd::geteuid().is_root() {
        // Without root, bubblewrap needs a user namespace for the others.
        a.push("--unshare-user".into());
    }
    // `/etc` holds only the files listed; made searchable first (bubblewrap would make it
    // 0700 for the binds below, and the unprivileged uid could not read even those).
    a.extend([
        "--perms".into(),
        "0755".into(),
        "--dir".into(),
        "/etc".into(),
    ]);
    for p in SYSTEM.iter().chain(ETC) {
        let path = Path::new(p);
        match std::fs::read_link(path) {
            Ok(target) => {
                a.extend(["--symlink".into(), text(&target)?, (*p).to_owned()]);
            }
            Err(_) if path.exists() => {
                a.extend(["--ro-bind".into(), (*p).to_owned(), (*p).to_owned()]);
            }
            Err(_) => {}
        }
    }
    let workspace = text(&spec.workspace)?;
    a.extend(["--proc".into(), "/proc".into()]);
    a.extend(["--dev".into(), "/dev".into()]);
    // A private /tmp, writable by the unprivileged user the program runs as (sticky, like the
    // host's): a tmpfs is otherwise 0755 and root's.
    a.extend([
        "--perms".into(),
        "1777".into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ]);
    // The directories leading to each mount are made in the view, searchable by anyone
    // (bubblewrap would otherwise copy the host's modes, and a 0700 parent would lock the
    // unprivileged uid out of its own workspace). They hold nothing but the mount.
    let mut made = std::collections::BTreeSet::new();
    let mut ancestors = |p: &Path, a: &mut Vec<String>| -> Result<(), StageError> {
        let mut chain: Vec<&Path> = p.ancestors().skip(1).collect();
        chain.reverse();
        for d in chain {
            let under_system = SYSTEM.iter().chain(ETC).any(|s| d.starts_with(s));
            if d == Path::new("/") || d == Path::new("/tmp") || under_system {
                continue;
            }
            if made.insert(d.to_path_buf()) {
                a.extend(["--perms".into(), "0755".into(), "--dir".into(), text(d)?]);
            }
        }
        Ok(())
    };
    for p in &spec.read_only {
        ancestors(p, &mut a)?;
        let p = text(p)?;
        a.extend(["--ro-bind".into(), p.clone(), p]);
    }
    ancestors(&spec.workspace, &mut a)?;
    // INVARIANT (issue 18): the workspace is bounded as a whole: a tmpfs of its quota, in the
    // task's memory cgroup, so no task can fill the host's disk (and stop the ledger) or its
    // inodes. Writable by the unprivileged uid, and private to this sandbox.
    a.extend([
        "--size".into(),
        spec.limits.workspace_bytes.to_string(),
        "--perms".into(),
        "1777".into(),
        "--tmpfs".into(),
        workspace.clone(),
    ]);
    let helper = std::env::current_exe()
        .map_err(|e| StageError::Step(format!("cannot find the helper binary: {e}")))?;
    ancestors(Path::new(HELPER_IN_VIEW), &mut a)?;
    a.extend(["--ro-bind".into(), text(&helper)?, HELPER_IN_VIEW.into()]);
    let mut inner_spec = spec.clone();
    if let Some(bridge) = &mut inner_spec.egress {
        a.extend([
            "--bind".into(),
            text(&bridge.socket)?,
            EGRESS_SOCKET_IN_VIEW.into(),
        ]);
        bridge.socket = PathBuf::from(EGRESS_SOCKET_IN_VIEW);
    }
    a.extend(["--chdir".into(), workspace]);
    let json = serde_json::to_string(&inner_spec)
        .map_err(|e| StageError::Step(format!("cannot encode the spec: {e}")))?;
    Ok((a, json))
}

fn set_rlimits(spec: &Spec) -> Layer {
    use nix::sys::resource::{setrlimit, Resource};
    let l = &spec.limits;
    let cpu_hard = l.cpu_seconds.saturating_add(1);
    let steps = [
        (Resource::RLIMIT_CPU, l.cpu_seconds, cpu_hard, "RLIMIT_CPU"),
        (
            Resource::RLIMIT_NOFILE,
            l.open_files,
            l.open_files,
            "RLIMIT_NOFILE",
        ),
        (
            Resource::RLIMIT_FSIZE,
            l.file_size_bytes,
            l.file_size_bytes,
            "RLIMIT_FSIZE",
        ),
        (Resource::RLIMIT_CORE, 0, 0, "RLIMIT_CORE"),
        // Not RLIMIT_NPROC: it counts per uid, and every sandbox shares one, so one task's
        // processes would stop all the others from forking. The cgroup's pids.max counts
        // per task.
    ];
    let mut failed = Vec::new();
    for (r, soft, hard, name) in steps {
        if let Err(e) = setrlimit(r, soft, hard) {
            failed.push(format!("{name}: {e}"));
        }
    }
    if failed.is_empty() {
        Layer::new(
            Guarantee::Limits,
            "rlimits",
            Status::Enforced,
            format!(
                "cpu {}s, {} open files, files up to {} bytes, no core dumps",
                l.cpu_seconds, l.open_files, l.file_size_bytes
            ),
        )
    } else {
        Layer::new(
            Guarantee::Limits,
            "rlimits",
            Status::Degraded,
            failed.join("; "),
        )
    }
}

/// The inner stage (inside the namespaces, or on the host without them).
pub fn inner(mut spec: Spec) -> Outcome {
    if !matches!(spec.isolation, Isolation::Bwrap { .. }) {
        // Its own session, away from Warden's terminal (bubblewrap's --new-session otherwise).
        let _ = nix::unistd::setsid();
    }
    spec.layers.push(drop_uid(spec.drop_to));
    if spec.landlock {
        spec.layers.extend(landlock(&spec));
    } else {
        spec.layers.push(Layer::new(
            Guarantee::Filesystem,
            "landlock",
            Status::Absent,
            "turned off for this tool",
        ));
    }
    match nix::sys::prctl::set_no_new_privs() {
        Ok(()) => spec.layers.push(Layer::new(
            Guarantee::Privilege,
            "no_new_privs",
            Status::Enforced,
            "setuid and file capabilities grant nothing",
        )),
        Err(e) => spec.layers.push(Layer::new(
            Guarantee::Privilege,
            "no_new_privs",
            Status::Absent,
            format!("prctl failed: {e}"),
        )),
    }
    if spec.seccomp {
        spec.layers.push(crate::seccomp::apply());
    } else {
        spec.layers.push(Layer::new(
            Guarantee::Privilege,
            "seccomp",
            Status::Absent,
            "turned off for this tool",
        ));
    }
    check_required(&spec)?;
    if spec.report {
        return Ok(spec.layers);
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).current_dir(&spec.workspace);
    if let Some(bridge) = &spec.egress {
        start_forwarder(&bridge.socket, bridge.port)?;
        let proxy = format!("http://127.0.0.1:{}", bridge.port);
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            cmd.env(var, &proxy);
        }
        cmd.env("NO_PROXY", "").env("no_proxy", "");
    }
    let error = cmd.exec();
    Err(StageError::Exec {
        program: spec.program.display().to_string(),
        error,
    })
}

/// Fails the launch unless every required guarantee is enforced.
fn check_required(spec: &Spec) -> Result<(), StageError> {
    // INVARIANT (fail-closed): a tool whose required guarantee is not enforced does not run.
    for (g, status) in summarise(&spec.layers) {
        if spec.require.contains(&g) && status != Status::Enforced {
            let why = spec
                .layers
                .iter()
                .filter(|l| l.guarantee == g && l.status != Status::Enforced)
                .map(|l| format!("{} {}: {}", l.mechanism, l.status.name(), l.detail))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(StageError::Required {
                guarantee: g.name(),
                status: status.name(),
                why,
            });
        }
    }
    Ok(())
}

fn drop_uid(to: Option<u32>) -> Layer {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Layer::new(
            Guarantee::Privilege,
            "unprivileged uid",
            Status::Degraded,
            format!("Warden is not root: the sandbox keeps Warden's own uid {euid}"),
        );
    }
    let Some(id) = to else {
        return Layer::new(
            Guarantee::Privilege,
            "unprivileged uid",
            Status::Absent,
            "runs as root: no uid to drop to",
        );
    };
    let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
    let result = setgroups(&[gid])
        .and_then(|()| setresgid(gid, gid, gid))
        .and_then(|()| setresuid(uid, uid, uid));
    match result {
        Ok(()) if nix::unistd::geteuid() == uid => Layer::new(
            Guarantee::Privilege,
            "unprivileged uid",
            Status::Enforced,
            format!("Warden runs as root; the sandbox runs as uid {id}"),
        ),
        Ok(()) => Layer::new(
            Guarantee::Privilege,
            "unprivileged uid",
            Status::Absent,
            "setresuid returned but the uid did not change",
        ),
        Err(e) => Layer::new(
            Guarantee::Privilege,
            "unprivileged uid",
            Status::Absent,
            format!("cannot drop to uid {id}: {e}"),
        ),
    }
}

/// Landlock: read and execute the system view and the program's installation, read and write
/// the workspace and `/tmp` (a private one under bubblewrap), TCP only to the forwarder's port.
fn landlock(spec: &Spec) -> Vec<Layer> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, ABI,
    };
    // The newest ABI this code was tested against; the crate degrades it to the kernel's.
    let abi = ABI::V5;
    let bwrap = matches!(spec.isolation, Isolation::Bwrap { .. });
    let mut read: Vec<PathBuf> = SYSTEM.iter().chain(ETC).map(PathBuf::from).collect();
    read.extend(spec.read_only.iter().cloned());
    read.push(PathBuf::from("/proc"));
    read.push(if bwrap {
        PathBuf::from(HELPER_IN_VIEW)
    } else {
        std::env::current_exe().unwrap_or_default()
    });
    let mut write = vec![spec.workspace.clone(), PathBuf::from("/dev")];
    if bwrap {
        write.push(PathBuf::from("/tmp"));
    }
    let result = (|| -> Result<_, landlock::RulesetError> {
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::from_all(abi))?
            .create()?
            .add_rules(path_beneath_rules(
                read.iter().filter(|p| p.exists()),
                AccessFs::from_read(abi),
            ))?
            .add_rules(path_beneath_rules(
                write.iter().filter(|p| p.exists()),
                AccessFs::from_all(abi),
            ))?;
        if let Some(bridge) = &spec.egress {
            ruleset = ruleset.add_rule(NetPort::new(bridge.port, AccessNet::from_all(abi)))?;
        }
        ruleset.restrict_self()
    })();
    match result {
        Ok(status) => {
            // Every ABI from 1 rules the filesystem (later ones add rights such as truncate
            // and ioctl on devices: missing ones make the ruleset "partial"); TCP ports need
            // ABI 4, and without them the network namespace alone fences egress.
            let kernel = match status.landlock {
                landlock::LandlockStatus::Available {
                    effective_abi,
                    kernel_abi,
                } => kernel_abi.unwrap_or(effective_abi as i32),
                _ => 0,
            };
            let fs = match status.ruleset {
                RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Status::Enforced,
                RulesetStatus::NotEnforced => Status::Absent,
            };
            let mut layers = vec![Layer::new(
                Guarantee::Filesystem,
                "landlock filesystem",
                fs,
                format!("ABI {kernel}: read-only system, read-write workspace"),
            )];
            if kernel >= 4 && fs == Status::Enforced {
                layers.push(Layer::new(
                    Guarantee::Egress,
                    "landlock TCP ports",
                    Status::Enforced,
                    format!("ABI {kernel}: TCP bind/connect only to the forwarder's port"),
                ));
            }
            layers
        }
        Err(e) => vec![Layer::new(
            Guarantee::Filesystem,
            "landlock filesystem",
            Status::Absent,
            format!("cannot apply: {e}"),
        )],
    }
}

/// Starts the egress forwarder (this binary, `sandbox forward`) and waits until it listens.
fn start_forwarder(socket: &Path, port: u16) -> Result<(), StageError> {
    let exe = std::env::current_exe()
        .map_err(|e| StageError::Step(format!("cannot find the helper binary: {e}")))?;
    let mut child = Command::new(exe)
        .args([
            "sandbox",
            "forward",
            "--port",
            &port.to_string(),
            "--socket",
        ])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| StageError::Step(format!("cannot start the egress forwarder: {e}")))?;
    let mut ready = [0u8; 1];
    let got = child
        .stdout
        .take()
        .map(|mut out| out.read(&mut ready))
        .transpose()
        .map_err(|e| StageError::Step(format!("egress forwarder: {e}")))?;
    if got != Some(1) {
        return Err(StageError::Step(
            "the egress forwarder did not start".into(),
        ));
    }
    Ok(())
}
