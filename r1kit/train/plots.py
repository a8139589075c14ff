"""`r1kit plot RUN_DIR`: PNG plots of a training run's metrics.jsonl (also drawn when a run finishes).

GRPO runs get reward.png (mean reward, accuracy, each reward's mean) and length.png (completion length mean/min/max);
SFT runs get loss.png. Uses matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from r1kit.errors import UserError


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist: give the directory of a training run (--out)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _figure(rows: list[dict], keys: list[str], title: str, ylabel: str, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{run_dir}/metrics.jsonl has no steps yet")
    reward_keys = ["reward", "accuracy"] + sorted({k for r in rows for k in r
                                                   if k.startswith("rewards/") and k != "rewards/accuracy"})
    made = [
        _figure(rows, reward_keys, "reward", "reward", run_dir / "reward.png"),
        _figure(rows, ["completion_length", "completion_length_min", "completion_length_max"], "response length",
                "tokens", run_dir / "length.png"),
        _figure(rows, ["loss"], "loss", "loss", run_dir / "loss.png") if "reward" not in rows[0] else None,
    ]
    return [p for p in made if p is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    for p in plot_run(args.run_dir):
        print(p)
    return 0
