"""What a person reads: the printed table, report.md with its plots, and side-by-side comparisons of runs.

Plots use matplotlib's Agg backend (no display): pass_at_k.png (pass@k and maj@k against k, per task) and
accuracy_by_length.png (accuracy in buckets of reasoning length: does the model overthink?). `compare_runs` puts
several run directories side by side (e.g. thinking vs --no-thinking, two checkpoints) in a table,
compare.md, compare_pass_at_1.png and compare_pass_at_k.png.
"""
from __future__ import annotations

import json
from pathlib import Path

from r1kit.config import atomic_write_text
from r1kit.errors import UserError

_COLUMNS = [  # header, getter, format
    ("pass@1", lambda t: t["pass@1"], "{:.3f}"),
    ("pass@n", lambda t: t["pass@k"][str(t["n"])], "{:.3f}"),
    ("maj@n", lambda t: t[f"maj@{t['n']}"], "{:.3f}"),
    ("fmt err", lambda t: t["format_error_rate"], "{:.3f}"),
    ("think tok", lambda t: t["reasoning_tokens"]["mean"], "{:.0f}"),
    ("answer tok", lambda t: t["answer_tokens"]["mean"], "{:.0f}"),
    ("p50 s", lambda t: t["latency_s"]["median"], "{:.2f}"),
    ("tok/s", lambda t: t["output_tokens_per_s"], "{:.1f}"),
]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def text_table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: ("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
                          if markdown else "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
    sep = ("|" + "|".join("-" * (w + 2) for w in widths) + "|") if markdown else "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(results: dict, markdown: bool = False) -> str:
    """One row per task: n, problems and the headline numbers."""
    header = ["task", "n", "problems", *(c[0] for c in _COLUMNS)]
    rows = [[name, str(t["n"]), str(t["num_problems"]), *(_fmt(get(t), spec) for _, get, spec in _COLUMNS)]
            for name, t in results["tasks"].items()]
    return text_table(header, rows, markdown)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pass_at_k(series: dict[str, dict], out: Path, title: str) -> Path:
    """series: label -> a task's metrics (pass@k and maj@k dicts); solid pass@k, dashed maj@k, k on a log2 axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, t) in enumerate(series.items()):
        color = f"C{i % 10}"
        ks = [int(k) for k in t["pass@k"]]
        ax.plot(ks, [t["pass@k"][str(k)] for k in ks], "o-", color=color, label=f"{label} pass@k")
        ax.plot(ks, [t["maj@k"][str(k)] for k in ks], "s--", color=color, label=f"{label} maj@k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_accuracy_by_length(results: dict, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, t in results["tasks"].items():
        b = t.get("accuracy_by_reasoning_length") or []
        if b:
            ax.plot([(x["lo"] + x["hi"]) / 2 for x in b], [x["accuracy"] for x in b], "o-", label=name)
    ax.set_xlabel("reasoning tokens (bucket middle; buckets hold equal numbers of samples)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("accuracy against reasoning length")
    ax.grid(alpha=0.3)
    if any(t.get("accuracy_by_reasoning_length") for t in results["tasks"].values()):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(out: Path, results: dict, records: list[dict] | None = None) -> Path:
    """report.md (settings, the table, pass@k / maj@k per k, accuracy by reasoning length) and its two plots."""
    out = Path(out)
    plot_pass_at_k(results["tasks"], out / "pass_at_k.png", "pass@k (solid) and maj@k (dashed)")
    plot_accuracy_by_length(results, out / "accuracy_by_length.png")
    s, m = results["settings"], results["model"]
    lines = [f"# Evaluation of {m['name']}", "",
             f"{results['created']}, r1kit {results['r1kit_version']}, backend {m['backend']}"
             + (f" ({m['base_url']})" if m.get("base_url") else "")
             + (f", config {m['config_hash'][:19]}" if m.get("config_hash") else ""), "",
             f"n = {s['n']}, temperature {s['temperature']}, top_p {s['top_p']}, max_tokens {s['max_tokens']}, "
             f"thinking {'on' if s['thinking'] else 'off'}"
             + (f", thinking budget {s['max_thinking_tokens']}" if s.get("max_thinking_tokens") is not None else "")
             + f", seed {s['seed']}", "", results_table(results, markdown=True), "",
             "pass@1: mean accuracy over the n samples; pass@n: unbiased pass@k at k = n; maj@n: majority vote over "
             "the extracted answers; fmt err: no closed thinking block or no extractable answer; tokens are means, "
             "latency is the median seconds per request.", "", "## pass@k and maj@k", "",
             "![pass@k and maj@k](pass_at_k.png)", ""]
    for name, t in results["tasks"].items():
        ks = list(t["pass@k"])
        lines += [f"**{name}**", "", text_table(["k", *ks], [["pass@k", *(f"{t['pass@k'][k]:.3f}" for k in ks)],
                                                         ["maj@k", *(f"{t['maj@k'][k]:.3f}" for k in ks)]], True), ""]
    lines += ["## Accuracy against reasoning length", "", "![accuracy by reasoning length](accuracy_by_length.png)",
              ""]
    for name, t in results["tasks"].items():
        rows = [[f"{b['lo']}-{b['hi']}", str(b["count"]), f"{b['accuracy']:.3f}"]
                for b in t.get("accuracy_by_reasoning_length") or []]
        if rows:
            lines += [f"**{name}**", "", text_table(["reasoning tokens", "samples", "accuracy"], rows, True), ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist: give directories written by `r1kit eval --out DIR`")
    return json.loads(path.read_text())


def compare_runs(run_dirs: list[str], out: str | Path | None = None) -> str:
    """A table of every task of every run (rows grouped by task); with `out`, also compare.md and plots there."""
    if len(run_dirs) < 1:
        raise UserError("--compare needs at least one run directory")
    runs: dict[str, dict] = {}
    for d in run_dirs:
        label = Path(d).name or str(d)
        while label in runs:
            label += "'"
        runs[label] = load_results(d)
    tasks = list(dict.fromkeys(name for r in runs.values() for name in r["tasks"]))
    header = ["task", "run", "n", "thinking", *(c[0] for c in _COLUMNS)]
    rows = []
    for name in tasks:
        for label, r in runs.items():
            t = r["tasks"].get(name)
            if t is not None:
                rows.append([name, label, str(t["n"]), "on" if r["settings"].get("thinking", True) else "off",
                             *(_fmt(get(t), spec) for _, get, spec in _COLUMNS)])
    text = text_table(header, rows)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _plot_compare_bars(runs, tasks, out / "compare_pass_at_1.png")
        for i, name in enumerate(tasks):
            series = {label: r["tasks"][name] for label, r in runs.items() if name in r["tasks"]}
            plot_pass_at_k(series, out / (f"compare_pass_at_k_{i}.png" if len(tasks) > 1 else "compare_pass_at_k.png"),
                           name)
        atomic_write_text(out / "compare.md", "# Comparison\n\n" + "\n".join(f"- {label}: {d}" for label, d in
                                                                            zip(runs, run_dirs))
                          + "\n\n" + text_table(header, rows, markdown=True) + "\n\n![pass@1](compare_pass_at_1.png)\n")
    return text


def _plot_compare_bars(runs: dict[str, dict], tasks: list[str], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(runs)) ** 0.5), 4))
    width = 0.8 / max(1, len(runs))
    for i, (label, r) in enumerate(runs.items()):
        xs = [j + i * width for j, name in enumerate(tasks) if name in r["tasks"]]
        ys = [r["tasks"][name]["pass@1"] for name in tasks if name in r["tasks"]]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))])
    ax.set_xticklabels([t if len(t) <= 30 else t[:13] + "..." + t[-14:] for t in tasks], fontsize=7)
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, 1.02)
    ax.set_title("pass@1 by run")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
