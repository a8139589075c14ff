"""The DeepSeek-R1 format: its special tokens and chat template.

    <｜begin▁of▁sentence｜>{system}<｜User｜>{question}
    <｜Assistant｜><think>\n{reasoning}</think>\n\n{answer}<｜end▁of▁sentence｜>      (one line, no break)

The generation prompt pre-fills "<think>\n"; earlier assistant turns keep only the text after </think>. The template
ships as r1kit/templates/r1_chat_template.jinja (what `build_r1_tokenizer` embeds).
"""
from __future__ import annotations

from importlib import resources

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"


def r1_chat_template() -> str:
    """The DeepSeek-R1 chat template shipped with r1kit (what `build_r1_tokenizer` embeds)."""
    return resources.files("r1kit").joinpath("templates/r1_chat_template.jinja").read_text(encoding="utf-8")
