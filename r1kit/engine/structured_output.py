"""Structured outputs: the answer is forced to follow a JSON schema, a regex, a choice of strings or a grammar.

    SamplingParams(structured_outputs=StructuredOutputsParams(json={...schema...}))      # vLLM's names
    StructuredOutputsParams(json_object=True) / (regex="[0-9]+") / (choice=["yes", "no"]) / (grammar=lark_text)

The grammar library is llguidance (Microsoft's, also a vLLM backend), chosen over xgrammar for three reasons:
it has no ahead-of-time compile step (a request brings its own schema, e.g. every tool-calling request, and
llguidance builds its matcher lazily in well under a millisecond for ordinary schemas, where xgrammar compiles the
grammar against the whole vocabulary first), its Lark grammars can name special tokens (R1's tool-call markers
are special tokens), and it needs no torch extension or compiler. It computes the allowed-token bitmask per
sequence on the CPU in Rust (~0.1 ms per sequence and step for a JSON schema).

Reasoning models keep their thinking: the constraint starts once the thinking is over (the sequence's
`thinking_done`: `</think>` sampled or forced by the thinking budget; at once for outputs that do not think), so
only the answer is constrained. Each step the model runner asks every constrained sequence for its bitmask (the
tokens the grammar allows next), the sampler sets the others to -inf, and the engine feeds the sampled token
back; when the grammar is complete and cannot continue, the sequence finishes (finish_reason "stop").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import torch

from r1kit.errors import UserError

# compact JSON (", " and ": "; no free whitespace): a model cannot pad forever between tokens
JSON_OPTIONS = {"whitespace_flexible": False}


class InvalidGrammar(UserError):
    """The schema / regex / grammar cannot be compiled; `.param` = "structured_outputs"."""

    param = "structured_outputs"


@dataclass
class StructuredOutputsParams:
    """Exactly one of: a JSON schema (dict or JSON text), any JSON object, a regex, a choice, a Lark grammar."""

    json: dict | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def __post_init__(self):
        given = [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]
        if len(given) != 1:
            raise InvalidGrammar("structured_outputs needs exactly one of json, json_object, regex, choice, "
                                 f"grammar; got {given or 'none'}")
        if self.choice is not None and (not isinstance(self.choice, list) or not self.choice
                                        or not all(isinstance(c, str) for c in self.choice)):
            raise InvalidGrammar(f"choice must be a non-empty list of strings, got {self.choice!r}")
        for name in ("regex", "grammar"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InvalidGrammar(f"{name} must be a string")

    def to_grammar(self) -> str:
        """The llguidance grammar (a JSON string) for this constraint."""
        from llguidance import LLMatcher

        try:
            if self.json is not None:
                schema = json.loads(self.json) if isinstance(self.json, str) else self.json
                return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
            if self.json_object:
                return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
            if self.regex is not None:
                return LLMatcher.grammar_from_regex(self.regex)
            if self.choice is not None:
                return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.choice))
            return LLMatcher.grammar_from_lark(self.grammar)
        except (ValueError, TypeError) as e:
            raise InvalidGrammar(f"invalid structured output: {e}") from None


class GrammarCompiler:
    """Builds matchers against one tokenizer (the llguidance view of it is made once, on first use)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: list[int]):
        self.tokenizer, self.vocab_size, self.eos_token_ids = tokenizer, vocab_size, eos_token_ids
        self._ll_tokenizer = None

    @property
    def ll_tokenizer(self):
        if self._ll_tokenizer is None:
            from llguidance import LLTokenizer

            self._ll_tokenizer = LLTokenizer(self.tokenizer.fast.to_str(), n_vocab=self.vocab_size,
                                             eos_token=list(self.eos_token_ids) or None)
        return self._ll_tokenizer

    def matcher(self, spec: StructuredOutputsParams):
        """A fresh matcher in its initial state; InvalidGrammar if the constraint does not compile."""
        from llguidance import LLMatcher

        try:
            m = LLMatcher(self.ll_tokenizer, spec.to_grammar(), log_level=0)
        except (ValueError, RuntimeError) as e:
            raise InvalidGrammar(f"invalid structured output: {e}") from None
        if m.is_error():
            raise InvalidGrammar(f"invalid structured output: {m.get_error()}")
        return m


_SHIFTS: dict[Any, torch.Tensor] = {}
PAR_ROWS = 64  # from this many constrained rows on, llguidance's thread pool fills the masks


def bitmasks(matchers: list, vocab_size: int) -> torch.Tensor:
    """[len(matchers), ceil(V / 32)] int32 on the CPU: bit t of row i set = matchers[i] allows token t next.

    One matcher after the other below PAR_ROWS rows: ~0.1 ms each here, where the thread pool's hand-off cost
    more than the work on 2 busy cores (measured: 16 rows 1.1 ms in turn vs 17.6 ms through the pool)."""
    from llguidance.torch import fill_next_token_bitmask, fill_next_token_bitmask_par

    mask = torch.full((len(matchers), (vocab_size + 31) // 32), -1, dtype=torch.int32)
    if len(matchers) < PAR_ROWS:
        for i, m in enumerate(matchers):
            fill_next_token_bitmask(m, mask, i)
        return mask
    if not _EXECUTOR:
        from llguidance import LLExecutor

        _EXECUTOR.append(LLExecutor())
    fill_next_token_bitmask_par(_EXECUTOR[0], [(m, i) for i, m in enumerate(matchers)], mask)
    return mask


_EXECUTOR: list = []  # one llguidance thread pool per process, made on first use


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 bitmask -> [R, vocab_size] bool (True = allowed). Plain tensor ops: no compile step."""
    dev = bitmask.device
    if dev not in _SHIFTS:
        _SHIFTS[dev] = torch.arange(32, dtype=torch.int32, device=dev)
    bits = (bitmask[:, :, None] >> _SHIFTS[dev]) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()
