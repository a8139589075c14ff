"""Per-sample text state: incremental detokenization, stop strings, and the reasoning/answer split.

The visible text only ever grows. Text that might be the beginning of a stop string is held back until it is
known not to be one; when a stop string completes, the text is cut before it (or after it with
include_stop_str_in_output) and nothing after it is ever shown. The visible text is fed to the reasoning parser,
which itself holds back partial `</think>` tags, so reasoning never leaks into the answer or the reverse.

Stop strings apply to the answer only (hosted reasoning APIs do the same): matching starts where the parser's
rules put the start of the content, after `</think>` and the whitespace after it, so a "\\n\\n" in the thinking or
right after the tag does not end an R1 answer before it began. `stop_in_reasoning=True` matches from the first
character instead. Text the engine forces (the thinking budget's wrap-up and `</think>`) is never matched, and no
match may begin before its end.
"""
from __future__ import annotations

from r1kit.engine.reasoning_parser import ReasoningParser, _partial_suffix


class TextState:
    def __init__(self, tokenizer, parser: ReasoningParser, stop: list[str], include_stop: bool,
                 skip_special_tokens: bool = True, stop_in_reasoning: bool = False):
        self.decoder = tokenizer.incremental_decoder(skip_special_tokens=skip_special_tokens)
        self.parser = parser
        self.stop = stop
        self.include_stop = include_stop
        self.stop_in_reasoning = stop_in_reasoning
        self.max_stop = max((len(s) for s in stop), default=0)
        self.raw = ""  # everything decoded so far
        self.text = ""  # what has been shown (a prefix of raw)
        self.done = False
        self._content_at: int | None = None  # where the answer begins in raw, once known
        self._scan = 0  # parser.content_start's scan state
        self._floor = 0  # no stop match begins before this: the end of the last forced text
        self._searched = 0  # raw[:_searched] was searched for stop strings

    @property
    def reasoning(self) -> str:
        return self.parser.reasoning

    @property
    def content(self) -> str | None:
        """The answer; None while the output is still thinking (and at the end if the thinking never closed)."""
        return self.parser.content if self.parser.reasoning_done else None

    def _show(self, upto: int) -> None:
        if upto > len(self.text):
            delta = self.raw[len(self.text):upto]
            self.text += delta
            self.parser.feed(delta)

    def _stop_start(self, final: bool = False) -> int | None:
        """Index of raw from which stop strings may match; None while none may (the output is still thinking)."""
        if self.stop_in_reasoning:
            return self._floor
        if self._content_at is None:
            self._content_at, self._scan = self.parser.content_start(self.raw, self._scan)
            if self._content_at is None and final and self._scan < 0 and not self.parser.prefilled:
                self._content_at = 0  # an undecided opening at the end is answer text (the parser's final rule)
        return None if self._content_at is None else max(self._content_at, self._floor)

    def _match(self, start: int) -> tuple[int, str] | None:
        """The earliest stop string that begins at or after `start` in raw text not searched before."""
        begin = max(start, self._searched - self.max_stop + 1)
        self._searched = len(self.raw)
        hits = [(i, s) for s in self.stop if (i := self.raw.find(s, begin)) >= 0]
        return min(hits) if hits else None

    def _cut(self, idx: int, s: str) -> str:
        self._show(idx + len(s) if self.include_stop else idx)
        self.raw = self.text
        self.finish(flush=False)
        return s

    def add(self, token_ids: list[int], forced: bool = False) -> str | None:
        """Decode new tokens; return the stop string if one completed (the text is then final).

        forced: the engine's own tokens (thinking wrap-up): never matched, and later matches begin after them."""
        self.raw += self.decoder.feed(token_ids)
        if not self.stop:
            self._show(len(self.raw))
            return None
        if forced:
            self._floor = self._searched = len(self.raw)
        start = self._stop_start()
        if start is None:  # thinking: show it all, unless the opening is undecided and may become answer text
            undecided = self._scan < 0 and not self.parser.prefilled and not self.stop_in_reasoning
            self._show(len(self.text) if undecided else len(self.raw))
            return None
        hit = self._match(start)
        if hit is not None:
            return self._cut(*hit)
        hold = min(max(_partial_suffix(self.raw, s) for s in self.stop), len(self.raw) - start)
        self._show(len(self.raw) - max(hold, 0))
        return None

    def finish(self, flush: bool = True) -> str | None:
        """End of output: show everything held back (unless a stop string cut it) and close the parser.

        Returns the stop string if the held-back text completes one after all (e.g. an output that was still
        undecided between thinking and answer when it ended)."""
        if self.done:
            return None
        self.done = True
        hit = None
        if flush:
            self.raw += self.decoder.flush()
            start = self._stop_start(final=True) if self.stop else None
            hit = self._match(start) if start is not None else None
            if hit is not None:
                self._show(hit[0] + len(hit[1]) if self.include_stop else hit[0])
                self.raw = self.text
            else:
                self._show(len(self.raw))
        self.parser.finish()
        return hit[1] if hit is not None else None
