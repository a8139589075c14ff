"""lm-evaluation-harness (its CLI, `local-completions`) against an r1kit server on the shipped multiple-choice tasks
(examples/lm_eval/mc_*): every per-choice loglikelihood equals the one computed directly with the model (one full
forward, log_softmax, summed over the continuation) to 1e-4, and the accuracy equals the directly computed one.

r1kit_mc_arith_first lists the gold answer first in every question: a server whose logprobs ignore the prompt
(equal scores for all choices) scores 100% there by accident, so its accuracy must equal r1kit_mc_arith's (the
same questions, shuffled choices) and the direct one. Runs offline: local JSON data, the server's own tokenizer
through /tokenizer_info and /tokenize.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

pytest.importorskip("lm_eval")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "lm_eval"
TASKS = ("r1kit_mc_arith", "r1kit_mc_arith_first")


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    llm = LLM(tiny_checkpoint("deepseek_v3"), device="cpu", max_model_len=512)
    with BackgroundServer(create_app(llm.engine, "tiny")) as s:
        yield s, llm


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """The shipped task YAMLs with their data paths made absolute (they are relative to the repository root)."""
    out = tmp_path_factory.mktemp("lm_eval_tasks")
    for yaml in EXAMPLES.glob("mc_*.yaml"):
        text = yaml.read_text().replace("examples/lm_eval/", str(EXAMPLES) + "/")
        (out / yaml.name).write_text(text)
    return out


def run_lm_eval(server, task_dir, out_dir, tasks, model_args, batch_size):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, "-m", "lm_eval", "--model", "local-completions",
            "--model_args", f"base_url={server.url}/v1/completions,model=tiny,{model_args}",
            "--include_path", str(task_dir), "--tasks", ",".join(tasks), "--batch_size", str(batch_size),
            "--output_path", str(out_dir), "--log_samples"]
    proc = subprocess.run(args, env=env, cwd=out_dir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(glob.glob(f"{out_dir}/**/results_*.json", recursive=True)[0]).read_text())
    samples = {t: [json.loads(line) for line in Path(glob.glob(f"{out_dir}/**/samples_{t}_2*.jsonl",
                                                                 recursive=True)[0]).read_text().splitlines()]
               for t in tasks}
    return results["results"], samples


def direct_loglikelihood(llm, context: str, continuation: str) -> float:
    """lm-eval's split of a request into tokens (trailing context spaces move to the continuation; the whole is
    encoded once), scored by one plain forward of the model."""
    tok = llm.tokenizer
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx_len = len(tok.encode(context))
    with torch.inference_mode():
        lp = torch.log_softmax(llm.model(torch.tensor(whole)[None]).float()[0], dim=-1)
    return sum(lp[i - 1, whole[i]].item() for i in range(ctx_len, len(whole)))


def check(results, samples, llm):
    accs = {}
    for task, docs in samples.items():
        correct = []
        for doc in docs:
            got = [float(r[0]) for r in doc["filtered_resps"]]
            want = [direct_loglikelihood(llm, a["arg_0"], a["arg_1"]) for a in doc["arguments"].values()]
            assert got == pytest.approx(want, abs=1e-4), doc["doc"]
            assert len(set(got)) > 1  # the choices really are scored differently
            correct.append(max(range(len(want)), key=lambda i: want[i]) == doc["doc"]["answer"])
        accs[task] = sum(correct) / len(correct)
        assert results[task]["acc,none"] == pytest.approx(accs[task])
    return accs


@pytest.mark.slow
def test_lm_eval_token_id_prompts_in_batches_of_4(served, task_dir, tmp_path):
    server, llm = served
    results, samples = run_lm_eval(server, task_dir, tmp_path, TASKS, "tokenized_requests=True", 4)
    accs = check(results, samples, llm)
    assert accs["r1kit_mc_arith_first"] == accs["r1kit_mc_arith"] < 1.0


@pytest.mark.slow
def test_lm_eval_text_prompts(served, task_dir, tmp_path):
    server, llm = served
    results, samples = run_lm_eval(server, task_dir, tmp_path, TASKS[:1], "tokenized_requests=False", 1)
    check(results, samples, llm)
