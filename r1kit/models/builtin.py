"""Models known by name, resolved the same way by every command that takes a model.

    resolve_model("r1kit-tiny")                 the reasoner r1kit trains itself, shipped in the package
    resolve_model("r1kit-tiny-distill")         its dense Qwen2-architecture student (distilled from its traces)
    resolve_model("r1kit-tiny-direct")          the direct-answer baseline of r1kit-tiny's model card (no thinking)
    resolve_model("random-deepseek_v3-tiny")    random weights, made once under the cache dir: tests, benchmarks
    resolve_model("./runs/grpo/final")          a local checkpoint directory (Hugging Face layout)
    resolve_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")   a hub id (downloaded on first use)

`LLM`, `r1kit serve|chat|eval|distill|train` all call `resolve_model` before anything else, so a name that works in
one works in all, and a bad name fails before a run directory is touched. docs/r1kit-tiny.md is the model card.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from r1kit.cache import cache_dir
from r1kit.errors import UserError
from r1kit.models.checkpoint import resolve_checkpoint

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = ("r1kit-tiny", "r1kit-tiny-distill", "r1kit-tiny-direct")
DEFAULT_MODEL = "r1kit-tiny"
RANDOM_PREFIX = "random-"


def builtin_names() -> list[str]:
    """The shipped models present in this installation, then the random-model pattern."""
    return [n for n in SHIPPED if (ASSETS / n / "config.json").is_file()] + ["random-<model_type>[-<preset>]"]


def resolve_model(name: str | os.PathLike, seed: int = 0) -> Path:
    """The checkpoint directory for a builtin name, a local directory or a hub id (see the module docstring)."""
    text = str(name)
    if not text:
        raise UserError("no model given: pass a checkpoint directory, a hub id or a builtin name "
                        f"({', '.join(builtin_names())})")
    if os.path.exists(text):
        return resolve_checkpoint(text)
    if text in SHIPPED:
        path = ASSETS / text
        if not (path / "config.json").is_file():
            raise UserError(f"the builtin model {text!r} is not in this installation ({path} is missing); "
                            "recipes/tiny.sh trains it")
        return path
    if text.startswith(RANDOM_PREFIX):
        return _random_checkpoint(text[len(RANDOM_PREFIX):], seed)
    return resolve_checkpoint(text)


def _random_checkpoint(spec: str, seed: int) -> Path:
    """'deepseek_v3-tiny' -> a random checkpoint of that architecture and preset, written once (atomically)."""
    from r1kit.models.random_checkpoint import create_random_checkpoint, preset_config

    model_type, _, preset = spec.partition("-")
    preset = preset or "tiny"
    preset_config(model_type, preset)  # a bad name is a UserError naming what exists, before any work
    # keyed by the chat template too: one saved (in tokenizer_config.json) before the template changed would
    # otherwise be served forever
    from r1kit.tokenizer import r1_chat_template

    fmt = hashlib.sha256(r1_chat_template().encode()).hexdigest()[:8]
    out = cache_dir() / "random" / f"{model_type}-{preset}-seed{seed}-{fmt}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        create_random_checkpoint(tmp, model_type=model_type, preset=preset, seed=seed)
        try:
            os.replace(tmp, out)
        except OSError:  # another process made it first: theirs is the same checkpoint
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
