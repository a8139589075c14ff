"""Run untrusted Python (model completions) contained, and test it with a verdict the program cannot forge.

`run_tests(program, tests)` is what the code reward and HumanEval use. The program and the tests never share a
process: the program runs in its sandbox and exports its names; the tests run in the launcher process (outside the
program's PID namespace, see `_code_runner.py`), call the program's functions through a pipe, get plain data back
(so a returned object cannot forge an equality) and count the passes themselves. Nothing the program prints, exits
with, or does to its own interpreter can count as a pass.

The cage (`_sandbox_launch.py`), mode "ns" where the kernel allows namespaces: a private root filesystem (a
size-limited tmpfs with read-only binds of the Python install, without its site-packages, and the system libraries;
no host /tmp, /run, /var, /home or /proc), its own /proc and PID namespace (nothing it starts outlives it), no
network, its own IPC namespace, uid nobody when started as root, rlimits (CPU, address space, file size, processes,
open files), a seccomp filter (no memfd, no System V shared memory), and per-run cgroups where they can be made
(`sandbox_cgroup.py`: memory counting tmpfs and memfd, process count, kill-all). Mode "plain" (no namespaces): the
same minus the private filesystem, network and PID namespaces. `sandbox_mode()` says which is in use.

The parent never uses preexec_fn (unsafe with threads), so everything here may be called from any thread; the code
reward scores batches with a thread pool.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

from r1kit.rewards.sandbox_cgroup import SandboxCgroup, cgroup_support

_DIR = os.path.dirname(os.path.abspath(__file__))
_LAUNCHER = os.path.join(_DIR, "_sandbox_launch.py")
_OUTPUT_CAP = 1 << 20  # bytes of stdout/stderr kept
_GRACE_S = 1.0  # the launcher enforces wall_s itself; the parent kills everything this much later
_SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc/ld.so.cache",
                 "/etc/localtime")


@dataclass
class SandboxLimits:
    wall_s: float = 10.0  # wall-clock limit of the whole run (start-up included); everything is killed after it
    cpu_s: int = 10  # RLIMIT_CPU per process
    memory_mb: int = 1024  # memory cgroup of the run (all processes, tmpfs, memfd) where available; RLIMIT_AS too
    file_mb: int = 16  # RLIMIT_FSIZE (also caps stdout/stderr, which go to files)
    disk_mb: int = 64  # mode ns: the tmpfs holding /tmp, /dev/shm and the working directory
    max_procs: int = 32  # RLIMIT_NPROC (per sandbox in mode ns) and the pids cgroup
    max_open_files: int = 64  # RLIMIT_NOFILE
    site_packages: bool = False  # mode ns: show the interpreter's site-packages (read-only); hidden by default


@dataclass
class RunResult:
    returncode: int | None  # None when killed by the wall-clock timeout
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float


@dataclass
class TestReport:
    """What `run_tests` measured: one verdict per test, from the runner's side of the boundary."""
    passed: list[bool]
    reasons: list[str] = field(default_factory=list)  # per test: "" when it passed, else why it failed
    error: str | None = None  # the program did not load, or the sandbox failed
    timed_out: bool = False
    stdout: str = ""  # the program's own output (never read for the verdict)
    stderr: str = ""
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


@functools.lru_cache(maxsize=4)
def _visible_paths(site_packages: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(paths bound read-only into the cage, site-packages directories hidden inside them)."""
    real = os.path.realpath
    python_home = os.path.dirname(os.path.dirname(real(sys.executable)))
    expose = [p for p in _SYSTEM_PATHS] + sorted({real(sys.base_prefix), python_home})
    hide: set[str] = set()
    if not site_packages:
        candidates = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
        hide = {real(p) for p in candidates if p and ("site-packages" in p or "dist-packages" in p)}
    return tuple(expose), tuple(sorted(hide))


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(_OUTPUT_CAP).decode("utf-8", "replace")


def _launch(mode: str, kind: str, program: str, limits: SandboxLimits, tests: list[str] | None = None,
            prefix: str = "") -> dict:
    """Run the launcher once; returns its report lines, the candidate's output and how it ended."""
    token = secrets.token_hex(8)
    io_dir = tempfile.mkdtemp(prefix="r1kit-sbx-io-")
    root = tempfile.mkdtemp(prefix="r1kit-root-") if mode == "ns" else None
    workdir = f"/tmp/r1kit-sbx-{token}" if mode == "ns" else tempfile.mkdtemp(prefix="r1kit-sbx-")
    cgroup = None
    try:
        if cgroup_support():
            cgroup = SandboxCgroup(int(limits.memory_mb) << 20, int(limits.max_procs) + 2)
        expose, hide = _visible_paths(bool(limits.site_packages))
        paths = {name: os.path.join(io_dir, name) for name in ("report", "launcher_err", "out", "err")}
        files = {name: open(path, "wb") for name, path in paths.items()}
        cfg = {
            # the real interpreter: a venv's bin/python is a symlink into the base install, which the cage exposes
            "python": os.path.realpath(sys.executable), "mode": mode, "kind": kind, "program": program,
            "root": root, "workdir": workdir, "expose": list(expose), "hide": list(hide),
            "cgroup_procs": cgroup.procs_files if cgroup else [],
            "cpu_s": int(limits.cpu_s), "mem_bytes": int(limits.memory_mb) << 20,
            "fsize_bytes": int(limits.file_mb) << 20, "disk_bytes": int(limits.disk_mb) << 20,
            "nproc": int(limits.max_procs), "nofile": int(limits.max_open_files), "wall_s": float(limits.wall_s),
            "candidate_out_fd": files["out"].fileno(), "candidate_err_fd": files["err"].fileno(),
            "tests": list(tests or []), "prefix": prefix,
        }
        if kind == "test":
            with open(os.path.join(_DIR, "_code_candidate.py"), encoding="utf-8") as f:
                cfg["candidate_source"] = f.read()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _LAUNCHER], stdin=subprocess.PIPE, stdout=files["report"],
                stderr=files["launcher_err"], cwd="/", env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                start_new_session=True, close_fds=True, pass_fds=(files["out"].fileno(), files["err"].fileno()),
            )
        finally:
            for f in files.values():
                f.close()
        timed_out = False
        try:
            try:
                proc.stdin.write(json.dumps(cfg).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.wait(timeout=limits.wall_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:  # the group outlives its leader when children are left behind: always kill it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if cgroup is not None:
                cgroup.kill_all()
            proc.wait()
        elapsed = time.monotonic() - start
        report = _read(paths["report"]).split("\n")  # lines as the runner ended them, nothing else
        return {"returncode": None if timed_out else proc.returncode, "report": report,
                "timed_out": timed_out or "timeout" in report, "elapsed_s": elapsed,
                "stdout": _read(paths["out"]), "stderr": _read(paths["err"]) + _read(paths["launcher_err"])}
    finally:
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(io_dir, ignore_errors=True)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """The strongest containment that works on this machine: "ns" (namespaces) or "plain" (rlimits only)."""
    probe = "import os\nprint('ok', os.getpid())\n"
    res = _launch("ns", "run", probe, SandboxLimits(wall_s=30))
    if res["returncode"] == 0 and res["stdout"].split() == ["ok", "1"]:
        return "ns"
    warnings.warn(f"r1kit code sandbox: namespaces unavailable ({res['stderr'].strip()[-200:] or res['returncode']});"
                  " running without a private filesystem, network or PID namespace (see docs/rewards_and_tasks.md)")
    return "plain"


def run_python(source: str, limits: SandboxLimits | None = None, *, mode: str | None = None) -> RunResult:
    """Run `source` as a Python program in the sandbox; never raises for anything the program does."""
    res = _launch(mode or sandbox_mode(), "run", source, limits or SandboxLimits())
    return RunResult(None if res["timed_out"] else res["returncode"], res["stdout"], res["stderr"],
                     res["timed_out"], res["elapsed_s"])


def test_program(program: str, tests: list[str], limits: SandboxLimits | None = None, *, prefix: str = "",
                 mode: str | None = None) -> TestReport:
    """Run `program` in the sandbox and `tests` against it from the other side (see the module docstring).

    prefix: trusted code the program starts with (e.g. a HumanEval prompt): it also runs on the tests' side, where
    its definitions (other than stub functions) are the ones the tests see.
    """
    if not tests:
        raise ValueError("run_tests needs at least one test")
    res = _launch(mode or sandbox_mode(), "test", program, limits or SandboxLimits(), list(tests), prefix)
    passed, reasons = [False] * len(tests), ["not run"] * len(tests)
    error = None
    for line in res["report"]:
        word, _, rest = line.partition(" ")
        if word in ("ok", "fail"):
            index, _, reason = rest.partition(" ")
            if index.isdigit() and int(index) < len(tests):
                passed[int(index)], reasons[int(index)] = word == "ok", reason
        elif word == "error":
            error = rest
    if error is None and "done" not in res["report"]:
        error = "the test run did not finish" + (" (time limit)" if res["timed_out"] else "") + \
                (f": {res['stderr'].strip()[-300:]}" if res["stderr"].strip() else "")
    return TestReport(passed, reasons, error, res["timed_out"], res["stdout"], res["stderr"], res["elapsed_s"])


test_program.__test__ = False  # not pytest tests, despite the names
TestReport.__test__ = False


def run_tests(program: str, tests: list[str], limits: SandboxLimits | None = None, *, prefix: str = "") -> float:
    """Fraction of `tests` (Python snippets, e.g. asserts) that pass against `program` (see `test_program`).

    A program that fails to load, crashes or times out before a test finishes gets no credit for that test.
    """
    return test_program(program, tests, limits, prefix=prefix).fraction
