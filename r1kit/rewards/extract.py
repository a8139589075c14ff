"""Where the answer is in a reasoning model's completion: the one place every verifier gets it from.

R1 completions look like `reasoning </think> answer` (the chat template prefills `<think>\\n`, so the opening tag is
usually absent); the R1-Zero template asks for `<think> ... </think> <answer> ... </answer>`; the R1-distill
instruction asks for the final answer in `\\boxed{}`. Rules:
- the split is the engine's (r1kit.engine.reasoning_parser, "r1" parser, prefilled): the answer part is the text
  after the first `</think>`; a completion without `</think>` (still thinking, or truncated) has no answer, so
  skipping the reasoning tags cannot earn accuracy. To score a model that does not reason, prepend "</think>";
- inside the answer part, the last `<answer>...</answer>` block wins when present;
- `final_answer` further takes the last `\\boxed{...}` (or `\\fbox{}`) when there is one.
"""
from __future__ import annotations

import re

from r1kit.engine.reasoning_parser import ReasoningParser

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")


_R1_SPLITTER = ReasoningParser(THINK_OPEN, THINK_CLOSE, prefilled=True)  # split() is stateless


def split_reasoning(completion: str) -> tuple[str, str]:
    """(reasoning, answer part) of a completion, following the rules in the module docstring."""
    reasoning, answer = _R1_SPLITTER.split(completion)
    return reasoning, answer.strip()


def answer_text(completion: str) -> str:
    """The answer part, narrowed to the last <answer>...</answer> block when there is one."""
    answer = split_reasoning(completion)[1]
    blocks = _ANSWER_BLOCK.findall(answer)
    return blocks[-1].strip() if blocks else answer


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} in `text` (braces balanced), or None."""
    for macro in ("\\boxed", "\\fbox"):
        start = text.rfind(macro)
        while start != -1:
            i = start + len(macro)
            while i < len(text) and text[i] == " ":
                i += 1
            if i < len(text) and text[i] == "{":
                depth = 0
                for j in range(i, len(text)):
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    if depth == 0:
                        return text[i + 1:j].strip()
            elif macro == "\\boxed" and i > start + len(macro):  # "\boxed 5"
                m = re.match(r"[^\s$]+", text[i:])
                if m:
                    return m.group(0)
            start = text.rfind(macro, 0, start)
    return None


def final_answer(completion: str) -> str:
    """The final answer string: the last \\boxed{} of the answer text if any, else the answer text itself."""
    text = answer_text(completion)
    boxed = last_boxed(text)
    return boxed if boxed is not None else text


def last_number(text: str) -> float | None:
    """The last number written in `text` (thousands separators allowed), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def code_answer(completion: str) -> str:
    """The program in a completion: the last ```python (or plain ```) block of the answer part, else the answer
    part itself with its indentation kept (a HumanEval-style continuation starts indented)."""
    raw = completion.partition(THINK_CLOSE)[2]  # as split_reasoning, but keeping the first line's indentation
    blocks = _ANSWER_BLOCK.findall(raw)
    raw = blocks[-1] if blocks else raw
    fenced = re.findall(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```", raw, re.DOTALL)
    return fenced[-1] if fenced else raw.strip("\n").rstrip()
