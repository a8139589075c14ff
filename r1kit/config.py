"""Small dataclass configs, loaded from a TOML/YAML file and overridden from the command line.

A config-driven command (`r1kit train sft|grpo`) describes its options as one flat dataclass whose fields carry
their help text: `lr: float = option(1e-5, "peak learning rate")`. This module is the single way to fill one:
defaults from the dataclass, then a config file, then `--key value` / `key=value` overrides. Unknown keys and values
of the wrong type are errors that name the key and what is expected. `add_config_args` turns the fields into
command-line options whose `--help` gives the meaning, the default and the choices; a boolean is `--flag` /
`--no-flag`, and `--flag true|false` also works (the form config files and earlier r1kit versions use).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from r1kit.errors import UserError

T = TypeVar("T")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text: `lr: float = option(1e-5, "peak learning rate")`. metadata may add
    `choices` (listed in --help when the type does not say them)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def field_help(cls: type, name: str) -> str:
    """What --help says about a field: its help text, its choices when the type does not list them, its default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    text = f.metadata.get("help", "")
    if "choices" in f.metadata:
        text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
    if f.default is not dataclasses.MISSING and f.default is not None:  # (None: the help text says what happens)
        default = str(f.default).lower() if isinstance(f.default, bool) else f.default
        text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help strings with %


class ConfigError(UserError):
    """A config file or override names an unknown key or holds a bad value."""


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a .toml, .yaml/.yml or .json file into a flat dict (a single top-level table is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} " + ("is a directory" if path.is_dir() else "does not exist"))
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {str(path)!r}: use .toml, .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError: say where
        where = " ".join(str(e).split())
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of key = value pairs")
    return data


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (a string from the CLI or a parsed file value) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for a in args:
            try:
                return _convert(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        return origin(_convert(key, v, inner) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['--lr', '1e-5', 'beta=0.01', '--no-flag'] -> {'lr': '1e-5', 'beta': '0.01', 'flag': 'false'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if "=" in item:
            k, v = item.lstrip("-").split("=", 1)
            out[k.replace("-", "_")] = v
            i += 1
        elif item.startswith("--"):
            k = item[2:].replace("-", "_")
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                out[k] = items[i + 1]
                i += 2
            elif k.startswith("no_"):
                out[k[3:]] = "false"
                i += 1
            else:
                out[k] = "true"
                i += 1
        else:
            raise ConfigError(f"cannot read override {item!r}: write --key value or key=value")
    return out


def build_config(cls: type[T], file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults of `cls`, updated by `file`, then by `overrides`; checks names and types, then runs __post_init__."""
    fields = _field_types(cls)
    values: dict[str, Any] = {}
    sources = []
    if file:
        sources.append((f"config file {str(file)!r}", read_config_file(file)))
    if overrides:
        sources.append(("command line", overrides))
    for where, data in sources:
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise ConfigError(f"unknown option {key!r} ({where}); valid options: {', '.join(sorted(fields))}")
            values[key] = _convert(key, value, fields[key])
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


class _Flag(argparse.Action):
    """A boolean option: `--name` (true), `--no-name` (false), or `--name true|false`."""

    def __init__(self, option_strings, dest, **kwargs):
        name = option_strings[0]
        super().__init__([name, "--no-" + name[2:]], dest, nargs="?", metavar="true|false", **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value")
            value = "false"
        setattr(namespace, self.dest, "true" if value is None else value)


class HelpFormatter(argparse.HelpFormatter):
    """Shows a boolean option as `--name [true|false], --no-name`."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Flag):
            return f"{action.option_strings[0]} [true|false], {action.option_strings[1]}"
        return super()._format_action_invocation(action)


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per dataclass field, `--field-name`, grouped by the class that declares it (the group's title is
    the first line of its docstring). Values stay strings (None when not given); build_config converts them. Give
    the parser formatter_class=HelpFormatter."""
    hints = typing.get_type_hints(cls)
    groups: dict[type, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        owner = next(c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
        if owner not in groups:
            groups[owner] = parser.add_argument_group((owner.__doc__ or owner.__name__).strip().splitlines()[0])
        flag, tp = "--" + f.name.replace("_", "-"), hints[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": field_help(cls, f.name)}
        if tp is bool:
            kwargs["action"] = _Flag
        elif typing.get_origin(tp) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        else:
            kwargs["metavar"] = _metavar(tp)
        groups[owner].add_argument(flag, **kwargs)


def _metavar(tp: Any) -> str:
    """INT, FLOAT, STR, ... for a field type (Optional[int] -> INT)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return getattr(args[0], "__name__", str(args[0])).upper()


def args_to_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of `cls` that were actually given on the command line."""
    names = _field_types(cls)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers see either the old or the new content, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
