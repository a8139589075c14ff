"""What both trainers share about a run: its directory, logs, model loading, precision and the step loop plumbing.

RUN/config.json      the resolved config (+ the command's model/data/reward choices)
RUN/metrics.jsonl    one JSON line per step (appended; on --resume lines after the checkpoint's step are dropped)
RUN/samples.jsonl    sample completions (GRPO)
RUN/checkpoints/     see checkpointing.py
RUN/final/           the trained model in Hugging Face layout with its tokenizer files
Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from r1kit.config import atomic_write_text
from r1kit.device import cpu_has_native_bf16, resolve_dtype
from r1kit.train.checkpointing import clean_partial, copy_tokenizer_files, latest_checkpoint
from r1kit.train.distributed import DistInfo, all_reduce_sum


class RunLog:
    def __init__(self, out_dir: str | os.PathLike, info: DistInfo):
        self.dir = Path(out_dir)
        self.info = info
        if info.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            clean_partial(self.dir)

    def save_config(self, cfg: Any, extra: dict[str, Any]) -> None:
        if self.info.is_main:
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


def find_resume_checkpoint(out_dir: str | os.PathLike, resume: bool | str) -> Path | None:
    """--resume (the run's newest complete checkpoint) or --resume PATH (a checkpoint directory)."""
    if not resume:
        return None
    if isinstance(resume, str) and resume not in ("true", "latest", "1"):
        path = Path(resume)
        if not (path / "trainer_state.pt").is_file():
            from r1kit.errors import UserError

            raise UserError(f"--resume {resume!r} is not a complete checkpoint directory")
        return path
    return latest_checkpoint(out_dir)


def load_policy(model_path: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    """The trainable model: always float32 master weights (bf16 compute comes from autocast_context)."""
    from r1kit.models.checkpoint import load_model

    model = load_model(str(model_path), dtype=torch.float32, device=device)
    model.train()
    return model


def autocast_context(device: torch.device, dtype: str):
    """Mixed precision of the training forward: autocast over float32 master weights (optimizer state stays fp32).

    "auto" is bf16 on CUDA and fp32 on CPU. On CPU, bf16 must be asked for (dtype=bf16): it pays off on CPUs that
    multiply bf16 natively (AVX512-BF16 or AMX: 2.6x the fp32 GEMM rate on a Zen 4 EPYC, docs/benchmarks.md) and
    is emulated, i.e. slower than fp32, elsewhere (a warning says so). fp16 autocast is CUDA-only.
    """
    dt = resolve_dtype(dtype, device)
    if dt == torch.float32:
        return contextlib.nullcontext()
    if device.type == "cpu":
        if dt != torch.bfloat16:
            from r1kit.errors import UserError

            raise UserError(f"dtype={dtype} on CPU: fp16 autocast is CUDA-only; use dtype=bf16 or float32")
        _warn_if_emulated_bf16()
    return torch.autocast(device.type, dtype=dt)


@functools.cache
def _warn_if_emulated_bf16() -> None:
    if not cpu_has_native_bf16():
        warnings.warn("dtype=bf16 on a CPU without native bf16 matmuls (AVX512-BF16 / AMX): training will likely be "
                      "slower than with float32", stacklevel=3)


def save_final(model: torch.nn.Module, out_dir: Path, tokenizer_src: str | os.PathLike | None) -> Path:
    from r1kit.models.checkpoint import save_model

    final = out_dir / "final"
    tmp = out_dir / ".tmp-final"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    copy_tokenizer_files(tokenizer_src, tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def grad_norm_and_clip(params, max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def router_bias_update(model: torch.nn.Module, gamma: float, info: DistInfo | None = None) -> None:
    """Aux-loss-free MoE balancing (deepseek_v3): nudge each router's expert bias toward equal load.

    Models without MoE routers have nothing to update; the models package owns the rule itself. Under torchrun the
    expert loads are summed over ranks first, so every rank applies the same update from the global batch's load
    (the bias is a buffer: FSDP never synchronises it, and DDP would only broadcast rank 0's local update)."""
    if gamma <= 0:
        return
    fn = getattr(model, "update_router_bias", None)
    if fn is None:
        return
    if info is not None and info.enabled and hasattr(model, "moe_layers"):
        layers = [m for m in model.moe_layers() if m.load is not None]
        if layers:
            total = all_reduce_sum(torch.stack([m.load for m in layers]), info)  # [layers, E] over all ranks
            for m, load in zip(layers, total):
                m.load = load.to(m.load)
    fn(gamma)


def aux_loss(model: torch.nn.Module) -> torch.Tensor | float:
    """The MoE sequence-wise balance loss of the last training forward (deepseek_v3), 0 for dense models."""
    fn = getattr(model, "aux_loss", None)
    return fn() if fn is not None else 0.0


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def checkpoint_due(cfg: Any, step: int) -> tuple[bool, bool]:
    """(save, stop) after `step` steps: periodic saves every `save_every`, and `stop_after` (save, then exit).
    The last step is never counted here: finish_run's caller saves it."""
    stop = bool(cfg.stop_after) and step == cfg.stop_after and step < cfg.max_steps
    save = stop or (bool(cfg.save_every) and step % cfg.save_every == 0 and step < cfg.max_steps)
    return save, stop


def finish_run(log: RunLog, info: DistInfo, policy: torch.nn.Module, tokenizer_src: str | os.PathLike | None) -> Path:
    """Write RUN/final (Hugging Face layout + tokenizer) and the plots on rank 0; every rank waits for it."""
    from r1kit.train.distributed import barrier, full_model_for_saving, unwrap

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


def prepare_training(model_src: str | os.PathLike, ckpt: Path | None, info: DistInfo, cfg: Any):
    """The policy (from `ckpt` when resuming), its DDP/FSDP wrapper, optimizer and scheduler, with their state
    restored from `ckpt`. Returns (policy, train_model, optimizer, scheduler, trainer_state or None)."""
    from r1kit.train.checkpointing import load_trainer_state
    from r1kit.train.distributed import load_optimizer_state, wrap_model
    from r1kit.train.optim import build_optimizer

    policy = load_policy(ckpt / "model" if ckpt else model_src, info.device)
    train_model = wrap_model(policy, info, cfg.fsdp)      # before the optimizer: FSDP2 replaces the parameters
    optimizer, scheduler = build_optimizer(policy, cfg)
    state = None
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        if state["optimizer"] is not None:        # (None: an FSDP checkpoint of older r1kit, weights only)
            load_optimizer_state(policy, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return policy, train_model, optimizer, scheduler, state
