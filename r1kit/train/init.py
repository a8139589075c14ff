"""`r1kit init`: a new model with random weights and its own tokenizer, the step before training from scratch.

    r1kit init --out runs/tiny/init --preset r1kit-tiny --task 'arithmetic?digits=4&n=2000' --task countdown

The architecture comes from a preset of r1kit.models.random_checkpoint (`--model-type`, `--preset`); the byte-level
BPE tokenizer (R1 special tokens and chat template, digits one per token) is trained on r1kit's small built-in
corpus plus the text of the given tasks: their questions and reference solutions, so that the words a model will
read and write most are single tokens. The result is a Hugging Face checkpoint directory that every command takes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from r1kit.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1kit.models.random_checkpoint import PRESETS

    presets = sorted({p for by_type in PRESETS.values() for p in by_type})
    parser.add_argument("--out", required=True, help="directory to write the checkpoint to (must not exist yet)")
    parser.add_argument("--model-type", default="deepseek_v3", choices=sorted(PRESETS),
                        help="architecture (default: %(default)s)")
    parser.add_argument("--preset", default="tiny", choices=presets,
                        help="size preset of the architecture (default: %(default)s); "
                        "see r1kit/models/random_checkpoint.py")
    parser.add_argument("--task", action="append", default=[],
                        help="task spec whose questions and reference solutions join the tokenizer's corpus "
                             "(repeatable; e.g. 'arithmetic?digits=4&n=2000')")
    parser.add_argument("--vocab-size", type=int, default=None, help="tokenizer size (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the built-in corpus "
                        "(default: %(default)s)")


def task_corpus(specs: list[str]) -> list[str]:
    """Text of the tasks a model will be trained on: each question, with its reference solution when there is one."""
    from r1kit.tasks import load_task

    texts = []
    for spec in specs:
        task = load_task(spec)
        for ex in task:
            texts.append(ex["question"])
            if task.reference is not None:
                texts.append(task.reference_solution(ex))
    return texts


def run(args: argparse.Namespace) -> int:
    from r1kit.models.random_checkpoint import create_random_checkpoint
    from r1kit.models.registry import num_parameters
    from r1kit.models.checkpoint import load_model
    from r1kit.tokenizer import default_corpus

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} already exists and is not empty; choose a new directory")
    corpus = default_corpus(seed=args.seed) + task_corpus(args.task)
    create_random_checkpoint(out, model_type=args.model_type, preset=args.preset, seed=args.seed, corpus=corpus,
                             vocab_size=args.vocab_size)
    n = num_parameters(load_model(out))
    print(f"wrote a random {args.model_type} ({args.preset}, {n / 1e6:.2f}M parameters) with a tokenizer trained on "
          f"{len(corpus)} texts to {out}")
    return 0
