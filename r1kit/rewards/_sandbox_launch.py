"""Launcher that puts one untrusted Python program in its cage, then execs it (run by r1kit.rewards.sandbox).

It is a standalone script (stdlib only, run with `python -I -S`) so that the parent never needs a preexec_fn,
which is unsafe in a threaded process. argv[1] is a JSON object: python, script, workdir, mode, cpu_s, mem_bytes,
fsize_bytes, nproc, wall_s.

Modes:
- "root" (we are root): new mount + network + PID namespaces, the program is PID 1 of its namespace (when it
  dies the kernel kills every process it left behind); tmpfs over /tmp, /var/tmp, /dev/shm (only its own
  workdir is bound back) and over the unreadable ancestor of the Python install (e.g. /root, only the install is
  bound back, read-only); then setuid to nobody, because RLIMIT_NPROC never applies to uid 0.
- "userns" (not root, unprivileged user namespaces work): `unshare -rn --pid --fork --kill-child`; the rlimits
  set here are counted inside the new user namespace, so RLIMIT_NPROC caps the program's own processes.
- "plain": rlimits and a process group only (no namespaces available).
"""
import ctypes
import json
import os
import resource
import signal
import sys

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


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


def _cage_filesystem(cfg) -> None:
    workdir, prefix = cfg["workdir"], sys.base_prefix
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    fd_work = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    fd_prefix = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
    hidden = _unreadable_ancestor(prefix)
    if hidden is not None:
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
        os.makedirs(prefix, exist_ok=True)
        _mount(f"/proc/self/fd/{fd_prefix}", prefix, None, MS_BIND | MS_REC)
        _mount(None, prefix, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(tmp) and not prefix.startswith(tmp + "/"):
            _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
            if workdir.startswith(tmp + "/"):
                os.makedirs(workdir, exist_ok=True)
                _mount(f"/proc/self/fd/{fd_work}", workdir, None, MS_BIND | MS_REC)
    os.close(fd_work)
    os.close(fd_prefix)


def _exec_program(cfg, argv_prefix=()) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cfg["workdir"]}
    argv = [*argv_prefix, cfg["python"], "-I", cfg["script"]]
    os.execvpe(argv[0], argv, env)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mode = cfg["mode"]
    if mode == "userns":
        _set_rlimits(cfg)
        _exec_program(cfg, ("unshare", "-rn", "--pid", "--fork", "--kill-child"))
    if mode == "plain":
        _set_rlimits(cfg)
        _exec_program(cfg)
    # root mode
    for root, dirs, files in os.walk(cfg["workdir"]):
        for name in [root, *(os.path.join(root, f) for f in dirs + files)]:
            os.chown(name, NOBODY, NOBODY)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    pid = os.fork()
    if pid == 0:
        try:
            _cage_filesystem(cfg)
            os.chdir(cfg["workdir"])
            _set_rlimits(cfg)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
            _exec_program(cfg)
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
