"""The code sandbox contains hostile programs: each attack scores 0, returns within its limit, and the host is fine."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from r1kit.rewards.sandbox import SandboxLimits, run_python, run_tests, sandbox_mode, test_program

FAST = SandboxLimits(wall_s=4.0, cpu_s=3, memory_mb=512, max_procs=16)


def _processes_running(marker: str) -> int:
    """Host processes whose command line mentions `marker` (a sandbox's unique working directory)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                count += marker.encode() in f.read()
        except OSError:
            pass
    return count


PRINT_CWD = "import os\nprint(os.getcwd(), flush=True)\n"


def test_correct_program_scores_fraction_of_tests_passed():
    program = "def add(a, b):\n    return a + b\n"
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(-1, 1) == 0"]
    assert run_tests(program, tests, FAST) == pytest.approx(2 / 3)


def test_program_that_fails_to_load_scores_zero():
    assert run_tests("def add(a, b) return a + b", ["assert add(1, 2) == 3"], FAST) == 0.0


def test_printing_a_fake_pass_count_does_not_score():
    program = "import os\nprint('\\n' + 'x' * 32 + ' 99')\nos._exit(0)\n"
    assert run_tests(program, ["assert False"], FAST) == 0.0


def test_infinite_loop_is_killed_within_wall_limit():
    start = time.monotonic()
    assert run_tests("while True:\n    pass\n", ["assert True"], FAST) == 0.0
    assert time.monotonic() - start < FAST.wall_s + 3


def test_sleeping_program_is_killed_at_wall_clock_limit():
    start = time.monotonic()
    res = run_python("import time\ntime.sleep(60)\n", SandboxLimits(wall_s=1.5))
    assert res.timed_out and time.monotonic() - start < 4


def test_fork_bomb_is_contained():
    bomb = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "FORKED = n\n"
    )
    start = time.monotonic()
    res = run_python(PRINT_CWD + bomb + "print('forked', FORKED)\n", FAST)
    assert time.monotonic() - start < FAST.wall_s + 3
    workdir = res.stdout.split()[0]
    if not res.timed_out:  # it stopped forking by itself: only because the process limit hit
        assert "forked" in res.stdout and int(res.stdout.split()[2]) < FAST.max_procs
    assert run_tests(bomb, ["assert FORKED > 1000"], FAST) == 0.0
    time.sleep(0.5)
    assert _processes_running(workdir) == 0  # its sleeping children did not outlive it


def test_escaping_the_process_group_does_not_leave_processes_behind():
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nelse:\n    time.sleep(60)\n"
    res = run_python(PRINT_CWD + program, SandboxLimits(wall_s=1.5))
    assert res.timed_out
    time.sleep(0.5)
    leftovers = _processes_running(res.stdout.split()[0])
    if sandbox_mode() == "plain":
        pytest.skip(f"without a PID namespace a process that left the group survives ({leftovers} left)")
    assert leftovers == 0


def test_memory_bomb_is_contained():
    program = "x = bytearray(8 << 30)\nBIG = len(x)\n"
    start = time.monotonic()
    assert run_tests(program, ["assert BIG > 0"], FAST) == 0.0
    assert time.monotonic() - start < FAST.wall_s + 3


def test_writing_outside_its_directory_is_contained(tmp_path):
    target = tmp_path / "pwned.txt"
    repo_target = os.path.join(os.path.dirname(__file__), "pwned_by_sandbox.txt")
    program = (
        f"open({str(target)!r}, 'w').write('x')\n"
        f"open({repo_target!r}, 'w').write('x')\n"
        "WROTE = True\n"
    )
    assert run_tests(program, ["assert WROTE"], FAST) == 0.0
    assert not target.exists() and not os.path.exists(repo_target)


def test_file_size_limit_stops_huge_writes():
    program = "f = open('big.bin', 'wb')\nf.write(b'x' * (64 << 20))\nf.close()\nOK = True\n"
    assert run_tests(program, ["assert OK"], SandboxLimits(wall_s=5, file_mb=4)) == 0.0


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("R1KIT_TEST_SECRET", "hunter2")
    program = "import os\nSECRET = os.environ.get('R1KIT_TEST_SECRET')\n"
    assert run_tests(program, ["assert SECRET == 'hunter2'"], FAST) == 0.0
    assert run_tests(program, ["assert SECRET is None"], FAST) == 1.0  # the program itself did run


def test_network_socket_cannot_reach_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nCONNECTED = True\n"
    try:
        score = run_tests(program, ["assert CONNECTED"], FAST)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    if sandbox_mode() == "plain":
        pytest.skip("no network namespace on this machine")
    assert score == 0.0


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_signalling_the_parent_is_contained(sig):
    # if the sandbox could signal this process, pytest itself would die here; only a PID namespace or another uid
    # prevents that, which the "plain" fallback does not have
    targets = "(os.getppid(),)" if sandbox_mode() == "plain" else f"(os.getppid(), {os.getpid()})"
    program = (f"import os, signal, time\n"
               f"for pid in {targets}:\n"
               f"    try:\n        os.kill(pid, signal.{sig})\n    except OSError:\n        pass\n"
               f"time.sleep(0.5)\nDONE = True\n")
    assert run_tests(program, ["assert DONE and False"], FAST) == 0.0
    assert run_tests("X = 1", ["assert X == 1"], FAST) == 1.0  # the host (this process) still works


def test_sandbox_runs_from_non_main_threads():
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_tests("X = 2", ["assert X == 2"], FAST)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1.0] * 4


def test_namespaces_are_used_where_the_os_allows_them():
    if subprocess.run(["unshare", "-rnp", "--fork", "true"], capture_output=True).returncode == 0:
        assert sandbox_mode() == "ns"
    if sandbox_mode() == "ns":
        res = run_python("import os, json\nprint(json.dumps([os.getpid(), os.getuid(), os.listdir('/tmp')]))\n", FAST)
        pid, uid, tmp = json.loads(res.stdout)
        assert pid == 1 and uid != 0
        assert len(tmp) == 1 and tmp[0].startswith("r1kit-sbx-")  # a private /tmp holding only its own directory


def test_process_limit_is_per_sandbox_not_shared_between_concurrent_runs():
    if sandbox_mode() != "ns":
        pytest.skip("per-sandbox process counting needs a user namespace")
    bomb = ("import os, time\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(3)\n"
            "            os._exit(0)\nexcept OSError:\n    time.sleep(3)\n")
    bomb_thread = threading.Thread(target=run_python, args=(bomb, FAST))
    bomb_thread.start()
    time.sleep(1.0)  # the bomb now holds all the processes it may have
    program = ("import os\npids = [os.fork() for _ in range(4)]\nif 0 in pids:\n    os._exit(0)\n"
               "for p in pids:\n    os.waitpid(p, 0)\nFORKED = len(pids)\n")
    # same process limit as the bomb, a roomier clock: this run must fail only if the bomb's processes count against it
    roomy = SandboxLimits(wall_s=10.0, cpu_s=5, memory_mb=512, max_procs=FAST.max_procs)
    score = run_tests(program, ["assert FORKED == 4"], roomy)
    bomb_thread.join()
    assert score == 1.0


# --- isolation of /proc, memory, disk and the host's paths (issue 21) -----------------------------------------

def _needs_ns():
    if sandbox_mode() != "ns":
        pytest.skip("namespaces are unavailable here (sandbox mode 'plain'): no private /proc, filesystem or network")


def test_host_processes_command_lines_are_invisible():
    _needs_ns()
    secret = "sk-r1kit-test-" + os.urandom(6).hex()
    host = subprocess.Popen(["python3", "-c", "import time; time.sleep(30)", secret])
    try:
        program = ("import os\nseen = []\nfor pid in os.listdir('/proc'):\n"
                   "    try:\n        seen.append(open(f'/proc/{pid}/cmdline', 'rb').read())\n"
                   "    except OSError:\n        pass\nprint(len(seen), repr(seen))\n")
        res = run_python(program, FAST)
    finally:
        host.kill()
        host.wait()
    assert res.returncode == 0, res.stderr
    assert secret not in res.stdout
    assert int(res.stdout.split()[0]) == 3  # /proc/1, /proc/self and /proc/thread-self: its own process only


def test_memfd_and_shared_memory_cannot_hold_memory_past_the_limit():
    program = (
        "import os, mmap\nheld = 0\n"
        "try:\n    fd = os.memfd_create('x')\n    MEMFD = True\nexcept OSError:\n    MEMFD = False\n"
        "try:\n    import _posixshmem\n    _posixshmem.shm_open('/r1kit', os.O_CREAT | os.O_RDWR, 0o600)\n"
        "    SHM_OPEN = True\nexcept OSError:\n    SHM_OPEN = False\n"
        "fds = []\n"
        "for i in range(64):\n"
        "    try:\n        f = open(f'/dev/shm/f{i}', 'wb')\n        f.write(b'x' * (16 << 20))\n        f.close()\n"
        "        held += 16\n    except OSError:\n        break\n"
        "print('memfd', MEMFD, 'held', held, flush=True)\n"
    )
    res = run_python(program, SandboxLimits(wall_s=10, memory_mb=256, disk_mb=64))
    words = res.stdout.split()
    assert words[:2] == ["memfd", "False"], res  # memfd_create is refused (seccomp), with or without a cgroup
    if sandbox_mode() == "ns":
        assert int(words[3]) <= 64  # /dev/shm is part of the sandbox's 64 MB tmpfs


def test_memory_cgroup_counts_all_processes_together():
    from r1kit.rewards.sandbox_cgroup import cgroup_support

    if "memory" not in cgroup_support():
        pytest.skip("no memory cgroup can be made here (needs root and a writable cgroup v1 memory hierarchy or a "
                    "delegated cgroup v2 subtree); RLIMIT_AS limits each process alone")
    # four processes of 150 MB each try to be alive at once under a 256 MB limit for the whole sandbox
    program = (
        "import os, select, time\nr, w = os.pipe()\npids = []\n"
        "for _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
        "        x = bytearray(150 << 20)\n        x[::4096] = b'x' * len(x[::4096])\n"
        "        os.write(w, b'1')\n        time.sleep(6)\n        os._exit(0)\n    pids.append(pid)\n"
        "reported = 0\nwhile reported < 4 and select.select([r], [], [], 2.0)[0]:\n"
        "    reported += len(os.read(r, 4))\n"
        "alive = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in pids)\n"
        "print(reported, alive, flush=True)\n"
    )
    res = run_python(program, SandboxLimits(wall_s=8, cpu_s=8, memory_mb=256, max_procs=16))
    reported, alive = map(int, res.stdout.split())
    assert reported >= 1 and alive * 150 <= 256, res  # the OOM killer took the others


def test_disk_quota_and_open_file_limit():
    _needs_ns()
    program = (
        "written = 0\ntry:\n    for i in range(40):\n        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'x' * (16 << 20))\n        written += 16\nexcept OSError:\n    pass\n"
        "files = []\ntry:\n    for i in range(10000):\n        files.append(open('/dev/null'))\n"
        "except OSError:\n    pass\n"
        "print(written, len(files))\n"
    )
    res = run_python(program, SandboxLimits(wall_s=10, disk_mb=64, file_mb=32, max_open_files=64))
    written, opened = map(int, res.stdout.split())
    assert written < 64 and opened < 64  # 640 MB in 40 files was the probe


def test_no_writable_host_paths_and_no_host_unix_sockets(tmp_path):
    _needs_ns()
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_dir / "s"))
    server.listen(1)
    server.settimeout(0.1)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(b"\0r1kit-test-" + os.urandom(4).hex().encode())
    abstract.listen(1)
    abstract.settimeout(0.1)
    marker = "r1kit-leak-" + os.urandom(4).hex()
    targets = ["/run", "/run/lock", "/var/tmp", "/tmp", "/dev/shm", "/var/lock", str(tmp_path), "/root", "/"]
    program = (
        "import os, socket\nwrote = []\n"
        f"for d in {targets!r}:\n"
        "    try:\n"
        f"        open(os.path.join(d, {marker!r}), 'w').write('x')\n        wrote.append(d)\n"
        "    except OSError:\n        pass\n"
        "connected = []\n"
        f"for addr in [{str(sock_dir / 's')!r}, {abstract.getsockname()!r}, '/run/systemd/private']:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n        s.connect(addr)\n        connected.append(addr)\n    except OSError:\n        pass\n"
        "print(repr(wrote), repr(connected))\n"
    )
    try:
        res = run_python(program, FAST)
        for sock in (server, abstract):
            with pytest.raises(socket.timeout):
                sock.accept()
    finally:
        server.close()
        abstract.close()
    assert res.returncode == 0, res.stderr
    assert "[]" in res.stdout.split(" ", 1)[1]  # connected to nothing
    for d in targets:  # whatever it wrote stayed in its own tmpfs
        assert not os.path.exists(os.path.join(d, marker)), d


def test_nothing_survives_the_run():
    _needs_ns()
    program = PRINT_CWD + (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
        "open('/tmp/left-behind', 'w').write('x')\nprint('started', flush=True)\n")
    res = run_python(program, FAST)
    assert res.returncode == 0 and "started" in res.stdout, res
    time.sleep(0.3)
    assert _processes_running(res.stdout.split()[0]) == 0
    assert not os.path.exists("/tmp/left-behind") and not os.path.exists(res.stdout.split()[0])


def test_plain_mode_still_runs_tests_on_the_far_side():
    # where namespaces are unavailable the runner/candidate split still holds (rlimits, seccomp, cgroups only)
    assert test_program("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3"], FAST, mode="plain").passed \
        == [True]
    forged = "class A:\n    def __eq__(s, o):\n        return True\ndef add(a, b):\n    return A()\n"
    assert test_program(forged, ["assert add(1, 2) == 3"], FAST, mode="plain").passed == [False]
    res = run_python("import os\nprint(os.getpid())\n", FAST, mode="plain")
    assert res.returncode == 0 and res.stdout.split() != ["1"]  # no PID namespace in this mode
