"""`r1kit train sft|grpo`: the command line of the trainers.

Every field of SFTConfig / GRPOConfig is also an option (`--max-steps 200`, `--loss-type dapo`, `--dynamic-sampling`
/ `--no-dynamic-sampling`), and `key=value` words work too; they override `--config FILE` (TOML/YAML/JSON), which
overrides the dataclass defaults. `--help` lists every option with its meaning, default and choices.
    r1kit train sft  --model M --data traces.jsonl --out runs/sft [--config recipes/x.toml] [--lr 1e-5 ...]
    r1kit train grpo --model M --task countdown --reward accuracy:1.0,format:0.2 --out runs/grpo [...]
    torchrun --nproc-per-node 2 -m r1kit train grpo ...     (same options, several processes)
"""
from __future__ import annotations

import argparse
import os

from r1kit.config import HelpFormatter, add_config_args, args_to_overrides, build_config, parse_overrides
from r1kit.train.config import GRPOConfig, SFTConfig


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout) or hub id")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, final model)")
    p.add_argument("--config", default=None, help="TOML/YAML/JSON file of config options")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="auto|CHECKPOINT",
                   help="continue from the newest complete checkpoint in --out (an error if there is none); "
                   "--resume auto: continue if there is one, else start fresh; --resume DIR: that checkpoint")
    p.add_argument("--task", action="append", default=[], help="task name (repeatable); see r1kit.tasks")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trainer", required=True)
    sft = sub.add_parser("sft", help="supervised fine-tuning on chat traces", formatter_class=HelpFormatter,
                         description="Supervised fine-tuning on chat traces (R1's cold start, distillation).")
    _common(sft)
    sft.add_argument("--data", action="append", default=[], help="JSONL of {messages} or {prompt, completion}")
    add_config_args(sft, SFTConfig)
    grpo = sub.add_parser("grpo", help="GRPO reinforcement learning on verifiable rewards",
                          formatter_class=HelpFormatter,
                          description="GRPO reinforcement learning on verifiable rewards (the R1-Zero recipe).")
    _common(grpo)
    grpo.add_argument("--reward", default=None, help="weighted rewards, e.g. accuracy:1.0,format:0.2,length:1.0 "
                      "(names in docs/rewards_and_tasks.md, or file.py:function; default: the task's own reward)")
    add_config_args(grpo, GRPOConfig)


def build(args: argparse.Namespace, cls):
    overrides = {**args_to_overrides(args, cls), **parse_overrides(list(args.overrides or []))}
    return build_config(cls, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    if args.trainer == "sft":
        from r1kit.train.sft import train_sft

        cfg = build(args, SFTConfig)
        final = train_sft(args.model, args.out, cfg, data=args.data, tasks=args.task, resume=args.resume or False)
    else:
        from r1kit.train.grpo import train_grpo

        cfg = build(args, GRPOConfig)
        final = train_grpo(args.model, args.out, cfg, tasks=args.task, reward=args.reward,
                           resume=args.resume or False)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}" if final is not None
              else f"stopped after step {cfg.stop_after}; continue with the same command plus --resume")
    from r1kit.train.distributed import DistInfo, shutdown

    shutdown(DistInfo(world_size=int(os.environ.get("WORLD_SIZE", "1"))))
    return 0
