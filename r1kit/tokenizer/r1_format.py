"""The DeepSeek-R1 format: its special tokens and chat template.

    <｜begin▁of▁sentence｜>{system}<｜User｜>{question}
    <｜Assistant｜><think>\n{reasoning}</think>\n\n{answer}<｜end▁of▁sentence｜>      (one line, no break)

The generation prompt pre-fills "<think>\n"; earlier assistant turns keep only the text after </think>. The template
ships as r1kit/templates/r1_chat_template.jinja (what `build_r1_tokenizer` embeds).

Tool calls use DeepSeek-R1's own markers and layout (tokens in its tokenizer, and in build_r1_tokenizer's with
tool_tokens=True; what vLLM's deepseek_v3 tool parser reads), one call per <｜tool▁call▁begin｜>...<｜tool▁call▁end｜>,
several separated by "\n":

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{arguments}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
    <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{result}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>
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
TOOL_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
TOOL_CALLS_END = "<｜tool▁calls▁end｜>"
TOOL_CALL_BEGIN = "<｜tool▁call▁begin｜>"
TOOL_CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
TOOL_OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
TOOL_OUTPUTS_END = "<｜tool▁outputs▁end｜>"
TOOL_OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
TOOL_OUTPUT_END = "<｜tool▁output▁end｜>"
TOOL_TOKENS = (TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_SEP, TOOL_OUTPUTS_BEGIN,
               TOOL_OUTPUTS_END, TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END)


def r1_chat_template() -> str:
    """The DeepSeek-R1 chat template shipped with r1kit (what `build_r1_tokenizer` embeds)."""
    return resources.files("r1kit").joinpath("templates/r1_chat_template.jinja").read_text(encoding="utf-8")
