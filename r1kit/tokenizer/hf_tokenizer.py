"""Tokenizer: a Hugging Face `tokenizers` fast tokenizer (tokenizer.json) plus what tokenizer_config.json says about
special tokens and the chat template; `load_tokenizer` reads such a directory, `Tokenizer.save` writes one.

Everything in r1kit that turns text into token ids goes through it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from tokenizers import AddedToken
from tokenizers import Tokenizer as _FastTokenizer

from r1kit.config import atomic_write_text
from r1kit.errors import UserError
from r1kit.tokenizer.chat_template import render_chat
from r1kit.tokenizer.incremental import IncrementalDecoder
from r1kit.tokenizer.r1_format import THINK_END, THINK_START

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    """Fast tokenizer + special tokens + chat template. Build with `load_tokenizer` or `build_r1_tokenizer`."""

    def __init__(self, fast: _FastTokenizer, config: dict[str, Any] | None = None, chat_template: str | None = None):
        self.fast = fast
        self.config = dict(config or {})
        self.chat_template = chat_template
        # Special token strings as tokenizer_config.json names them (a value may be a string or an AddedToken dict).
        self.special_tokens_map: dict[str, str] = {}
        for key in _SPECIAL_KEYS:
            value = self.config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                self.special_tokens_map[key] = value
        self.bos_token = self.special_tokens_map.get("bos_token")
        self.eos_token = self.special_tokens_map.get("eos_token")
        self.pad_token = self.special_tokens_map.get("pad_token")
        self.think_start_token = THINK_START if self.token_to_id(THINK_START) is not None else None
        self.think_end_token = THINK_END if self.token_to_id(THINK_END) is not None else None

    # ---- ids and sizes ---------------------------------------------------------------------------------------
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.fast.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.fast.id_to_token(token_id)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str | None]:
        return [self.fast.id_to_token(int(i)) for i in ids]

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included (a model's embedding may be larger)."""
        return self.fast.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def think_start_id(self) -> int | None:
        return self.token_to_id(self.think_start_token)

    @property
    def think_end_id(self) -> int | None:
        return self.token_to_id(self.think_end_token)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the tokens marked special (those `decode(..., skip_special_tokens=True)` drops)."""
        return sorted(i for i, tok in self.fast.get_added_tokens_decoder().items() if tok.special)

    # ---- text <-> ids ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. add_special_tokens=True applies tokenizer.json's post-processor (e.g. a BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self.fast.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.fast.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.fast.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation with the tokenizer's chat template, as transformers' apply_chat_template does.

        Messages are dicts with "role" and "content" (keys whose value is None are dropped; "reasoning",
        "thinking" and "reasoning_content" are aliases of one another). Extra keyword arguments reach the template
        (e.g. enable_thinking=False for Qwen3 templates). tokenize=True returns ids, encoded without adding
        special tokens (the template writes them itself). Unlike transformers, add_generation_prompt defaults to
        True because r1kit renders prompts to generate from.
        """
        template = chat_template or self.chat_template
        if template is None:
            raise UserError("this tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja); "
                            "pass chat_template=... or use a tokenizer built by build_r1_tokenizer")
        text = render_chat(template, messages, add_generation_prompt, {**self.special_tokens_map, **kwargs})
        return self.encode(text) if tokenize else text

    def incremental_decoder(self, skip_special_tokens: bool = False,
                            context_ids: Iterable[int] = ()) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens, context_ids=context_ids)

    # ---- files -----------------------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (transformers' layout)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        # ASCII-only JSON: the R1 token strings are not ASCII and the files must not depend on the locale.
        atomic_write_text(out / "tokenizer.json", json.dumps(json.loads(self.fast.to_str()), indent=2))
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
        atomic_write_text(out / "special_tokens_map.json", json.dumps(self.special_tokens_map, indent=2))


# ---- loading -------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer directory in the Hugging Face layout (tokenizer.json [+ tokenizer_config.json]).

    The chat template comes from chat_template.jinja if present (newer transformers save it there), else from
    tokenizer_config.json's "chat_template" (a string, or a list of named templates: "default" is used).
    """
    path = Path(path)
    if path.is_file():
        path = path.parent
    tok_file = path / "tokenizer.json"
    if not path.exists():
        raise UserError(f"tokenizer directory {path} does not exist (pass a local directory holding tokenizer.json)")
    if not tok_file.is_file():
        raise UserError(f"no tokenizer.json in {path}: r1kit needs a fast tokenizer file "
                        "(save one with transformers' tokenizer.save_pretrained, or build one with build_r1_tokenizer)")
    fast = _FastTokenizer.from_file(str(tok_file))
    config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    if (path / "special_tokens_map.json").is_file():  # older layouts keep special tokens only there
        for key, value in _read_json(path / "special_tokens_map.json").items():
            config.setdefault(key, value)
    # Tokens listed only in tokenizer_config.json's added_tokens_decoder are added as transformers would.
    missing = []
    for spec in config.get("added_tokens_decoder", {}).values():
        if fast.token_to_id(spec["content"]) is None:
            missing.append(AddedToken(spec["content"], single_word=spec.get("single_word", False),
                                      lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                                      normalized=spec.get("normalized", False), special=spec.get("special", False)))
    if missing:
        fast.add_tokens(missing)
    template = config.get("chat_template")
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    elif (path / "chat_template.json").is_file():
        template = _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(template, list):
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default", next(iter(named.values()), None))
    return Tokenizer(fast, config, template)
