//! Why io_uring cannot be used on this host, in words an operator can act on.
//!
//! `io_uring_setup` fails with the same `EPERM` under a seccomp filter (Docker's default profile
//! since moby 25), under `kernel.io_uring_disabled=2`, and under `kernel.io_uring_disabled=1` for a
//! process outside `kernel.io_uring_group`; with `ENOSYS` on a kernel built without io_uring or
//! under a filter that answers `ENOSYS`; and with `ENOMEM` when a kernel older than 5.12 charges
//! the ring to a too small `RLIMIT_MEMLOCK`. The errno alone does not say which, so
//! [`Cause::of`] reads what the host shows: the sysctl, and the `Seccomp:` line of
//! `/proc/self/status`. The reading is here; the decision is a pure function of it.
//!
//! A ring that sets up and lists the opcodes may still refuse the multishot forms the driver
//! uses: `ACCEPT` exists since 5.5 but takes `IORING_ACCEPT_MULTISHOT` only since 5.19, and
//! `POLL_ADD` takes `IORING_POLL_ADD_MULTI` since 5.13; older kernels answer `EINVAL`. The
//! driver's probe submits both for real and [`Multishot::of`] reads their completions.

use std::fmt;
use std::io;

/// Why io_uring cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum UringUnavailable {
    /// `io_uring_setup` failed.
    #[error("io_uring_setup failed: {source}: {cause}")]
    Setup {
        #[source]
        source: io::Error,
        cause: Cause,
    },
    /// The ring was set up but `io_uring_register(IORING_REGISTER_PROBE)` failed.
    #[error("io_uring_register(IORING_REGISTER_PROBE) failed: {source}: {cause}")]
    Probe {
        #[source]
        source: io::Error,
        cause: Cause,
    },
    #[error("io_uring opcode {0} not supported")]
    Opcode(&'static str),
    #[error("io_uring lacks IORING_FEAT_EXT_ARG (kernel older than 5.11)")]
    NoExtArg,
    /// A multishot request the driver depends on did not stay armed when tried at start.
    #[error("io_uring multishot {op} {outcome}: multishot {} needs Linux {}", op.word(), op.since())]
    Multishot { op: MultishotOp, outcome: Multishot },
    /// The sockets that the multishot test runs on could not be made.
    #[error("cannot test io_uring multishot requests: {0}")]
    MultishotTest(#[source] io::Error),
}

impl UringUnavailable {
    /// `io_uring_setup` failed with `source`: say why, from what this host shows.
    pub fn setup(source: io::Error) -> UringUnavailable {
        let cause = Cause::of(source.raw_os_error(), &Host::read(), Call::Setup);
        UringUnavailable::Setup { source, cause }
    }

    /// `IORING_REGISTER_PROBE` failed with `source`: say why, from what this host shows.
    pub fn probe(source: io::Error) -> UringUnavailable {
        let cause = Cause::of(source.raw_os_error(), &Host::read(), Call::Register);
        UringUnavailable::Probe { source, cause }
    }
}

/// The multishot requests the driver submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultishotOp {
    /// `IORING_OP_ACCEPT` with `IORING_ACCEPT_MULTISHOT`, one per listener.
    Accept,
    /// `IORING_OP_POLL_ADD` with `IORING_POLL_ADD_MULTI`, one per socket and on the wake fd.
    PollAdd,
}

impl MultishotOp {
    fn word(self) -> &'static str {
        match self {
            MultishotOp::Accept => "accept",
            MultishotOp::PollAdd => "poll",
        }
    }

    /// The first Linux release that takes the multishot flag.
    pub fn since(self) -> &'static str {
        match self {
            MultishotOp::Accept => "5.19",
            MultishotOp::PollAdd => "5.13",
        }
    }
}

/// What a multishot request's completions say about the kernel's support for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multishot {
    /// Its first completion carried `IORING_CQE_F_MORE`, or it stayed pending until its
    /// cancellation ended it with `ECANCELED`: the kernel keeps it armed.
    Armed,
    /// It ended at once with this errno (`EINVAL` from a kernel that does not know the flag).
    Refused(i32),
    /// It completed once, without `IORING_CQE_F_MORE`: the flag was ignored.
    OneShot,
    /// No completion came within the probe's wait, not even for the cancellation.
    Silent,
}

impl Multishot {
    /// Decide from a request's completions, in order, as `(result, flags)`.
    pub fn of(cqes: &[(i32, u32)]) -> Multishot {
        match cqes.first() {
            None => Multishot::Silent,
            Some(&(_, flags)) if io_uring::cqueue::more(flags) => Multishot::Armed,
            Some(&(res, _)) if res == -libc::ECANCELED => Multishot::Armed,
            Some(&(res, _)) if res < 0 => Multishot::Refused(-res),
            Some(_) => Multishot::OneShot,
        }
    }
}

/// Which io_uring syscall failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Setup,
    Register,
}

/// What the host shows about io_uring and this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host {
    /// `kernel.io_uring_disabled` (Linux 6.6+; `None` when the file does not exist).
    pub io_uring_disabled: Option<u8>,
    /// This process runs under a seccomp filter (`Seccomp: 2` in `/proc/self/status`).
    pub seccomp_filter: bool,
    /// The soft `RLIMIT_MEMLOCK`, in bytes (`None` for unlimited).
    pub memlock: Option<u64>,
}

impl Host {
    fn read() -> Host {
        let io_uring_disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let seccomp_filter = std::fs::read_to_string("/proc/self/status")
            .map(|s| seccomp_mode(&s) == Some(2))
            .unwrap_or(false);
        let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
        Host {
            io_uring_disabled,
            seccomp_filter,
            memlock,
        }
    }
}

/// The `Seccomp:` mode in a `/proc/PID/status` text (0 off, 1 strict, 2 filter).
fn seccomp_mode(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The most likely reason for an io_uring syscall's failure on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `EPERM` with `kernel.io_uring_disabled=2`: io_uring is off for every process.
    DisabledBySysctl,
    /// `EPERM` with `kernel.io_uring_disabled=1`: only `kernel.io_uring_group` may use it.
    NotInGroup,
    /// `EPERM` (or `EACCES`) under a seccomp filter.
    Seccomp { call: Call },
    /// `ENOSYS` with no seccomp filter: the kernel was built without io_uring.
    NoKernelSupport,
    /// `ENOSYS` under a seccomp filter: either the filter or the kernel.
    SeccompOrNoKernel { call: Call },
    /// `ENOMEM` on `io_uring_setup`: a kernel older than 5.12 charges the ring to
    /// `RLIMIT_MEMLOCK` (soft limit in bytes, `None` for unlimited).
    Memlock { limit: Option<u64> },
    /// Nothing the host shows explains it.
    Unexplained,
}

impl Cause {
    /// Decide from the errno of the failed `call` and what the host shows.
    pub fn of(errno: Option<i32>, host: &Host, call: Call) -> Cause {
        match errno {
            Some(libc::EPERM) if call == Call::Setup && host.io_uring_disabled == Some(2) => {
                Cause::DisabledBySysctl
            }
            Some(libc::EPERM | libc::EACCES) if host.seccomp_filter => Cause::Seccomp { call },
            Some(libc::EPERM) if call == Call::Setup && host.io_uring_disabled == Some(1) => {
                Cause::NotInGroup
            }
            Some(libc::ENOSYS) if host.seccomp_filter => Cause::SeccompOrNoKernel { call },
            Some(libc::ENOSYS) => Cause::NoKernelSupport,
            Some(libc::ENOMEM) if call == Call::Setup => Cause::Memlock {
                limit: host.memlock,
            },
            _ => Cause::Unexplained,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Setup => "io_uring_setup",
            Call::Register => "io_uring_register",
        })
    }
}

impl fmt::Display for MultishotOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MultishotOp::Accept => "ACCEPT",
            MultishotOp::PollAdd => "POLL_ADD",
        })
    }
}

impl fmt::Display for Multishot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Multishot::Armed => f.write_str("stayed armed"),
            Multishot::Refused(libc::EINVAL) => {
                f.write_str("refused with EINVAL (the kernel does not know the flag)")
            }
            Multishot::Refused(errno) => {
                write!(f, "failed: {}", io::Error::from_raw_os_error(*errno))
            }
            Multishot::OneShot => f.write_str("completed once, without IORING_CQE_F_MORE"),
            Multishot::Silent => f.write_str("gave no completion within the probe's wait"),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::DisabledBySysctl => {
                f.write_str("kernel.io_uring_disabled=2 turns io_uring off on this host")
            }
            Cause::NotInGroup => f.write_str(
                "kernel.io_uring_disabled=1 and this process is not in kernel.io_uring_group",
            ),
            Cause::Seccomp { call } => write!(
                f,
                "a seccomp filter denies {call} (a container's default profile blocks io_uring)"
            ),
            Cause::NoKernelSupport => f.write_str("this kernel has no io_uring"),
            Cause::SeccompOrNoKernel { call } => write!(
                f,
                "a seccomp filter answers {call} with ENOSYS, or this kernel has no io_uring"
            ),
            Cause::Memlock { limit: Some(n) } => write!(
                f,
                "RLIMIT_MEMLOCK ({n} bytes) is too small for the ring (kernels before 5.12 \
                 charge io_uring to it)"
            ),
            Cause::Memlock { limit: None } => {
                f.write_str("the kernel is out of memory for the ring")
            }
            Cause::Unexplained => f.write_str("no seccomp filter or sysctl explains it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(disabled: Option<u8>, seccomp: bool) -> Host {
        Host {
            io_uring_disabled: disabled,
            seccomp_filter: seccomp,
            memlock: Some(65536),
        }
    }

    #[test]
    fn eperm_is_told_apart_by_the_sysctl_and_the_filter() {
        let s = Call::Setup;
        let eperm = Some(libc::EPERM);
        assert_eq!(
            Cause::of(eperm, &host(Some(2), false), s),
            Cause::DisabledBySysctl
        );
        // The machine-wide switch wins: it refuses whatever the filter says.
        assert_eq!(
            Cause::of(eperm, &host(Some(2), true), s),
            Cause::DisabledBySysctl
        );
        assert_eq!(
            Cause::of(eperm, &host(Some(0), true), s),
            Cause::Seccomp { call: s }
        );
        assert_eq!(
            Cause::of(eperm, &host(None, true), s),
            Cause::Seccomp { call: s }
        );
        assert_eq!(
            Cause::of(eperm, &host(Some(1), false), s),
            Cause::NotInGroup
        );
        assert_eq!(
            Cause::of(eperm, &host(Some(0), false), s),
            Cause::Unexplained
        );
        assert_eq!(Cause::of(eperm, &host(None, false), s), Cause::Unexplained);
    }

    #[test]
    fn enosys_names_the_filter_only_when_there_is_one() {
        let s = Call::Setup;
        assert_eq!(
            Cause::of(Some(libc::ENOSYS), &host(None, false), s),
            Cause::NoKernelSupport
        );
        assert_eq!(
            Cause::of(Some(libc::ENOSYS), &host(None, true), s),
            Cause::SeccompOrNoKernel { call: s }
        );
    }

    #[test]
    fn the_sysctl_does_not_explain_a_failed_register() {
        let r = Call::Register;
        // io_uring_disabled is checked by io_uring_setup only: a ring that exists was allowed.
        assert_eq!(
            Cause::of(Some(libc::EPERM), &host(Some(2), false), r),
            Cause::Unexplained
        );
        assert_eq!(
            Cause::of(Some(libc::EPERM), &host(Some(2), true), r),
            Cause::Seccomp { call: r }
        );
        assert_eq!(
            Cause::of(Some(libc::ENOMEM), &host(None, false), r),
            Cause::Unexplained
        );
    }

    #[test]
    fn enomem_on_setup_names_the_memlock_limit() {
        let c = Cause::of(Some(libc::ENOMEM), &host(None, false), Call::Setup);
        assert_eq!(c, Cause::Memlock { limit: Some(65536) });
        assert!(
            c.to_string().contains("RLIMIT_MEMLOCK (65536 bytes)"),
            "{c}"
        );
    }

    #[test]
    fn every_cause_names_its_mechanism() {
        let s = Call::Setup;
        for (c, words) in [
            (Cause::DisabledBySysctl, "kernel.io_uring_disabled=2"),
            (Cause::NotInGroup, "kernel.io_uring_group"),
            (
                Cause::Seccomp { call: s },
                "seccomp filter denies io_uring_setup",
            ),
            (
                Cause::Seccomp {
                    call: Call::Register,
                },
                "seccomp filter denies io_uring_register",
            ),
            (Cause::NoKernelSupport, "no io_uring"),
            (Cause::SeccompOrNoKernel { call: s }, "ENOSYS"),
        ] {
            assert!(c.to_string().contains(words), "{c:?}: {c}");
        }
    }

    const MORE: u32 = 2; // IORING_CQE_F_MORE

    #[test]
    fn a_multishot_request_is_armed_only_if_it_stayed_armed() {
        // 5.19+: the accept returns a connection (fd 7) and stays armed; cancelled at the end.
        assert_eq!(
            Multishot::of(&[(7, MORE), (-libc::ECANCELED, 0)]),
            Multishot::Armed
        );
        // A poll's mask with MORE.
        assert_eq!(Multishot::of(&[(4, MORE)]), Multishot::Armed);
        // Pending until its cancellation ended it.
        assert_eq!(Multishot::of(&[(-libc::ECANCELED, 0)]), Multishot::Armed);
        // 5.11-5.18 (accept), 5.11-5.12 (poll): the flag is refused at submission.
        assert_eq!(
            Multishot::of(&[(-libc::EINVAL, 0)]),
            Multishot::Refused(libc::EINVAL)
        );
        assert_eq!(
            Multishot::of(&[(-libc::EACCES, 0)]),
            Multishot::Refused(libc::EACCES)
        );
        // A success without MORE: the flag was ignored, the request was one-shot.
        assert_eq!(Multishot::of(&[(7, 0)]), Multishot::OneShot);
        assert_eq!(Multishot::of(&[(0, 0)]), Multishot::OneShot);
        // Only the first completion decides: a later end (CQ overflow, cancel) changes nothing.
        assert_eq!(
            Multishot::of(&[(-libc::EINVAL, 0), (-libc::ECANCELED, 0)]),
            Multishot::Refused(libc::EINVAL)
        );
        assert_eq!(Multishot::of(&[]), Multishot::Silent);
    }

    #[test]
    fn a_refused_multishot_request_names_the_kernel_it_needs() {
        let e = UringUnavailable::Multishot {
            op: MultishotOp::Accept,
            outcome: Multishot::Refused(libc::EINVAL),
        };
        assert_eq!(
            e.to_string(),
            "io_uring multishot ACCEPT refused with EINVAL (the kernel does not know the flag): \
             multishot accept needs Linux 5.19"
        );
        let e = UringUnavailable::Multishot {
            op: MultishotOp::PollAdd,
            outcome: Multishot::OneShot,
        };
        assert_eq!(
            e.to_string(),
            "io_uring multishot POLL_ADD completed once, without IORING_CQE_F_MORE: \
             multishot poll needs Linux 5.13"
        );
        let e = UringUnavailable::Multishot {
            op: MultishotOp::Accept,
            outcome: Multishot::Refused(libc::EACCES),
        };
        assert!(e.to_string().contains("failed: Permission denied"), "{e}");
    }

    #[test]
    fn the_seccomp_mode_is_read_from_proc_status() {
        let status = "Name:\tsplicegate\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(seccomp_mode(status), Some(2));
        assert_eq!(seccomp_mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(seccomp_mode("Name:\tx\n"), None);
        // This test process: the real file parses.
        let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        assert!(seccomp_mode(&own).is_some(), "{own}");
    }
}
