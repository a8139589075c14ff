"""Small dataclass configs, loaded from a TOML/YAML file and overridden from the command line.

Every trainer, the engine and the server describe their options as one flat dataclass. This module is the single
way to fill one: defaults from the dataclass, then a config file, then `--key value` / `key=value` overrides.
Unknown keys and values of the wrong type are errors that name the key and what is expected.
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


class ConfigError(UserError):
    """A config file or override names an unknown key or holds a bad value."""


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a .toml, .yaml/.yml or .json file into a flat dict (a single top-level table is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"config file {str(path)!r}: use .toml, .yaml, .yml or .json")
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


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one `--field-name` option per dataclass field (value kept as a string; build_config converts it)."""
    for name, tp in _field_types(cls).items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=f"({tp_name(tp)})")


def tp_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def args_to_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of `cls` that were actually given on the command line."""
    names = _field_types(cls)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


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


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Save the resolved config as TOML-compatible JSON-ish text (JSON, which TOML users can also read back)."""
    atomic_write_text(path, json.dumps(config_to_dict(cfg), indent=2, default=str) + "\n")
