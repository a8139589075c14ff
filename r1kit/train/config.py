"""The trainers' options: one small dataclass per trainer, filled by `r1kit.config.build_config`.

Defaults here, then a TOML/YAML config file, then `--key value` overrides on the command line. The resolved config is
saved as `config.json` in the run directory so that every run records exactly what it did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1kit.device import DTYPE_NAMES


@dataclass
class TrainConfig:
    """Options shared by SFT and GRPO: optimisation, schedule, checkpoints, logging, hardware."""
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1            # cosine decays to lr * min_lr_ratio at max_steps
    max_grad_norm: float = 1.0           # <= 0 disables clipping
    grad_accum_steps: int = 1            # micro-batches per optimizer step
    max_steps: int = 100                 # optimizer steps
    seed: int = 0
    save_every: int = 0                  # checkpoint every N steps (0: only at the end)
    keep_last: int = 2                   # checkpoints kept in the run directory
    log_every: int = 1
    dtype: str = "auto"                  # autocast: auto = bf16 on CUDA, fp32 on CPU (bf16 pays off on AVX512-BF16/AMX)
    device: str = "auto"
    fsdp: bool = False                   # shard with FSDP2 fully_shard instead of DDP (multi-process only)
    router_bias_gamma: float = 0.001     # deepseek_v3 aux-loss-free bias update speed (0 disables)
    stop_after: int = 0                  # checkpoint and exit after this step (time-sliced jobs; then --resume)

    def __post_init__(self):
        _check(self.lr > 0, "lr must be > 0")
        _check(self.max_steps >= 1, "max_steps must be >= 1")
        _check(self.grad_accum_steps >= 1, "grad_accum_steps must be >= 1")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _check(self.keep_last >= 1, "keep_last must be >= 1")
        _check(self.save_every >= 0, "save_every must be >= 0")
        _check(self.log_every >= 1, "log_every must be >= 1")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        _check(self.router_bias_gamma >= 0, "router_bias_gamma must be >= 0")
        _check(str(self.dtype).lower() in DTYPE_NAMES,
               f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {self.dtype!r}")


@dataclass
class SFTConfig(TrainConfig):
    lr: float = 2e-5
    batch_size: int = 8                  # sequences (or packed rows) per micro-batch
    max_seq_len: int = 1024              # longer examples are truncated
    packing: bool = True                 # concatenate examples into rows of max_seq_len (else length-bucketed)
    num_examples: int = 1000             # with --task: how many cold-start traces to generate
    epochs: int = 0                      # > 0: max_steps is derived from the data size

    def __post_init__(self):
        super().__post_init__()
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.max_seq_len >= 8, "max_seq_len must be >= 8")


@dataclass
class GRPOConfig(TrainConfig):
    lr: float = 1e-6
    num_generations: int = 8             # G: completions per prompt
    prompts_per_step: int = 8            # groups per optimizer step (global, over all ranks)
    micro_batch_size: int = 16           # completions per forward/backward
    max_prompt_length: int = 512
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2                # DAPO clip-higher: 0.28
    beta: float = 0.0                    # k3 KL coefficient; > 0 loads a frozen reference model
    ref_refresh_steps: int = 0           # copy the policy into the reference every N steps (0: never)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = 1              # policy updates per rollout batch (ratios vs rollout-time logprobs)
    dynamic_sampling: bool = False       # drop groups with equal rewards and sample more prompts
    max_dynamic_draws: int = 4
    mask_truncated_completions: bool = False   # truncated completions get no loss
    skip_zero_advantage: bool = True     # no forward/backward for groups of equal rewards (zero policy gradient
                                         # when beta = 0; grpo._micro_batches says what it changes for MoE)
    overlong_buffer: int = 0             # the `length` reward (soft overlong penalty) ramps over the last N tokens
                                         # before max_completion_length (0: the last quarter)
    sample_every: int = 10               # write sample completions to samples.jsonl every N steps (0: never)
    num_samples_logged: int = 2
    kv_cache_memory_gb: float = 0.0      # engine KV budget (0: the engine's default)

    def __post_init__(self):
        super().__post_init__()
        _check(self.num_generations >= 2, "num_generations must be >= 2 (advantages compare completions of a group)")
        _check(self.prompts_per_step >= 1, "prompts_per_step must be >= 1")
        _check(self.micro_batch_size >= 1, "micro_batch_size must be >= 1")
        _check(self.max_completion_length >= 1, "max_completion_length must be >= 1")
        _check(self.temperature > 0, "temperature must be > 0")
        _check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(0 <= self.eps_low < 1 and self.eps_high >= 0, "eps_low must be in [0, 1) and eps_high >= 0")
        _check(self.beta >= 0, "beta must be >= 0")
        _check(self.num_iterations >= 1, "num_iterations must be >= 1")
        _check(self.grad_accum_steps == 1, "GRPO takes one optimizer step per rollout batch; set micro_batch_size "
               "(completions per forward/backward) instead of grad_accum_steps")
        _check(0 <= self.overlong_buffer < self.max_completion_length,
               "overlong_buffer must be in [0, max_completion_length)")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
