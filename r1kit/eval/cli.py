"""`r1kit eval`: pass@k, maj@k and the cost of thinking, on the local engine or any OpenAI-compatible server.

    r1kit eval --model runs/grpo/final --task 'arithmetic?digits=4&n=100&split=test' -n 8 --out runs/eval/grpo
    r1kit eval --base-url http://127.0.0.1:8000/v1 --task countdown?numbers=4 --no-thinking
    r1kit eval --compare runs/eval/think runs/eval/nothink --out runs/eval/compare

Every option is a field of r1kit.eval.config.EvalConfig (also settable in a --config TOML/YAML file); the help
texts below are theirs. Rerunning an interrupted command resumes it from DIR/samples.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from r1kit.config import field_help
from r1kit.eval.config import EvalConfig

# flag -> (field, extra argparse keywords). Flags not listed are --field-name.
_SPECIAL = {"tasks": ("--task", {"action": "append", "metavar": "SPEC"}),
            "stop": ("--stop", {"action": "append", "metavar": "TEXT"}),
            "thinking": ("--thinking", {"action": argparse.BooleanOptionalAction})}


def unescape(s: str) -> str:
    """'\\n' -> newline, '\\t' -> tab, '\\\\' -> backslash: stop strings typed in a shell."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def add_generation_arguments(parser: argparse.ArgumentParser, cls, rename: dict[str, list[str]] | None = None,
                             skip: tuple[str, ...] = ()) -> None:
    """One option per field of `cls` (an EvalConfig or DistillConfig), help text from the field's metadata."""
    rename = rename or {}
    groups = {"source": parser.add_argument_group("model (give one of the two)"),
              "sampling": parser.add_argument_group("tasks and sampling"),
              "run": parser.add_argument_group("run"),
              "engine": parser.add_argument_group("local engine (--model)")}
    where = {"model": "source", "base_url": "source", "api_key": "source", "served_model": "source",
             "dtype": "engine", "device": "engine", "max_model_len": "engine", "out": "run", "concurrency": "run",
             "max_retries": "run", "request_timeout": "run", "seed": "run", "keep": "sampling"}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, extra = _SPECIAL.get(f.name, ("--" + f.name.replace("_", "-"), {}))
        flags = rename.get(f.name, [flag])
        kwargs = {"dest": f.name, "default": None, "help": field_help(cls, f.name), **extra}
        if "metavar" not in extra and "action" not in extra:
            kwargs["metavar"] = f.name.upper()
            if typing.get_origin(hints[f.name]) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(hints[f.name]))
                kwargs["metavar"] = "{" + ",".join(kwargs["choices"]) + "}"
        groups[where.get(f.name, "sampling")].add_argument(*flags, **kwargs)
    parser.add_argument("--config", default=None, help="TOML/YAML/JSON file of these options (the command line "
                                                       "overrides it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build(args: argparse.Namespace, cls):
    from r1kit.config import build_config

    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "stop" in overrides:
        overrides["stop"] = [unescape(s) for s in overrides["stop"]]
    return build_config(cls, args.config, overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("results: DIR/results.json (schema in docs/eval.md), DIR/samples.jsonl, DIR/report.md + plots.\n"
                     "example: r1kit eval --model random-deepseek_v3-tiny --task 'arithmetic?digits=2&n=20' -n 4 "
                     "--max-tokens 64")
    add_generation_arguments(parser, EvalConfig, rename={"n": ["-n", "--n"]})
    parser.add_argument("--compare", nargs="+", metavar="DIR", default=None,
                        help="instead of evaluating: print (and with --out, plot into --out) these runs side by side")


def run(args: argparse.Namespace) -> int:
    if args.compare:
        from r1kit.eval.report import compare_runs

        print(compare_runs(args.compare, args.out))
        if args.out:
            print(f"\ncomparison: {args.out}/compare.md")
        return 0
    from r1kit.eval.backends import IncompleteRun
    from r1kit.eval.evaluate import default_out, evaluate
    from r1kit.eval.report import results_table

    cfg = build(args, EvalConfig)
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=default_out(cfg))
    try:
        results = evaluate(cfg, progress=not args.no_progress)
    except IncompleteRun as e:
        print(f"r1kit eval: {e}")
        return 1
    print(results_table(results))
    print(f"\nresults: {cfg.out}/results.json  samples: {cfg.out}/samples.jsonl  report: {cfg.out}/report.md")
    return 0

