"""Per-run cgroups for the code sandbox: a memory limit that counts everything, a process limit, and a kill-all.

Why: RLIMIT_AS limits one process's address space, so memory a program holds in memfds, tmpfs files or System V
segments, or spreads over many processes, escapes it. A memory cgroup charges all of that to the sandbox; a pids
cgroup caps its processes whatever their uid; and listing the cgroup's processes finds every one of them, so
nothing the program started outlives the run, with or without a PID namespace.

Works with cgroup v1 (a `memory` and a `pids` hierarchy where this process may create children: as root on this
kind of VM) and with a delegated cgroup v2 subtree (a child of our own cgroup that gets `memory.max`). Where
neither works (not root, read-only cgroupfs), `cgroup_support()` is empty and the sandbox relies on rlimits, tmpfs
sizes, an open-file limit and a seccomp filter (see docs/rewards_and_tasks.md).
"""
from __future__ import annotations

import functools
import os
import secrets
import signal
import time


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, options) of the cgroup mounts of this process."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if rfields and rfields[0] in ("cgroup", "cgroup2"):
                    out.append((rfields[0], fields[3], fields[4], set(rfields[2].split(","))))
    except OSError:
        pass
    return out


def _own_dirs() -> dict[str, str]:
    """Controller ("memory", "pids", or "v2") -> the directory of this process's own cgroup for it."""
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return {}
    mounts = _mounts()
    dirs = {}
    for hier, controllers, path in entries:
        wanted = ["v2"] if hier == "0" and controllers == "" else \
            [c for c in controllers.split(",") if c in ("memory", "pids")]
        for c in wanted:
            for fstype, root, point, opts in mounts:
                if (fstype == "cgroup2") == (c == "v2") and (c == "v2" or c in opts) and path.startswith(root):
                    dirs.setdefault(c, os.path.normpath(os.path.join(point, os.path.relpath(path, root))))
    return dirs


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


class SandboxCgroup:
    """The cgroups of one sandbox run; `procs_files` are what the launcher writes its pid into."""

    def __init__(self, memory_bytes: int, max_procs: int):
        self.dirs: list[str] = []
        name = f"r1kit-sbx-{secrets.token_hex(6)}"
        try:
            for controller, parent in _own_dirs().items():
                if controller == "v2":
                    self._make_v2(parent, name, memory_bytes, max_procs)
                elif controller == "memory":
                    d = self._mkdir(parent, name)
                    _write(f"{d}/memory.limit_in_bytes", memory_bytes)
                    if os.path.exists(f"{d}/memory.memsw.limit_in_bytes"):  # no escape into swap
                        _write(f"{d}/memory.memsw.limit_in_bytes", memory_bytes)
                elif controller == "pids":
                    _write(f"{self._mkdir(parent, name)}/pids.max", max_procs)
        except OSError:
            self.remove()
            raise

    def _mkdir(self, parent: str, name: str) -> str:
        d = os.path.join(parent, name)
        os.mkdir(d)
        self.dirs.append(d)
        return d

    def _make_v2(self, parent: str, name: str, memory_bytes: int, max_procs: int) -> None:
        try:
            with open(f"{parent}/cgroup.subtree_control") as f:
                if "memory" not in f.read().split():  # the memory controller is not delegated to us
                    return
        except OSError:
            return
        d = self._mkdir(parent, name)
        if not os.path.exists(f"{d}/memory.max"):  # the memory controller is not delegated to us
            os.rmdir(d)
            self.dirs.remove(d)
            return
        _write(f"{d}/memory.max", memory_bytes)
        if os.path.exists(f"{d}/memory.swap.max"):
            _write(f"{d}/memory.swap.max", 0)
        if os.path.exists(f"{d}/pids.max"):
            _write(f"{d}/pids.max", max_procs)

    @property
    def procs_files(self) -> list[str]:
        return [f"{d}/cgroup.procs" for d in self.dirs]

    def controllers(self) -> set[str]:
        found = set()
        for d in self.dirs:
            if os.path.exists(f"{d}/memory.limit_in_bytes") or os.path.exists(f"{d}/memory.max"):
                found.add("memory")
            if os.path.exists(f"{d}/pids.max"):
                found.add("pids")
        return found

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            try:
                with open(procs) as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                pass
        return found

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the cgroups until none is left; False if some outlived `timeout_s`."""
        end = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids:
                return True
            for d in self.dirs:
                if os.path.exists(f"{d}/cgroup.kill"):
                    try:
                        _write(f"{d}/cgroup.kill", 1)
                    except OSError:
                        pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > end:
                return False
            time.sleep(0.005)

    def remove(self) -> None:
        self.kill_all()
        for d in reversed(self.dirs):
            for _ in range(200):  # rmdir fails while the kernel is still tearing the last process down
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
        self.dirs = []


@functools.lru_cache(maxsize=1)
def cgroup_support() -> frozenset[str]:
    """The controllers ("memory", "pids") a sandbox run gets on this machine; empty where none can be made."""
    try:
        cg = SandboxCgroup(64 << 20, 16)
    except OSError:
        return frozenset()
    try:
        return frozenset(cg.controllers())
    finally:
        cg.remove()
