"""The trainers' options: one small dataclass per trainer, filled by `r1kit.config.build_config`.

Defaults here, then a TOML/YAML config file, then `--key value` overrides on the command line. Each field's help text
(`option(default, help)`) is what `r1kit train sft|grpo --help` prints. The resolved config is saved as
`config.json` in the run directory so that every run records exactly what it did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1kit.config import option
from r1kit.device import DTYPE_NAMES


@dataclass
class TrainConfig:
    """Options shared by sft and grpo

    Optimisation, schedule, checkpoints, logging, hardware."""
    lr: float = option(1e-5, "peak learning rate of AdamW")
    weight_decay: float = option(0.0, "AdamW weight decay (not applied to norms and biases)")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.99, "AdamW beta2")
    warmup_steps: int = option(0, "optimizer steps of linear learning-rate warmup from 0")
    lr_schedule: Literal["cosine", "constant"] = option("cosine", "after warmup: cosine decay to lr * min_lr_ratio "
                                                                 "at max_steps, or constant")
    min_lr_ratio: float = option(0.1, "the cosine schedule's final learning rate, as a fraction of lr")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this (<= 0: no clipping)")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step (SFT; GRPO sets micro_batch_size instead)")
    max_steps: int = option(100, "optimizer steps of the run")
    seed: int = option(0, "seed of the data order and the rollout sampling (and of torch's RNG)")
    save_every: int = option(0, "write a checkpoint every N steps (0: only the final model)")
    keep_last: int = option(2, "checkpoints kept in the run directory (older ones are deleted)")
    log_every: int = option(1, "print a progress line every N steps (metrics.jsonl gets every step)")
    dtype: str = option("auto", "training precision: bf16 autocast over fp32 master weights, or fp32; auto = bf16 "
                                "on CUDA, fp32 on CPU (bf16 pays off only on CPUs with AVX512-BF16/AMX)",
                        choices=DTYPE_NAMES)
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when available)")
    fsdp: bool = option(False, "shard parameters and optimizer state with FSDP2 instead of replicating them with "
                               "DDP (under torchrun)")
    router_bias_gamma: float = option(0.001, "speed of DeepSeek-V3's aux-loss-free router-bias update after each "
                                             "step (0: off; dense models ignore it)")
    stop_after: int = option(0, "checkpoint and exit after this step, for time-sliced jobs; continue with --resume "
                                "(0: run to max_steps)")

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
    """SFT options"""
    lr: float = option(2e-5, "peak learning rate of AdamW")
    batch_size: int = option(8, "sequences (or packed rows) per micro-batch")
    max_seq_len: int = option(1024, "tokens per packed row; longer examples are truncated")
    packing: bool = option(True, "concatenate examples into rows of max_seq_len (else length-bucketed, padded)")
    num_examples: int = option(1000, "with --task: how many examples to make from the tasks, spread over them "
                                     "(0: every example of each task, its spec's n)")
    task_target: Literal["reasoning", "direct", "text"] = option(
        "reasoning", "with --task, what the model learns to write: the reference reasoning then the answer (cold "
        "start), the answer alone after an empty thinking block (a direct-answer baseline), or plain question + "
        "answer text with loss on every token (base training)")
    epochs: int = option(0, "> 0: derive max_steps from the data size for this many passes")

    def __post_init__(self):
        super().__post_init__()
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.max_seq_len >= 8, "max_seq_len must be >= 8")
        _check(self.num_examples >= 0, "num_examples must be >= 0 (0: every example of each task)")


@dataclass
class GRPOConfig(TrainConfig):
    """GRPO options

    The losses and advantages they choose between: docs/architecture.md."""
    lr: float = option(1e-6, "peak learning rate of AdamW")
    num_generations: int = option(8, "G: completions sampled per prompt (a group)")
    prompts_per_step: int = option(8, "groups per optimizer step, over all processes")
    micro_batch_size: int = option(16, "completions per forward/backward")
    max_prompt_length: int = option(512, "prompt tokens kept (longer prompts lose their start)")
    max_completion_length: int = option(256, "new tokens per completion; longer ones are cut and count as truncated")
    temperature: float = option(1.0, "rollout sampling temperature (also divides the logits of the loss)")
    top_p: float = option(1.0, "rollout nucleus sampling mass, in (0, 1]")
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = option(
        "grpo", "how token losses are averaged: grpo over each completion's tokens, then over completions; dapo "
                "over all tokens of the batch; dr_grpo: summed, divided by completions x max_completion_length")
    eps_low: float = option(0.2, "PPO clip range below 1 of the importance ratio")
    eps_high: float = option(0.2, "clip range above 1 (DAPO's clip-higher: 0.28)")
    beta: float = option(0.0, "coefficient of the k3 KL to a frozen reference model (> 0 loads that model)")
    ref_refresh_steps: int = option(0, "copy the policy into the reference every N steps (0: never)")
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "divide advantages by the reward std of the group, of the batch, or not at all (Dr. GRPO)")
    num_iterations: int = option(1, "policy updates per rollout batch (> 1: importance ratios against the "
                                    "rollout-time logprobs)")
    dynamic_sampling: bool = option(False, "drop groups whose rewards are all equal and draw more prompts (DAPO)")
    max_dynamic_draws: int = option(4, "with dynamic_sampling: most extra rounds of prompts per step")
    mask_truncated_completions: bool = option(False, "truncated completions get no loss (DAPO's overlong filtering)")
    skip_zero_advantage: bool = option(True, "skip the forward/backward of groups whose rewards are all equal: zero "
                                             "policy gradient when beta = 0 (MoE balancing then covers the trained "
                                             "groups only)")
    overlong_buffer: int = option(0, "the `length` reward (DAPO's soft overlong penalty; weight it in --reward) ramps "
                                     "over the last N tokens before max_completion_length (0: the last quarter)")
    sample_every: int = option(10, "write sample completions to samples.jsonl every N steps (0: never)")
    num_samples_logged: int = option(2, "completions written each time")
    kv_cache_memory_gb: float = option(0.0, "rollout engine's KV cache budget in GiB (0: one step's rollouts at "
                                            "full length)")

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
