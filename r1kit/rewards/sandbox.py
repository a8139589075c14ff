"""Run untrusted Python (model completions) against tests, contained: the code reward and HumanEval use this.

Each run gets a fresh temporary directory as its cwd, its own session/process group, rlimits on CPU time, address
space, file size and process count, an environment with nothing from the parent (PATH, LANG, HOME only), `python -I`,
and a wall-clock timeout that kills the whole process group. Where the OS allows it (mode "ns"), namespaces add what
rlimits cannot (see `_sandbox_launch.py`): new user/mount/network/PID namespaces (no network, private /tmp, every
leftover process dies with the program), uid nobody when started as root (RLIMIT_NPROC never applies to uid 0), and a
process limit counted per sandbox. Otherwise (mode "plain") rlimits and the process group only.
`sandbox_mode()` says which is in use: probed once by running a small program, then cached.

The parent never uses preexec_fn (unsafe with threads), so `run_python` may be called from any thread; the code
reward scores batches with a thread pool.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_launch.py")
_OUTPUT_CAP = 1 << 20  # bytes of stdout/stderr kept


@dataclass
class SandboxLimits:
    wall_s: float = 10.0  # wall-clock limit; the whole process group is killed after it
    cpu_s: int = 10  # RLIMIT_CPU per process
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE (also caps stdout/stderr, which go to files)
    max_procs: int = 32  # RLIMIT_NPROC


@dataclass
class RunResult:
    returncode: int | None  # None when killed by the wall-clock timeout
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float


def _run_launcher(mode: str, source: str, limits: SandboxLimits) -> RunResult:
    workdir = tempfile.mkdtemp(prefix="r1kit-sbx-")
    io_dir = tempfile.mkdtemp(prefix="r1kit-sbx-io-")  # outside the cage: the program cannot touch it
    try:
        script = os.path.join(workdir, "main.py")
        with open(script, "w") as f:
            f.write(source)
        cfg = {
            # the real interpreter: a venv's bin/python is a symlink into the base install, which the cage exposes
            "python": os.path.realpath(sys.executable), "script": script, "workdir": workdir, "mode": mode,
            "cpu_s": int(limits.cpu_s), "mem_bytes": int(limits.memory_mb) << 20,
            "fsize_bytes": int(limits.file_mb) << 20, "nproc": int(limits.max_procs), "wall_s": limits.wall_s,
        }
        out_path, err_path = os.path.join(io_dir, "out"), os.path.join(io_dir, "err")
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _LAUNCHER, json.dumps(cfg)], stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, cwd=workdir, env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the group outlives its leader when children are left behind: always kill it
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        elapsed = time.monotonic() - start

        def read(path):
            with open(path, "rb") as f:
                return f.read(_OUTPUT_CAP).decode("utf-8", "replace")

        return RunResult(None if timed_out else proc.returncode, read(out_path), read(err_path), timed_out, elapsed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(io_dir, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """The strongest containment that works on this machine: "ns" (namespaces) or "plain" (rlimits only)."""
    probe = "import os\nprint('ok', os.getpid())\n"
    res = _run_launcher("ns", probe, SandboxLimits(wall_s=30))
    if res.returncode == 0 and res.stdout.split() == ["ok", "1"]:
        return "ns"
    warnings.warn(f"r1kit code sandbox: namespaces unavailable ({res.stderr.strip()[-200:] or res.returncode}); "
                  "running with rlimits only (no network isolation, no per-sandbox process limit)")
    return "plain"


def run_python(source: str, limits: SandboxLimits | None = None) -> RunResult:
    """Run `source` as a Python program in the sandbox; never raises for anything the program does."""
    return _run_launcher(sandbox_mode(), source, limits or SandboxLimits())


_RUNNER = '''
import os, sys
os.remove(__file__)  # the nonce must not be readable by the program
_nonce = {nonce!r}
_tests = {tests!r}
_passed = 0
try:
    _ns = {{"__name__": "__main__"}}
    exec(compile({program!r}, "solution.py", "exec"), _ns)
except BaseException:
    _tests = []
for _t in _tests:
    try:
        exec(compile(_t, "test.py", "exec"), _ns)
        _passed += 1
    except BaseException:
        pass
sys.stdout.flush()
sys.__stdout__.write("\\n" + _nonce + " " + str(_passed) + "\\n")
sys.__stdout__.flush()
'''


def run_tests(program: str, tests: list[str], limits: SandboxLimits | None = None) -> float:
    """Fraction of `tests` (Python snippets, e.g. asserts) that pass after running `program` in the sandbox.

    The program and tests share one namespace. A crash, timeout or limit hit while loading the program gives 0.
    The pass count is reported on a line tagged with a random nonce, so printing a fake count does not help.
    """
    if not tests:
        raise ValueError("run_tests needs at least one test")
    nonce = secrets.token_hex(16)
    res = run_python(_RUNNER.format(nonce=nonce, tests=list(tests), program=program), limits)
    if res.timed_out or res.returncode != 0:
        return 0.0
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(nonce + " "):
            return min(int(line.split()[1]), len(tests)) / len(tests)
    return 0.0
