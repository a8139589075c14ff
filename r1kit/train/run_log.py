"""What a run records in its directory, on rank 0 only: the resolved config, one metrics line per step, sample
completions, and at the end the final model and the plots.

RUN/config.json      the resolved config (+ the command's model/data/reward choices)
RUN/metrics.jsonl    one JSON line per step (appended; on --resume lines after the checkpoint's step are dropped)
RUN/samples.jsonl    sample completions (GRPO)
RUN/checkpoints/     see checkpointing.py
RUN/final/           the trained model in Hugging Face layout with its tokenizer files
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from r1kit.config import atomic_write_text
from r1kit.errors import UserError
from r1kit.train.checkpointing import clean_partial, save_final
from r1kit.train.distributed import DistInfo, barrier, full_model_for_saving, unwrap


class RunLog:
    def __init__(self, out_dir: str | os.PathLike, info: DistInfo):
        self.dir = Path(out_dir)
        self.info = info
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"--out {str(out_dir)!r} is an existing file; give a directory (it will hold the "
                            "checkpoints, metrics.jsonl and the final model)")
        if info.is_main and self.dir.is_dir():
            clean_partial(self.dir)   # (before a resume looks for checkpoints: it may restore one)

    def save_config(self, cfg: Any, extra: dict[str, Any]) -> None:
        """The first write of a run: the directory is made here, after every input was checked, so a bad input
        leaves nothing behind."""
        if self.info.is_main:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"--out {str(self.dir)!r} cannot be created: {e.strerror or e}") from None
            atomic_write_text(self.dir / "config.json", json.dumps({**asdict(cfg), **extra}, indent=2, default=str))

    def truncate_after(self, step: int) -> None:
        """On resume: forget log lines of steps that will be redone."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.dir / name
            if not self.info.is_main or not path.is_file():
                continue
            keep = [line for line in path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", 0) <= step]
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    def append(self, name: str, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(self.dir / name, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")


class Timer:
    """Seconds between laps (the phases of a step)."""

    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def finish_run(log: RunLog, info: DistInfo, policy: torch.nn.Module, tokenizer_src: str | os.PathLike | None) -> Path:
    """Write RUN/final (Hugging Face layout + tokenizer) and the plots on rank 0; every rank waits for it."""
    full = full_model_for_saving(unwrap(policy))
    if info.is_main:
        save_final(full, log.dir, tokenizer_src)
        try:
            from r1kit.train.plots import plot_run

            plot_run(log.dir)
        except Exception as e:  # plots are a convenience; never fail a finished run over them
            print(f"r1kit: could not draw plots: {e}")
    barrier(info)
    return log.dir / "final"
