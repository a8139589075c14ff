"""The code sandbox contains hostile programs: each attack scores 0, returns within its limit, and the host is fine."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from r1kit.rewards.sandbox import SandboxLimits, run_python, run_tests, sandbox_mode

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
