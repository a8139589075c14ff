"""GRPO step time and SFT throughput: r1kit vs TRL's GRPOTrainer and a plain transformers training loop.

Same Hugging Face-layout checkpoint (a random r1kit preset, loadable by transformers), the same countdown prompts and
reward (r1kit.rewards accuracy + format), G=8 completions for 8 prompts per step, max_completion_length 128, one
policy update per batch (num_iterations 1), beta 0, temperature 1, no gradient checkpointing on either side
(TRL's default turns it on; --trl-gradient-checkpointing measures that): seconds per optimizer step, and the ratio.
Precision: --dtype float32 (default) on both sides, or --dtype bf16: bf16 autocast over fp32 weights on both sides
(TRL's default, bf16=True; r1kit's dtype=bf16 -- worth it on CPUs with AVX512-BF16/AMX).
The first step of each is a warm-up and is not counted.
Both use TRL's default loss (loss_type "dapo": token-level normalisation, eps 0.2). MoE balancing is off on
r1kit's side (aux_loss_alpha 0 in the checkpoint, router_bias_gamma 0): transformers' DeepSeek-V3, which TRL
trains, has neither the balance loss nor the router-bias update, so both optimise the same objective.
r1kit runs twice: training on every group, like TRL ("all groups": the same work), and with its default
skip_zero_advantage (no forward/backward for groups whose rewards are all equal: with beta 0 their policy gradient
is exactly zero). The skip run must reach the same parameters as the every-group run; the benchmark compares them
and says whether they agree up to fp32 rounding. What the skip saves depends on the workload, on how many groups are flat, which the
run prints. Both r1kit runs are repeated after TRL's and the ratios use the times of both (a shared VM drifts over
minutes).
SFT: tokens/s of `r1kit train sft` (run before and after the other, both counted) vs a plain transformers loop
(AutoModelForCausalLM, AdamW, labels masked to the completion) over the same packed rows.

TRL is NOT an r1kit dependency. Install it for this benchmark only, e.g. in a side environment:
    python3 -m venv --system-site-packages /tmp/trlenv && /tmp/trlenv/bin/pip install trl
    /tmp/trlenv/bin/python bench/grpo_step.py [--model-type qwen2] [--preset small] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TASK = "countdown?numbers=3&n=200&seed=0"
REWARD = "accuracy:1.0,format:0.2"


def make_checkpoint(model_type: str, preset: str, root: Path) -> str:
    from r1kit.models.random_checkpoint import create_random_checkpoint

    out = root / f"{model_type}-{preset}"
    create_random_checkpoint(out, model_type=model_type, preset=preset, seed=0)
    config = json.loads((out / "config.json").read_text())
    if "aux_loss_alpha" in config:  # transformers ignores it; r1kit would add the balance loss
        (out / "config.json").write_text(json.dumps({**config, "aux_loss_alpha": 0.0}, indent=2))
    return str(out)


def max_param_difference(model: str, run_a: Path, run_b: Path) -> tuple[float, float]:
    """(largest |a - b| over the final parameters of two runs, largest |a - initial|: how far training moved them)."""
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "final" / "model.safetensors")) for r in (run_a, run_b))
    base = load_file(str(Path(model) / "model.safetensors"))
    return (max(float((a[k] - b[k]).abs().max()) for k in a), max(float((a[k] - base[k]).abs().max()) for k in a))


def bench_r1kit_grpo(model: str, steps: int, root: Path, g: int, prompts: int, max_len: int,
                     dtype: str = "float32", skip_zero_advantage: bool = False,
                     tag: str = "") -> tuple[list[float], Path]:
    from r1kit.train.config import GRPOConfig
    from r1kit.train.grpo import train_grpo

    cfg = GRPOConfig(num_generations=g, prompts_per_step=prompts, max_completion_length=max_len, max_steps=steps + 1,
                     micro_batch_size=16, beta=0.0, num_iterations=1, temperature=1.0, lr=1e-6, sample_every=0,
                     max_prompt_length=256, dtype=dtype, skip_zero_advantage=skip_zero_advantage,
                     router_bias_gamma=0.0, loss_type="dapo")  # TRL's default loss
    out = root / f"r1kit-grpo-skip{int(skip_zero_advantage)}{tag}"
    train_grpo(model, str(out), cfg, tasks=[TASK], reward=REWARD)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    flat, trained = ([round(r[key], 2) for r in rows[1:]] for key in ("frac_reward_zero_std", "trained_frac"))
    print(f"  r1kit: completion length mean {rows[-1]['completion_length']:.0f}, "
          f"rollout {statistics.mean(r['rollout_time'] for r in rows[1:]):.2f}s, "
          f"train {statistics.mean(r['train_time'] for r in rows[1:]):.2f}s per step, flat groups {flat}, "
          f"trained {trained}", flush=True)
    return [r["step_time"] for r in rows[1:]], out


def bench_trl_grpo(model: str, steps: int, root: Path, g: int, prompts: int, max_len: int,
                   gradient_checkpointing: bool = False, dtype: str = "float32") -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.tasks import load_task
    from r1kit.train.task_data import examples_and_rewards

    task = load_task(TASK)
    examples, rewards = examples_and_rewards([TASK], REWARD)
    data = Dataset.from_list([{"prompt": ex["messages"], "idx": i} for i, ex in enumerate(task.examples)])

    def reward_fn(prompts, completions, idx, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [rewards(t, examples[i]) for t, i in zip(texts, idx)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    args = GRPOConfig(output_dir=str(root / "trl"), num_generations=g, per_device_train_batch_size=g * prompts,
                      gradient_accumulation_steps=1, max_completion_length=max_len, num_iterations=1, beta=0.0,
                      temperature=1.0, learning_rate=1e-6, max_steps=steps + 1, logging_steps=1, save_strategy="no",
                      report_to=[], use_cpu=True, bf16=dtype == "bf16", seed=0, use_vllm=False,
                      dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=gradient_checkpointing)
    tok = AutoTokenizer.from_pretrained(model)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                          reward_funcs=reward_fn, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    return times[1:]


def sft_rows(model: str, n: int, seq_len: int):
    from r1kit.tokenizer import load_tokenizer
    from r1kit.train.sft_data import pack
    from r1kit.train.task_data import cold_start_examples

    tok = load_tokenizer(model)
    return pack(cold_start_examples(tok, [TASK], n), seq_len, 0), tok


def bench_r1kit_sft(model: str, root: Path, steps: int, batch: int, seq_len: int, dtype: str = "float32",
                    tag: str = "") -> float:
    from r1kit.train.config import SFTConfig
    from r1kit.train.sft import train_sft

    out = root / f"r1kit-sft{tag}"
    cfg = SFTConfig(max_steps=steps + 1, batch_size=batch, max_seq_len=seq_len, num_examples=200, lr=1e-4,
                    dtype=dtype, router_bias_gamma=0.0)  # the transformers loop has no router-bias update
    train_sft(model, str(out), cfg, tasks=[TASK])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")][1:]
    return sum(r["tokens_per_s"] * r["step_time"] for r in rows) / sum(r["step_time"] for r in rows)


def bench_hf_sft(model: str, steps: int, batch: int, seq_len: int, dtype: str = "float32") -> float:
    from transformers import AutoModelForCausalLM

    from r1kit.train.sft_data import collate

    rows, tok = sft_rows(model, 200, seq_len)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    tokens, elapsed = 0, 0.0
    for step in range(steps + 1):
        idx = [(step * batch + i) % len(rows) for i in range(batch)]
        inp, tgt, msk, _ = collate([rows[i] for i in idx], tok.pad_token_id)
        labels = torch.cat([inp[:, :1], tgt], 1).masked_fill(torch.cat([torch.zeros_like(msk[:, :1]), msk], 1) == 0, -100)
        ids = torch.cat([inp, tgt[:, -1:]], 1)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = m(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step:
            elapsed += time.perf_counter() - t
            tokens += int((ids != tok.pad_token_id).sum())
    return tokens / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-type", default="qwen2")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-sft", action="store_true")
    p.add_argument("--skip-grpo", action="store_true")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="run TRL with its default gradient checkpointing (recomputes the forward: slower); by default "
                        "it is off, like r1kit, so both do the same work")
    p.add_argument("--dtype", choices=["float32", "bf16"], default="float32",
                   help="bf16: autocast over fp32 weights on both sides (TRL's default bf16=True)")
    a = p.parse_args()
    torch.manual_seed(0)
    g, prompts, max_len = 8, 8, 128
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_checkpoint(a.model_type, a.preset, root)
        print(f"model {a.model_type}-{a.preset}, torch threads {torch.get_num_threads()}, "
              f"G={g}, prompts/step={prompts}, max_completion_length={max_len}, {a.dtype}", flush=True)
        ours, runs = {}, {}
        if not a.skip_grpo:
            for skip, name in ((False, "all groups"), (True, "skip_zero_advantage")):
                ours[name], runs[name] = bench_r1kit_grpo(model, a.steps, root, g, prompts, max_len, a.dtype, skip)
                print(f"r1kit GRPO ({name}): {statistics.median(ours[name]):.2f} s/step  "
                      f"{[round(x, 2) for x in ours[name]]}", flush=True)
            diff, moved = max_param_difference(model, runs["all groups"], runs["skip_zero_advantage"])
            verdict = "the same up to fp32 rounding" if diff <= 1e-6 else "DIFFERENT: the skip changed the result"
            print(f"  final parameters, skip_zero_advantage vs all groups: largest difference {diff:.1e} "
                  f"(training moved them by up to {moved:.1e}): {verdict}", flush=True)
        if not a.skip_trl and not a.skip_grpo:
            theirs = bench_trl_grpo(model, a.steps, root, g, prompts, max_len, a.trl_gradient_checkpointing, a.dtype)
            print(f"TRL GRPOTrainer (gradient_checkpointing={a.trl_gradient_checkpointing}): "
                  f"{statistics.median(theirs):.2f} s/step  {[round(x, 2) for x in theirs]}")
            # this machine's speed drifts by 10-30% over minutes: r1kit's runs are repeated after TRL's and both
            # count, so a drift during the benchmark does not favour either side
            for skip, name in ((False, "all groups"), (True, "skip_zero_advantage")):
                again, _ = bench_r1kit_grpo(model, a.steps, root, g, prompts, max_len, a.dtype, skip, "-after-trl")
                print(f"r1kit GRPO ({name}, again after TRL): {statistics.median(again):.2f} s/step  "
                      f"{[round(x, 2) for x in again]}", flush=True)
                ours[name] += again
            for name, times in ours.items():
                note = ("the same work as TRL" if name == "all groups"
                        else "the same parameters, less work: depends on the share of flat groups")
                print(f"GRPO speed-up r1kit ({name}) vs TRL: "
                      f"{statistics.median(theirs) / statistics.median(times):.1f}x ({note})", flush=True)
        if not a.skip_sft:
            before = bench_r1kit_sft(model, root, 10, 8, 512, a.dtype)
            hf_sft = bench_hf_sft(model, 10, 8, 512, a.dtype)
            after = bench_r1kit_sft(model, root, 10, 8, 512, a.dtype, "-after-hf")  # drift favours neither
            ours_sft = (before + after) / 2
            print(f"SFT tokens/s: r1kit {ours_sft:.0f} ({before:.0f} before, {after:.0f} after), plain transformers "
                  f"loop {hf_sft:.0f}, ratio {ours_sft / hf_sft:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
