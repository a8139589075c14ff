"""Split a reasoning model's output into reasoning (the chain of thought) and content (the answer).

The engine feeds every completion's text deltas through a `ReasoningParser`, which fills CompletionOutput.reasoning
and .content; the server sends them as `reasoning_content` and `content`. Streaming is the hard part: a tag can
arrive split over several deltas ("</thi" + "nk>"), so the parser holds back any suffix that could still become a
tag and never sends it to either side until it knows which side it belongs to. Whatever the chunking, the deltas
add up to exactly `split(full_text)`.

Rules (start/end are the configured tags, e.g. <think> and </think>):
- The output may open with the start tag (after optional whitespace); it is removed and what follows is reasoning.
- prefilled=True (the prompt already ends with the start tag, as R1's template does): the output is reasoning from
  its first character even without an opening tag.
- prefilled=False and no opening tag: the whole output is content, untouched.
- Reasoning ends at the first end tag; surrounding whitespace of the reasoning is dropped, and so is the whitespace
  between the end tag and the answer (R1 writes "</think>\\n\\n"). Later tags are ordinary answer text.
- No end tag: everything after the opening is reasoning (e.g. the output hit max_tokens while thinking).
"""
from __future__ import annotations

import re
from typing import Callable

from r1kit.errors import UserError

_START, _REASONING, _ANSWER_LEAD, _CONTENT = range(4)
_NON_SPACE = re.compile(r"\S")  # the first character str.lstrip() keeps


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag (what might still become the tag)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningParser:
    """Incremental splitter: `feed(delta) -> (reasoning_delta, content_delta)`, then `finish()` once.

    `reasoning` and `content` hold the cumulative text emitted so far; they only ever grow.
    """

    def __init__(self, start_tag: str = "<think>", end_tag: str = "</think>", prefilled: bool = True):
        if not start_tag or not end_tag:
            raise ValueError("start_tag and end_tag must be non-empty strings (use the 'none' parser for no reasoning)")
        self.start_tag, self.end_tag, self.prefilled = start_tag, end_tag, prefilled
        self.reasoning = ""
        self.content = ""
        self._buf = ""  # received but not yet emitted
        self._state = _START
        self._finished = False

    @property
    def reasoning_done(self) -> bool:
        """True once the end tag was seen, or when the output turned out to have no reasoning at all."""
        return self._state in (_ANSWER_LEAD, _CONTENT)

    def feed(self, delta: str) -> tuple[str, str]:
        if self._finished:
            raise RuntimeError("ReasoningParser.feed() after finish()")
        self._buf += delta
        return self._advance(final=False)

    def finish(self) -> tuple[str, str]:
        """Flush the held-back text at the end of the output (a partial tag is just text then)."""
        if self._finished:
            return "", ""
        self._finished = True
        return self._advance(final=True)

    def _advance(self, final: bool) -> tuple[str, str]:
        r_out, c_out = [], []
        if self._state == _START:
            head = self._buf.lstrip()
            if head.startswith(self.start_tag):
                self._buf, self._state = head[len(self.start_tag):], _REASONING
            elif not final and (not head or self.start_tag.startswith(head)):
                return "", ""  # only whitespace or part of an opening tag so far
            else:
                self._state = _REASONING if self.prefilled else _CONTENT
        if self._state == _REASONING:
            text = self._buf if self.reasoning else self._buf.lstrip()
            idx = text.find(self.end_tag)
            if idx >= 0:
                r_out.append(text[:idx].rstrip())
                self._buf, self._state = text[idx + len(self.end_tag):], _ANSWER_LEAD
            else:
                # Hold back a possible partial end tag, and trailing whitespace (dropped if the end tag follows).
                keep = len(text) if final else len(text[: len(text) - _partial_suffix(text, self.end_tag)].rstrip())
                r_out.append(text[:keep])
                self._buf = text[keep:]
        if self._state == _ANSWER_LEAD:
            self._buf = self._buf.lstrip()
            if self._buf:
                self._state = _CONTENT
        if self._state == _CONTENT:
            c_out.append(self._buf)
            self._buf = ""
        r, c = "".join(r_out), "".join(c_out)
        self.reasoning += r
        self.content += c
        return r, c

    def content_start(self, text: str, scan_from: int = 0) -> tuple[int | None, int]:
        """Where the answer begins in the output so far, `text`, by the rules above, without touching this parser.

        Returns (start, scan): start = the index after the end tag and the whitespace that follows it (0 when the
        output has no reasoning), None while that is not known yet (still thinking, or only whitespace after the
        end tag so far). Pass `scan` back as `scan_from` on the next call with the grown text, so a long reasoning
        is not searched again on every token; scan < 0 means the output's opening is still undecided (only
        whitespace or part of an opening tag), so without a prefill it may still turn out to be all answer.
        The engine matches stop strings from `start` on (SamplingParams.stop_in_reasoning)."""
        m = _NON_SPACE.search(text)
        rest = len(text) - m.start() if m else 0
        if m and text.startswith(self.start_tag, m.start()):
            body = m.start() + len(self.start_tag)
        elif not m or (rest < len(self.start_tag) and self.start_tag.startswith(text[m.start():])):
            return None, -1
        elif self.prefilled:
            body = 0
        else:
            return 0, 0
        idx = text.find(self.end_tag, max(body, scan_from))
        if idx < 0:
            return None, max(body, len(text) - len(self.end_tag) + 1)
        after = idx + len(self.end_tag)
        answer = text[after:].lstrip()
        return (len(text) - len(answer) if answer else None), idx

    def split(self, text: str) -> tuple[str, str]:
        """One-shot split of a whole output; same result as feeding it in any chunks. Does not touch this parser."""
        head = text.lstrip()
        if head.startswith(self.start_tag):
            body = head[len(self.start_tag):]
        elif self.prefilled:
            body = text
        else:
            return "", text
        idx = body.find(self.end_tag)
        if idx < 0:
            return body.lstrip(), ""
        return body[:idx].strip(), body[idx + len(self.end_tag):].lstrip()


class NoReasoningParser(ReasoningParser):
    """For models that do not reason in tags: everything is content, unchanged."""

    def __init__(self):
        self.start_tag = self.end_tag = None
        self.prefilled = False
        self.reasoning = self.content = ""
        self._finished = False

    @property
    def reasoning_done(self) -> bool:
        return True

    def feed(self, delta: str) -> tuple[str, str]:
        if self._finished:
            raise RuntimeError("ReasoningParser.feed() after finish()")
        self.content += delta
        return "", delta

    def finish(self) -> tuple[str, str]:
        self._finished = True
        return "", ""

    def content_start(self, text: str, scan_from: int = 0) -> tuple[int | None, int]:
        return 0, 0

    def split(self, text: str) -> tuple[str, str]:
        return "", text


# name -> factory(prefilled override or None). "r1": DeepSeek-R1 and its distills (the prompt pre-fills <think>\n);
# "think": models that open <think> themselves (e.g. Qwen3); "thought": the <thought>...</thought> prompt pattern.
REASONING_PARSERS: dict[str, Callable[[bool | None], ReasoningParser]] = {
    "r1": lambda prefilled=None: ReasoningParser("<think>", "</think>", True if prefilled is None else prefilled),
    "think": lambda prefilled=None: ReasoningParser("<think>", "</think>", bool(prefilled)),
    "thought": lambda prefilled=None: ReasoningParser("<thought>", "</thought>", bool(prefilled)),
    "none": lambda prefilled=None: NoReasoningParser(),
}
REASONING_PARSERS["deepseek_r1"] = REASONING_PARSERS["r1"]  # vLLM's name for the same parser


def get_reasoning_parser(name: str, prefilled: bool | None = None) -> ReasoningParser:
    """A fresh parser (one per completion: parsers are stateful). prefilled overrides the registry's default."""
    try:
        factory = REASONING_PARSERS[name]
    except KeyError:
        raise UserError(f"unknown reasoning parser {name!r}; choose one of {sorted(REASONING_PARSERS)}") from None
    return factory(prefilled)
