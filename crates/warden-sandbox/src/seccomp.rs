//! The seccomp filter: system calls a tool never needs and an attacker would.
//!
//! Everything else is allowed (a deny list: tools are arbitrary programs, and an allow list
//! that broke Python or Node would be turned off). Refused calls fail with `EPERM`; `clone3`
//! fails with `ENOSYS` so that the C library falls back to `clone`, whose namespace flags the
//! filter can inspect.

use crate::spec::{Guarantee, Layer, Status};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Refused outright: tracing, mounting, namespaces, BPF, io_uring, kernel images and modules,
/// keyrings, perf, userfaultfd.
const REFUSED: &[(i64, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_acct, "acct"),
];

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conditions)
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for {}: {e}", std::env::consts::ARCH))
}

/// The main filter (matches fail with `EPERM`).
fn refusals() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED.iter().map(|(n, _)| (*n, Vec::new())).collect();
    let err = |e: seccompiler::BackendError| e.to_string();
    // clone with any namespace flag.
    let mut clone = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let bits = u64::from(flag.unsigned_abs());
        clone.push(
            rule(vec![
                cond(0, SeccompCmpOp::MaskedEq(bits), bits).map_err(err)?
            ])
            .map_err(err)?,
        );
    }
    rules.insert(libc::SYS_clone, clone);
    // Sockets: only the Unix, IP and netlink families (no packet sockets, no vsock or other
    // families that the network namespace does not fence), and no raw sockets.
    let mut other_family = Vec::new();
    for family in [
        libc::AF_UNIX,
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
    ] {
        let f = u64::from(family.unsigned_abs());
        other_family.push(cond(0, SeccompCmpOp::Ne, f).map_err(err)?);
    }
    let raw = u64::from(libc::SOCK_RAW.unsigned_abs());
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(other_family).map_err(err)?,
            rule(vec![cond(1, SeccompCmpOp::MaskedEq(0xf), raw).map_err(err)?]).map_err(err)?,
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch()?,
    )
    .map_err(err)?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// `clone3` fails with `ENOSYS` (its flags live in memory the filter cannot read).
fn clone3() -> Result<BpfProgram, String> {
    let err = |e: seccompiler::BackendError| e.to_string();
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        arch()?,
    )
    .map_err(err)?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// On x86_64, x32 system calls (numbers with bit 30 set) are refused outright: the main filter
/// matches x86_64 numbers, and the same call through the x32 table would slip past it.
#[cfg(target_arch = "x86_64")]
fn x32() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_BIT: u32 = 0x4000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let eperm = libc::EPERM.unsigned_abs();
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4),              // arch
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64), // other arch: allow (the main filter decides)
        op(LD_W_ABS, 0, 0, 0),              // nr
        op(JGE_K, 0, 1, X32_BIT),           // x32?
        op(RET_K, 0, 0, RET_ERRNO | eperm), // refuse
        op(RET_K, 0, 0, RET_ALLOW),
    ]
}

#[cfg(not(target_arch = "x86_64"))]
fn x32() -> BpfProgram {
    Vec::new()
}

/// Applies both filters to this thread (the helper is single-threaded) and everything it runs.
pub(crate) fn apply() -> Layer {
    let result = refusals().and_then(|main| {
        let c3 = clone3()?;
        let x32 = x32();
        if !x32.is_empty() {
            seccompiler::apply_filter(&x32).map_err(|e| e.to_string())?;
        }
        seccompiler::apply_filter(&main).map_err(|e| e.to_string())?;
        seccompiler::apply_filter(&c3).map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => Layer::new(
            Guarantee::Privilege,
            "seccomp",
            Status::Enforced,
            format!(
                "refused: {}, namespace clones, raw sockets, socket families other than unix, inet, inet6 and netlink, x32 calls",
                REFUSED
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => Layer::new(
            Guarantee::Privilege,
            "seccomp",
            Status::Absent,
            format!("cannot apply: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_filters_compile_for_this_architecture() {
        assert!(!super::refusals().unwrap().is_empty());
        assert!(!super::clone3().unwrap().is_empty());
    }
}
