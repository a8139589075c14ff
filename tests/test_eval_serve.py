"""`r1kit eval` against a real `r1kit serve` (a subprocess on loopback) and against the local engine: greedy
decoding must give the same samples, the same scores and the same token counts."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

import pytest

TASKS = ["arithmetic?digits=2&n=4&seed=5", "countdown?numbers=3&n=3&seed=5"]


class Served:
    """`r1kit serve` in a subprocess; .url is its /v1 address once it printed that it is ready."""

    def __init__(self, model: str, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "r1kit", "serve", "--model", model, "--port", "0",
                                      "--served-model-name", "tiny", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        seen = []
        while True:
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                self.close()
                raise RuntimeError("r1kit serve did not start:\n" + "".join(seen)) from None
            seen.append(line)
            if line.startswith("r1kit serve: model"):
                self.url = line.split(" at ")[1].split()[0]
                return
            if self.proc.poll() is not None:
                raise RuntimeError("r1kit serve exited:\n" + "".join(seen))

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    path = tiny_checkpoint("deepseek_v3")
    s = Served(path, "--max-num-seqs", "8")
    s.model_path = path
    yield s
    s.close()


SAMPLE_FIELDS = ("completion", "reasoning", "answer", "extracted", "score", "correct", "format_error",
                 "completion_tokens", "reasoning_tokens", "answer_tokens", "seed", "prompt_hash")


def _samples(out):
    rows = [json.loads(x) for x in open(os.path.join(out, "samples.jsonl"))]
    return {(r["task"], r["problem"], r["sample"]): {k: r[k] for k in SAMPLE_FIELDS} for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("thinking,temperature,n", [(True, 0.0, 2), (False, 0.0, 2), (True, 1.0, 3)])
def test_eval_over_http_equals_the_local_engine(served, tmp_path, thinking, temperature, n):
    """Greedy, and sampled too: the local engine runs a problem's n samples as one request (sample i seeded
    seed + i), the HTTP backend sends n single requests with those seeds."""
    from r1kit.eval.evaluate import evaluate

    common = dict(tasks=TASKS, n=n, temperature=temperature, top_p=0.9, max_tokens=40, max_thinking_tokens=12,
                  thinking=thinking, progress=False)
    local = evaluate(model=served.model_path, out=str(tmp_path / "local"), **common)
    remote = evaluate(base_url=served.url, out=str(tmp_path / "http"), concurrency=4, **common)
    a, b = _samples(tmp_path / "local"), _samples(tmp_path / "http")
    assert len(a) == 7 * n and a == b
    if thinking:  # the thinking budget closed every thinking block: each sample has both parts
        assert all(s["reasoning"] and "</think>" in s["completion"] for s in a.values())
    else:
        assert all(s["reasoning"] == "" and s["reasoning_tokens"] == 0 for s in a.values())
    for task in TASKS:
        ta, tb = dict(local["tasks"][task]), dict(remote["tasks"][task])
        for volatile in ("latency_s", "output_tokens_per_s"):
            ta.pop(volatile), tb.pop(volatile)
        assert ta == tb
    assert remote["model"] == {"backend": "http", "name": "tiny", "base_url": served.url, "config_hash": None}
    assert local["model"]["config_hash"].startswith("sha256:")
