#!/usr/bin/python3
"""Run a program under a seccomp filter that makes the named syscalls fail with an errno.

Usage: seccomp_exec.py SYSCALL:ERRNO [SYSCALL:ERRNO ...] -- PROGRAM [ARGS ...]

    seccomp_exec.py io_uring_setup:EPERM -- splicegate run --config gw.yaml

Every other syscall is allowed. The filter is loaded (with no_new_privs) before execve and
survives it, so PROGRAM and every thread it starts run under it, as a process in a container
does under Docker's default profile (which answers io_uring_setup with EPERM). PROGRAM keeps
this process's pid.

Needs libseccomp's Python bindings: Debian's python3-seccomp, for /usr/bin/python3
(scripts/install-test-deps.sh installs it). Exits 3 when they are missing, 2 on bad usage.
"""
import errno
import os
import sys


def main(argv):
    if "--" not in argv:
        sys.stderr.write(__doc__)
        return 2
    sep = argv.index("--")
    rules, program = argv[:sep], argv[sep + 1:]
    if not rules or not program:
        sys.stderr.write(__doc__)
        return 2
    try:
        import seccomp
    except ImportError:
        sys.stderr.write(
            "seccomp_exec: libseccomp's Python bindings are missing "
            "(apt-get install python3-seccomp; scripts/install-test-deps.sh does)\n"
        )
        return 3
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for rule in rules:
        name, _, err = rule.partition(":")
        code = getattr(errno, err, None)
        if not name or not isinstance(code, int):
            sys.stderr.write(f"seccomp_exec: bad rule {rule!r} (want SYSCALL:ERRNO)\n")
            return 2
        f.add_rule(seccomp.ERRNO(code), name)
    f.load()
    os.execvp(program[0], program)
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
