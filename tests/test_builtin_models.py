"""Models known by name resolve the same way in every command; `r1kit init` makes a model to train from scratch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from r1kit.errors import UserError
from r1kit.models.builtin import resolve_model


def _r1kit(*args: str, cache, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "R1KIT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "r1kit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_random_model_names_resolve_to_one_checkpoint_made_once(tmp_path, monkeypatch):
    monkeypatch.setenv("R1KIT_CACHE_DIR", str(tmp_path))
    path = resolve_model("random-qwen2-tiny")
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("random-qwen2-tiny") == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model("random-qwen2-tiny", seed=1) != path
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen2"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]   # no temporary directory left behind
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        resolve_model("random-qwen2-huge")
    with pytest.raises(UserError, match="unsupported model_type"):
        resolve_model("random-gpt9")


def test_train_takes_a_builtin_name_and_a_bad_name_touches_nothing(tmp_path):
    run = tmp_path / "run"
    r = _r1kit("train", "sft", "--model", "random-qwen2-tiny", "--task", "arithmetic?digits=2&n=8", "--out", str(run),
               "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "64", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "final" / "tokenizer.json").is_file() and (run / "final" / "model.safetensors").is_file()
    for trainer in ("sft", "grpo"):
        bad = tmp_path / f"bad-{trainer}"
        r = _r1kit("train", trainer, "--model", "random-qwen2-nosuchpreset", "--task", "arithmetic?n=4",
                   "--out", str(bad), cache=tmp_path / "cache")
        assert r.returncode == 2 and "unknown preset" in r.stderr and "Traceback" not in r.stderr
        assert not bad.exists()


def test_init_makes_a_loadable_model_whose_tokenizer_knows_the_tasks_words(tmp_path):
    out = tmp_path / "init"
    r = _r1kit("init", "--out", str(out), "--model-type", "deepseek_v3", "--preset", "tiny", "--task",
               "countdown?numbers=3&max_value=10&n=300", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parameters" in r.stdout
    from r1kit.engine import LLM, SamplingParams
    from r1kit.tokenizer import load_tokenizer

    tok = load_tokenizer(out)
    assert len(tok.encode(" gives")) == 1 and len(tok.encode(" combinations")) == 1   # words of the countdown trace
    plain = load_tokenizer(resolve_model("random-deepseek_v3-tiny"))
    assert len(plain.encode(" combinations")) > 1                                     # the built-in corpus alone
    out_ids = LLM(str(out)).generate("Try", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(out_ids[0].outputs[0].token_ids) == 4
    again = _r1kit("init", "--out", str(out), cache=tmp_path / "cache")
    assert again.returncode == 2 and "not empty" in again.stderr
