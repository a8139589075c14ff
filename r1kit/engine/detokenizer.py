"""Per-sample text state: incremental detokenization, stop strings, and the reasoning/answer split.

The visible text only ever grows. Text that might be the beginning of a stop string is held back until it is
known not to be one; when a stop string completes, the text is cut before it (or after it with
include_stop_str_in_output) and nothing after it is ever shown. The visible text is fed to the reasoning parser,
which itself holds back partial `</think>` tags, so reasoning never leaks into the answer or the reverse.
"""
from __future__ import annotations

from r1kit.engine.reasoning_parser import ReasoningParser, _partial_suffix


class TextState:
    def __init__(self, tokenizer, parser: ReasoningParser, stop: list[str], include_stop: bool,
                 skip_special_tokens: bool = True):
        self.decoder = tokenizer.incremental_decoder(skip_special_tokens=skip_special_tokens)
        self.parser = parser
        self.stop = stop
        self.include_stop = include_stop
        self.max_stop = max((len(s) for s in stop), default=0)
        self.raw = ""  # everything decoded so far
        self.text = ""  # what has been shown (a prefix of raw)
        self.done = False

    @property
    def reasoning(self) -> str:
        return self.parser.reasoning

    @property
    def content(self) -> str:
        return self.parser.content

    def _show(self, upto: int) -> None:
        if upto > len(self.text):
            delta = self.raw[len(self.text):upto]
            self.text += delta
            self.parser.feed(delta)

    def add(self, token_ids: list[int]) -> str | None:
        """Decode new tokens; return the stop string if one completed (the text is then final)."""
        old = len(self.raw)
        self.raw += self.decoder.feed(token_ids)
        if not self.stop:
            self._show(len(self.raw))
            return None
        start = max(0, old - self.max_stop + 1)
        hits = [(i, s) for s in self.stop if (i := self.raw.find(s, start)) >= 0]
        if hits:
            idx, s = min(hits)
            self._show(idx + len(s) if self.include_stop else idx)
            self.raw = self.text
            self.finish(flush=False)
            return s
        hold = max(_partial_suffix(self.raw, s) for s in self.stop)
        self._show(len(self.raw) - hold)
        return None

    def finish(self, flush: bool = True) -> None:
        """End of output: show everything held back (unless a stop string cut it) and close the parser."""
        if self.done:
            return
        self.done = True
        if flush:
            self.raw += self.decoder.flush()
            self._show(len(self.raw))
        self.parser.finish()
