"""r1kit-tiny, shipped in the package: it reasons its way to answers it could not give directly, on problems no
training set held, and transformers runs it (and its student) exactly as r1kit does."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from r1kit.engine import LLM, SamplingParams
from r1kit.models.builtin import resolve_model
from r1kit.tasks import load_task
from r1kit.train.task_data import prompt_ids

TASKS = json.loads((resolve_model("r1kit-tiny") / "r1kit_tasks.json").read_text())


def _problem_key(ex: dict) -> str:
    return ex["metadata"].get("problem", ex["question"])


def _greedy_accuracy(llm: LLM, specs: list[str], per_task: int) -> float:
    pairs = [(t, ex) for spec in specs for t in [load_task(spec, n=per_task)] for ex in t]
    outs = llm.generate([prompt_ids(llm.tokenizer, ex, 1 << 20) for _, ex in pairs],
                        SamplingParams(temperature=0, max_tokens=320), use_tqdm=False)
    return sum(t.score(o.outputs[0].text, ex) == 1.0 for (t, ex), o in zip(pairs, outs)) / len(pairs)


@pytest.mark.slow
def test_r1kit_tiny_beats_chance_and_the_direct_answer_baseline_on_held_out_problems():
    # every evaluated family, the harder ones and 4-digit sums (which it rarely gets) included
    tiny = _greedy_accuracy(LLM("r1kit-tiny"), TASKS["eval"], per_task=12)
    direct = _greedy_accuracy(LLM("r1kit-tiny-direct"), TASKS["eval"], per_task=12)
    assert tiny >= 0.3, tiny                       # chance is ~0: answers are multi-digit numbers and expressions
    assert tiny >= direct + 0.25, (tiny, direct)   # thinking, not memorised answers


def test_held_out_problems_are_in_no_training_set():
    held_out = {_problem_key(ex) for spec in TASKS["eval"] for ex in load_task(spec)}
    assert held_out
    for group in ("base", "sft", "grpo"):
        for spec in TASKS[group]:
            assert not held_out & {_problem_key(ex) for ex in load_task(spec)}, spec


@pytest.mark.parametrize("name", ["r1kit-tiny", "r1kit-tiny-distill"])
def test_transformers_loads_the_shipped_models_and_decodes_the_same_greedy_tokens(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    hf = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ours = LLM(name)
    messages = [{"role": "user", "content": "What is 47 + 85?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = list(ids) if isinstance(ids, list) else list(ids["input_ids"])   # a BatchEncoding in newer transformers
    assert ids == ours.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)[0, len(ids):].tolist()
    mine = ours.generate([ids], SamplingParams(temperature=0, max_tokens=48), use_tqdm=False)[0].outputs[0].token_ids
    n = min(len(theirs), len(mine))
    assert n > 10 and list(mine[:n]) == theirs[:n]


def test_r1kit_chat_answers_the_readme_question_with_its_reasoning():
    r = subprocess.run([sys.executable, "-m", "r1kit", "chat", "What is 385 + 247?"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    thinking, _, answer = r.stdout.partition("[answer]")
    assert "[thinking]" in thinking and "632" in answer, r.stdout


def test_r1kit_demo_shows_held_out_problems_with_thinking_and_counts_the_right_answers():
    r = subprocess.run([sys.executable, "-m", "r1kit", "demo", "--per-task", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import re

    right, total = map(int, re.search(r"^(\d+)/(\d+) right", r.stdout, re.M).groups())
    assert total == len(TASKS["eval"])                       # one held-out problem per evaluated task family
    assert r.stdout.count("  thinking: ") == total
    assert sum(line.rstrip().endswith(")") and " right (expected" in line for line in r.stdout.splitlines()) == right
    assert right >= 1, r.stdout
