"""Config-driven commands describe themselves: every option's --help gives its meaning, default and choices, and a
boolean is --flag / --no-flag (--flag true|false also works)."""
from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from r1kit.config import ConfigError, HelpFormatter, add_config_args, args_to_overrides, build_config, option
from r1kit.train.config import GRPOConfig, SFTConfig


def _help(cls) -> str:
    parser = argparse.ArgumentParser(prog="x", formatter_class=lambda prog: HelpFormatter(prog, max_help_position=200, width=10_000))
    add_config_args(parser, cls)
    return parser.format_help()


@pytest.mark.parametrize("cls", [SFTConfig, GRPOConfig])
def test_every_option_documents_its_meaning_default_and_choices(cls):
    text = _help(cls)
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  --")}
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        assert flag in lines, flag
        help_text = f.metadata.get("help", "")
        assert len(help_text) >= 10, f"{cls.__name__}.{f.name} has no help text"
        line = lines[flag]
        assert help_text.split()[0] in line, (flag, line)
        default = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        assert f"(default: {default})" in line, (flag, line)
        tp = typing.get_type_hints(cls)[f.name]
        if typing.get_origin(tp) is typing.Literal:
            assert "{" + ",".join(typing.get_args(tp)) + "}" in line, (flag, line)
    assert "--fsdp [true|false], --no-fsdp" in text and "(one of: auto, float32" in text


def _parse(cls, argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_args(parser, cls)
    return build_config(cls, None, args_to_overrides(parser.parse_args(argv), cls))


def test_booleans_are_flags_and_still_take_true_or_false():
    assert _parse(GRPOConfig, ["--dynamic-sampling"]).dynamic_sampling is True
    assert _parse(GRPOConfig, ["--no-skip-zero-advantage"]).skip_zero_advantage is False
    assert _parse(GRPOConfig, ["--fsdp", "true"]).fsdp is True
    assert _parse(SFTConfig, ["--packing", "false"]).packing is False
    assert _parse(SFTConfig, []).packing is True  # not given: the default
    with pytest.raises(ConfigError, match="fsdp: expected true/false, got 'maybe'"):
        _parse(GRPOConfig, ["--fsdp", "maybe"])
    with pytest.raises(argparse.ArgumentError, match="choice"):
        _parse(GRPOConfig, ["--loss-type", "ppo"])


def test_option_gives_each_instance_its_own_list():
    @dataclasses.dataclass
    class C:
        """C"""
        items: list[str] = option(["a"], "some items")

    one, two = C(), C()
    one.items.append("b")
    assert two.items == ["a"] and dataclasses.fields(C)[0].metadata["help"] == "some items"
