"""Launcher that puts one untrusted Python program in its cage, then execs it (run by r1kit.rewards.sandbox).

It is a standalone script (stdlib only, run with `python -I -S`) so that the parent never needs a preexec_fn,
which is unsafe in a threaded process. argv[1] is a JSON object: python, script, workdir, mode, cpu_s, mem_bytes,
fsize_bytes, nproc, wall_s.

Mode "ns": when started as root, first become uid/gid nobody (RLIMIT_NPROC is never enforced for uid 0). Then new
user, mount, network and PID namespaces (the user namespace maps only our own uid, so the program has no
capabilities once it execs). RLIMIT_NPROC is set after the user namespace exists, so it counts this sandbox's
processes only, not every process of the same uid on the machine. Private tmpfs over /tmp, /var/tmp and /dev/shm
with only the sandbox's own directory bound back, and tmpfs over an unreadable ancestor of the Python install
(e.g. /root, mode 700) with only the install bound back. The program runs as PID 1 of its namespace: when it dies,
the kernel kills every process it left behind, even ones that left the process group.
Mode "plain": rlimits only (no namespaces available); the caller still kills the process group on timeout.
"""
import ctypes
import json
import os
import resource
import signal
import sys

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _set_rlimits(cfg) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["mem_bytes"], cfg["mem_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_bytes"], cfg["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _unreadable_ancestor(path: str):
    """Highest ancestor of `path` that 'others' cannot traverse (e.g. /root, mode 700), or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        d = os.sep + os.sep.join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _cage_filesystem(workdir: str, fd_work: int, prefix: str, fd_prefix: int) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hidden = _unreadable_ancestor(prefix)
    if hidden is not None:
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
        os.makedirs(prefix, exist_ok=True)
        _mount(f"/proc/self/fd/{fd_prefix}", prefix, None, MS_BIND | MS_REC)
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(tmp) and not prefix.startswith(tmp + "/"):
            _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
            if workdir.startswith(tmp + "/"):
                os.makedirs(workdir, exist_ok=True)
                _mount(f"/proc/self/fd/{fd_work}", workdir, None, MS_BIND | MS_REC)


def _exec_program(cfg) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cfg["workdir"]}
    os.execve(cfg["python"], [cfg["python"], "-I", cfg["script"]], env)


def _map_own_ids(uid: int, gid: int) -> None:
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _enter_namespaces(cfg) -> None:
    workdir, prefix = cfg["workdir"], sys.base_prefix
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
        _map_own_ids(uid, gid)
    else:  # mounts as root first (a bind source must be in our own mount namespace), then drop to nobody
        _check(libc.unshare(CLONE_NEWNS), "unshare")
    fd_work = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    fd_prefix = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
    _cage_filesystem(workdir, fd_work, prefix, fd_prefix)
    os.close(fd_work)
    os.close(fd_prefix)
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(workdir):
            for name in [root, *(os.path.join(root, f) for f in dirs + files)]:
                os.chown(name, NOBODY, NOBODY)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl")  # so we may write our own /proc/self/uid_map
        # the mount namespace stays owned by the initial user namespace: the program cannot undo the mounts
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID), "unshare")
        _map_own_ids(NOBODY, NOBODY)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg["mode"] == "plain":
        _set_rlimits(cfg)
        _exec_program(cfg)
    try:
        _enter_namespaces(cfg)
    except OSError as e:
        sys.stderr.write(f"r1kit sandbox setup failed: {e}\n")
        sys.exit(125)
    pid = os.fork()  # the child is PID 1 of the new PID namespace
    if pid == 0:
        try:
            _set_rlimits(cfg)  # after the user namespace exists: RLIMIT_NPROC counts only this sandbox
            _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
            os.chdir(cfg["workdir"])
            _exec_program(cfg)  # exec as a non-root uid drops the namespace capabilities
        except BaseException as e:  # report and die; never fall through into the launcher's code
            os.write(2, f"r1kit sandbox setup failed: {e!r}\n".encode())
            os._exit(125)
    signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
    signal.alarm(max(1, int(cfg["wall_s"] + 1)))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
