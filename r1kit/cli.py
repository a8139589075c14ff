"""The `r1kit` command: one subcommand per part of the system.

Each subcommand lives in its own module, which defines `add_arguments(parser)` and `run(args)`. Only the module of
the subcommand being run is imported, so `r1kit --help` is instant and `r1kit serve` never imports the trainers.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a subcommand by adding a line here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("r1kit.demo", "create a small random R1-format checkpoint and run it end to end"),
    "chat": ("r1kit.server.chat_cli", "chat in the terminal with a local model or an OpenAI-compatible server"),
    "serve": ("r1kit.server.cli", "serve a model over an OpenAI-compatible HTTP API"),
    "init": ("r1kit.train.init", "create a model with random weights and a tokenizer trained on your tasks' text"),
    "train": ("r1kit.train.cli", "train a model: `r1kit train sft|grpo ...`"),
    "plot": ("r1kit.train.plots", "draw PNG plots of a training run's metrics.jsonl"),
    "eval": ("r1kit.eval.cli", "evaluate a model on tasks: pass@k, maj@k, format errors, thinking tokens, latency"),
    "distill": ("r1kit.eval.distill", "keep a teacher's verified reasoning traces as SFT data for a student"),
}


_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _usage() -> str:
    lines = ["usage: r1kit <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `r1kit <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        from r1kit import __version__

        print(f"r1kit {__version__}")
        return
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"r1kit: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    module_name, help_ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("r1kit"):
            print(f"r1kit: the {name!r} command is not available in this version yet", file=sys.stderr)
            sys.exit(2)
        raise
    parser = argparse.ArgumentParser(prog=f"r1kit {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        rc = module.run(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # a user mistake reported by our code: print it plainly, no traceback
        from r1kit.errors import UserError

        if isinstance(e, UserError):
            print(f"r1kit {name}: error: {e}", file=sys.stderr)
            sys.exit(2)
        if isinstance(e, _PATH_ERRORS):  # a path given on the command line that cannot be used as asked
            where = f": {e.filename!r}" if e.filename else ""
            print(f"r1kit {name}: error: {e.strerror or e}{where}", file=sys.stderr)
            sys.exit(2)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
