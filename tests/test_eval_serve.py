"""`r1kit eval` against a real `r1kit serve` (a subprocess on loopback) and against the local engine: greedy
decoding must give the same samples, the same scores and the same token counts. And lm-evaluation-harness's
`local-chat-completions` against that server, on the shipped example task, agrees with `r1kit eval`."""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

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
    # a default thinking budget: lm-eval sends no max_thinking_tokens, and a random model would never close its
    # thinking on its own, so every answer would be empty
    s = Served(path, "--max-num-seqs", "8", "--max-thinking-tokens", "12")
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


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "eval"


@pytest.mark.slow
def test_lm_eval_local_chat_completions_agrees_with_r1kit_eval(served, tmp_path):
    """The shipped lm-eval task (examples/eval/lm_eval) on the shipped problems, pointed at a copy of the data whose
    gold answers are the model's own greedy answers on even problems and unreachable on odd ones, so the expected
    accuracy is known and not 0. lm-eval sends its `until` ('\\n\\n') as stop strings; r1kit eval gets the same
    with --stop. Both must see the same answer for every problem."""
    pytest.importorskip("lm_eval")
    from r1kit.eval.evaluate import evaluate

    problems = [json.loads(x) for x in open(EXAMPLES / "arithmetic.jsonl")][:10]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({**p, "verifier": "exact"}) + "\n" for p in problems))
    common = dict(n=1, temperature=0.0, max_tokens=40, max_thinking_tokens=12, stop=["\n\n"], progress=False)
    first = evaluate(model=served.model_path, tasks=[str(data)], out=str(tmp_path / "probe"), **common)
    answers = {r["problem"]: r["extracted"] for r in map(json.loads, open(tmp_path / "probe" / "samples.jsonl"))}
    assert first["tasks"][str(data)]["format_error_rate"] < 1
    gold = [answers[i] if i % 2 == 0 and answers[i].strip() else "never this answer" for i in range(len(problems))]
    data.write_text("".join(json.dumps({**p, "verifier": "exact", "answer": g}) + "\n" for p, g in zip(problems, gold)))
    ours = evaluate(model=served.model_path, tasks=[str(data)], out=str(tmp_path / "r1kit"), **common)
    expected = sum(g != "never this answer" for g in gold) / len(problems)
    assert ours["tasks"][str(data)]["pass@1"] == pytest.approx(expected) and expected > 0

    include = tmp_path / "tasks"
    include.mkdir()
    shutil.copy(EXAMPLES / "lm_eval" / "utils.py", include)
    yaml = (EXAMPLES / "lm_eval" / "r1kit_arithmetic.yaml").read_text()
    assert "test: examples/eval/arithmetic.jsonl" in yaml
    (include / "r1kit_arithmetic.yaml").write_text(yaml.replace("test: examples/eval/arithmetic.jsonl",
                                                                f"test: {data}"))
    repo = str(Path(__file__).resolve().parent.parent)  # utils.py imports r1kit: the one under test
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(["lm_eval", "--model", "local-chat-completions", "--model_args",
                        f"model=tiny,base_url={served.url}/chat/completions,num_concurrent=4",
                        "--tasks", "r1kit_arithmetic", "--include_path", str(include), "--apply_chat_template",
                        "--gen_kwargs", "max_gen_toks=40", "--output_path", str(tmp_path / "lm"), "--log_samples"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(next((tmp_path / "lm").rglob("results_*.json")).read_text())
    samples = [json.loads(x) for x in open(next((tmp_path / "lm").rglob("samples_r1kit_arithmetic_*.jsonl")))]
    ours_by_problem = {r["problem"]: r for r in map(json.loads, open(tmp_path / "r1kit" / "samples.jsonl"))}
    for s in samples:
        mine = ours_by_problem[s["doc_id"]]
        assert (s["resps"][0][0] or "").strip() == mine["answer"], s["doc_id"]
        assert s["acc"] == float(mine["correct"])
    assert results["results"]["r1kit_arithmetic"]["acc,none"] == pytest.approx(expected)
