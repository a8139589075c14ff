"""recipes/tiny.sh --quick: the whole R1 pipeline (init, base, cold-start SFT, direct baseline, GRPO, distillation,
evaluation, model card) at a reduced size, run as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1kit.engine import LLM, SamplingParams

REPO = Path(__file__).resolve().parents[1]
STAGES = ("base", "sft", "direct", "grpo", "student")


def _held_out_reward(results: dict, specs: list[str]) -> float:
    """The GRPO reward (accuracy + 0.2 format) on held-out problems, from r1kit eval's pass@1 and format-error rate."""
    tasks = [results["tasks"][s] for s in specs]
    return sum(t["pass@1"] + 0.2 * (1 - t["format_error_rate"]) for t in tasks) / len(tasks)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-quick")
    env = {**os.environ, "OUT": str(out), "R1KIT": f"{sys.executable} -m r1kit", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO / "recipes" / "tiny.sh"), "--quick"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out


@pytest.mark.slow
def test_quick_recipe_writes_a_loadable_checkpoint_at_every_stage(quick_run):
    for stage in STAGES:
        llm = LLM(str(quick_run / stage / "final"))
        out = llm.generate(["What is 3 + 4?"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) > 0, stage
    assert (quick_run / "traces.jsonl").stat().st_size > 0          # the student learned from verified traces
    card = (quick_run / "model_card.md").read_text()
    assert "| task |" in card and "GRPO" in card


@pytest.mark.slow
def test_quick_recipe_grpo_raises_the_held_out_reward_over_cold_start_sft(quick_run):
    tasks = json.loads((quick_run / "r1kit_tasks.json").read_text())
    sft = json.loads((quick_run / "eval" / "sft" / "results.json").read_text())
    grpo = json.loads((quick_run / "eval" / "grpo" / "results.json").read_text())
    hard = tasks["hard"]
    assert _held_out_reward(grpo, hard) > _held_out_reward(sft, hard), (
        {s: (sft["tasks"][s]["pass@1"], grpo["tasks"][s]["pass@1"]) for s in hard})
