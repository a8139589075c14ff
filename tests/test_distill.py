"""`r1kit distill` with a fake OpenAI-compatible teacher that is right on known prompts only: only verified traces
are kept, duplicates are dropped, --keep picks, failed requests are retried, a killed run resumes without losing or
repeating work, and the output trains with `r1kit train sft --data` as it is."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

TASK = "arithmetic?digits=2&ops=+&n=8&seed=11"


class FakeTeacher:
    """POST /v1/chat/completions for 'Compute a + b.': right when a is even, else off by one. The reasoning repeats
    its sentence 1 + seed % 3 times, so samples of a prompt differ in length, and seeds 3 apart give identical
    traces. With flaky=True the first attempt of every (prompt, seed) gets a 500 (the client must retry)."""

    def __init__(self, delay: float = 0.0, flaky: bool = False):
        self.delay, self.flaky = delay, flaky
        self.attempts: Counter = Counter()
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "teacher", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, out, headers = teacher.answer(body)
                self._send(code, out, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body):
        a, b = map(int, re.search(r"Compute (\d+) \+ (\d+)", body["messages"][-1]["content"]).groups())
        seed = body["seed"]
        with self.lock:
            self.attempts[(a, b, seed)] += 1
            first = self.attempts[(a, b, seed)] == 1
        time.sleep(self.delay)
        if self.flaky and first:
            return 500, {"error": {"message": "teacher overloaded", "type": "server_error"}}, [("retry-after-ms", "1")]
        value = a + b if a % 2 == 0 else a + b + 1
        reasoning = " ".join([f"{a} plus {b} makes {value}."] * (1 + seed % 3))
        content = f"The answer is $\\boxed{{{value}}}$."
        r_tokens, c_tokens = len(reasoning.split()), len(content.split())
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "teacher",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": content, "reasoning_content": reasoning}}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": r_tokens + c_tokens,
                               "total_tokens": 10 + r_tokens + c_tokens,
                               "completion_tokens_details": {"reasoning_tokens": r_tokens}}}, []

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def teacher():
    t = FakeTeacher(flaky=True)
    yield t
    t.close()


def _traces(path):
    return [json.loads(x) for x in open(path)]


def _question(trace):
    return tuple(map(int, re.search(r"Compute (\d+) \+ (\d+)", trace["messages"][0]["content"]).groups()))


def test_only_verified_traces_are_kept_deduplicated_and_retried(teacher, tmp_path):
    from r1kit.eval.distill import distill
    from r1kit.tasks import load_task

    out = tmp_path / "traces.jsonl"
    stats = distill(base_url=teacher.url, tasks=[TASK], n=4, out=str(out), concurrency=3, progress=False)
    problems = load_task(TASK).examples
    even = [(p["metadata"]["a"], p["metadata"]["b"]) for p in problems if p["metadata"]["a"] % 2 == 0]
    assert 0 < len(even) < len(problems)  # the teacher is right on some prompts only
    traces = _traces(out)
    # seeds s..s+3 give reasoning lengths 1 + s % 3: three distinct traces per solved prompt (one duplicate dropped)
    assert Counter(_question(t) for t in traces) == {q: 3 for q in even}
    for t in traces:
        a, b = _question(t)
        assert f"\\boxed{{{a + b}}}" in t["messages"][1]["content"]
        assert t["messages"][1]["content"].startswith("<think>\n") and "\n</think>\n\n" in t["messages"][1]["content"]
    assert len({json.dumps(t["messages"]) for t in traces}) == len(traces)
    assert all(n == 2 for n in teacher.attempts.values())  # every request failed once and was retried
    s = stats["tasks"][TASK]
    assert s["samples"] == 4 * len(problems) and s["accepted"] == 4 * len(even)
    assert s["acceptance_rate"] == pytest.approx(len(even) / len(problems)) and s["traces"] == 3 * len(even)
    assert json.loads((tmp_path / "traces.jsonl.stats.json").read_text()) == stats
    # --keep shortest / first, from the same teacher (no retries needed now: flaky only on first attempts)
    short = tmp_path / "short.jsonl"
    distill(base_url=teacher.url, tasks=[TASK], n=4, out=str(short), keep="shortest", progress=False)
    for t in _traces(short):
        reasoning = t["messages"][1]["content"].split("</think>")[0]
        assert reasoning.count("makes") == 1  # the shortest sample repeats its sentence once
    assert sorted(_question(t) for t in _traces(short)) == sorted(even)
    first = tmp_path / "first.jsonl"
    distill(base_url=teacher.url, tasks=[TASK], n=4, out=str(first), keep="first", progress=False)
    assert [t["sample"] for t in _traces(first)] == [0] * len(even)


def test_a_file_distill_did_not_write_is_not_appended_to(tmp_path, teacher):
    from r1kit.errors import UserError
    from r1kit.eval.distill import distill

    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"messages": []}\n')
    with pytest.raises(UserError, match="was not written by r1kit distill"):
        distill(base_url=teacher.url, tasks=[TASK], n=2, out=str(mine), progress=False)


@pytest.mark.slow
def test_a_killed_distill_resumes_and_its_output_trains_with_sft(tmp_path, tiny_checkpoint):
    slow = FakeTeacher(delay=0.15)
    try:
        out = tmp_path / "traces.jsonl"
        cmd = [sys.executable, "-m", "r1kit", "distill", "--teacher-url", slow.url, "--task", TASK,
               "--samples-per-prompt", "4", "--concurrency", "2", "--out", str(out), "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = tmp_path / "traces.jsonl.samples.jsonl"
        deadline = time.monotonic() + 120
        while not (samples.exists() and len(samples.read_text().splitlines()) >= 10):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        before = samples.read_text()
        assert before.endswith("\n") and all(json.loads(x) for x in before.splitlines())
        done = {(r["problem"], r["sample"]) for r in map(json.loads, before.splitlines())}
        assert 10 <= len(done) < 32
        requests_before = sum(slow.attempts.values())
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        # only the missing samples were asked for (plus at most the 2 that were in flight at the kill)
        assert 32 - len(done) <= sum(slow.attempts.values()) - requests_before <= 32 - len(done) + 2
        assert len(samples.read_text().splitlines()) == 32
        resumed = _traces(out)
        fresh_out = tmp_path / "fresh.jsonl"
        r = subprocess.run([*cmd[:-3], "--out", str(fresh_out), "--no-progress"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        key = lambda t: (t["problem"], t["sample"], json.dumps(t["messages"]))  # noqa: E731
        assert sorted(map(key, resumed)) == sorted(map(key, _traces(fresh_out))) and resumed
    finally:
        slow.close()
    # the traces train a student as they are
    model = tiny_checkpoint("qwen2")
    r = subprocess.run([sys.executable, "-m", "r1kit", "train", "sft", "--model", model, "--data", str(out),
                        "--out", str(tmp_path / "student"), "--max-steps", "2", "--batch-size", "4",
                        "--max-seq-len", "256"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "student" / "final" / "config.json").is_file()
    loss = [json.loads(x)["loss"] for x in open(tmp_path / "student" / "metrics.jsonl")]
    assert len(loss) == 2 and all(x > 0 for x in loss)
