"""Streaming detokenization: token ids in, text deltas out, never half a UTF-8 character."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from r1kit.tokenizer.hf_tokenizer import Tokenizer


class IncrementalDecoder:
    """Streaming detokenizer: feed token ids, get the text they complete.

    Text is emitted only once it is final: a byte-fallback or byte-level piece that ends in the middle of a UTF-8
    character is held back until the character is complete. Each step decodes a short window (the tokens since the
    last emission plus the tokens before them as context, which keeps decoders that depend on the previous token,
    like SentencePiece's leading-space rule, right). The concatenation of all deltas plus `flush()` equals
    `tokenizer.decode(all_ids)`; with `context_ids` (the prompt's ids; its last few tokens are kept as context, never
    emitted) it equals decode(context + ids) minus decode(context), so a completion keeps its leading space.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False, context_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = [int(t) for t in context_ids][-6:]  # context, then fed ids
        self.text = ""  # everything emitted so far
        self._prefix = 0  # window start: context tokens whose text was already emitted
        self._read = len(self.token_ids)  # tokens before this index have been emitted (or are context)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.token_ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def feed(self, token_ids: int | Iterable[int]) -> str:
        """Add token ids; return the newly completed text ("" while a character is still partial)."""
        self.token_ids.extend([int(token_ids)] if isinstance(token_ids, int) else [int(t) for t in token_ids])
        if len(self.token_ids) == self._read:
            return ""
        prefix_text = self._decode(self._prefix, self._read)
        full = self._decode(self._prefix)
        if full.endswith("\ufffd") or not full.startswith(prefix_text):
            return ""  # a character is still incomplete (or the context is still being rewritten)
        delta = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(self.token_ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete character decodes to U+FFFD, as a full decode would)."""
        if self._read == len(self.token_ids):
            return ""
        prefix_text = self._decode(self._prefix, self._read)
        full = self._decode(self._prefix)
        delta = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(self.token_ids)
        self.text += delta
        return delta
