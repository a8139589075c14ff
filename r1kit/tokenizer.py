"""Tokenizers and the R1 chat format.

Everything in r1kit that turns text into token ids goes through `Tokenizer`: a thin wrapper over a Hugging Face
`tokenizers` fast tokenizer (tokenizer.json) plus what tokenizer_config.json says about special tokens and the chat
template. Chat templates are rendered with jinja2 in the same sandbox and with the same globals as transformers'
`apply_chat_template`, so any model's own template renders exactly as it would there.

`build_r1_tokenizer` trains a small byte-level BPE in the DeepSeek-R1 format (R1 special tokens, the R1 chat template
from templates/r1_chat_template.jinja) for the tiny models r1kit trains from scratch; the files it writes load in
transformers' AutoTokenizer and encode identically. `IncrementalDecoder` turns a growing list of token ids into text
deltas for streaming without ever emitting half a UTF-8 character.
"""
from __future__ import annotations

import json
import os
import random
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _FastTokenizer

from r1kit.config import atomic_write_text
from r1kit.errors import UserError

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def r1_chat_template() -> str:
    """The DeepSeek-R1 chat template shipped with r1kit (what `build_r1_tokenizer` embeds)."""
    return resources.files("r1kit").joinpath("templates/r1_chat_template.jinja").read_text(encoding="utf-8")


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
        if not isinstance(messages, (list, tuple)) or not messages:
            raise UserError("a conversation is a non-empty list of {'role': ..., 'content': ...} messages")
        chat = []
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise UserError(f"each chat message must be a dict with a 'role', got {message!r}")
            message = {k: v for k, v in message.items() if v is not None}
            reasoning = next((message[k] for k in ("reasoning_content", "thinking", "reasoning") if k in message), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
            chat.append(message)
        variables = {**self.special_tokens_map, **kwargs}
        variables.setdefault("tools", None)
        variables.setdefault("documents", None)
        try:
            text = _compile_template(template).render(messages=chat, add_generation_prompt=add_generation_prompt,
                                                      **variables)
        except jinja2.TemplateError as e:  # raise_exception(...) in the template: the conversation is not allowed
            raise UserError(f"chat template rejected the conversation: {e}") from e
        return self.encode(text) if tokenize else text

    def incremental_decoder(self, skip_special_tokens: bool = False,
                            context_ids: Iterable[int] = ()) -> "IncrementalDecoder":
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


# ---- chat template rendering (same environment as transformers) ---------------------------------------------------
@lru_cache(maxsize=16)
def _compile_template(template: str):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which templates do not expect.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class GenerationBlock(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; it renders as its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, GenerationBlock])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"invalid chat template (line {e.lineno}): {e.message}") from e


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


# ---- building a new R1-format tokenizer ----------------------------------------------------------------------
def build_r1_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Train a byte-level BPE with the DeepSeek-R1 special tokens and chat template; save it to out_dir if given.

    Ids 0/1/2 are BOS/EOS/pad as in DeepSeek-V3; the chat markers <｜User｜>/<｜Assistant｜> are special tokens;
    <think>, </think>, <answer>, </answer> are added tokens that are NOT special, so that decoding with
    skip_special_tokens=True keeps them (the reasoning parser needs them). Digits are split one per token, which
    helps small models learn arithmetic. vocab_size counts everything (bytes, merges and added tokens); it is
    reached exactly unless the text is too small to learn that many merges (`tokenizer.vocab_size` is the truth).
    """
    specials = [BOS, EOS, PAD]
    chat_specials = [USER, ASSISTANT]
    plain_added = [THINK_START, THINK_END, ANSWER_START, ANSWER_END]
    n_added = len(specials) + len(chat_specials) + len(plain_added)
    min_size = 256 + n_added
    if not isinstance(vocab_size, int) or vocab_size < min_size:
        raise UserError(f"vocab_size must be an integer >= {min_size} (256 byte tokens + {n_added} R1 tokens), "
                        f"got {vocab_size!r}")
    fast = _FastTokenizer(models.BPE())
    fast.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    fast.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(chat_specials) - len(plain_added),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    fast.train_from_iterator(texts, trainer)
    fast.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in chat_specials])
    fast.add_tokens([AddedToken(t, normalized=False, special=False) for t in plain_added])
    # Like R1's tokenizer: encode(text, add_special_tokens=True) prepends BOS; chat templates write it themselves.
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, fast.token_to_id(BOS))]
    )
    added = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(fast.get_added_tokens_decoder().items())
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "added_tokens_decoder": added,
    }
    tokenizer = Tokenizer(fast, config, r1_chat_template())
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer


_WORDS = ("apples pears coins marbles books tickets students boxes cards stones").split()
_NAMES = ("Alice Bob Carol Dave Erin Frank Grace Heidi").split()
_PROSE = ("""\
DeepSeek-R1 is a reasoning model. Before it answers, it thinks: it writes a chain of thought, checks each step, and
only then gives the final answer. The thinking is enclosed in <think> and </think> tags, and the answer follows.
A good answer is short and correct. When a step looks wrong, the model says so and tries again: "Wait, let me
reconsider." Reinforcement learning with verifiable rewards taught the model to reason this way, without a
reward model: a rule checks whether the final answer is right, and whether the format is followed.
The quick brown fox jumps over the lazy dog. Please reason step by step, and put your final answer within \\boxed{}.
""", """\
A train leaves the station at nine o'clock and travels north at sixty kilometres per hour. Another train leaves an
hour later, going south on a parallel track at eighty kilometres per hour. How far apart are they at noon? First we
find how long each train has been moving, then we multiply speed by time, and finally we add the two distances.
""", """\
In a right triangle the square of the hypotenuse equals the sum of the squares of the other two sides. If the legs
are three and four, the hypotenuse is five. A circle with radius r has area pi times r squared and circumference two
pi r. The derivative of x squared is two x; the integral of one over x is the natural logarithm of x. A prime number
has exactly two divisors. Every integer greater than one can be written as a product of primes in only one way.
""", """\
Programs are read more often than they are written. A function should do one thing, have a clear name, and be
tested. When a test fails, read the error message carefully, reproduce the problem with the smallest possible
input, form a hypothesis, and check it. Python lists, dictionaries and sets cover most everyday needs; a loop over
a million items takes well under a second. Return early, avoid global state, and prefer simple data structures.
""", """\
Weather changes quickly in the mountains: a sunny morning can turn into a cold, windy afternoon with rain or snow.
Hikers carry water, food, a map, warm clothes and a small first aid kit. Rivers begin as springs and streams high up
and grow as they flow down towards the sea, through forests, farms, villages and cities. Children learn to count
before they learn to read, and they often ask why the sky is blue, why leaves fall, and where the birds go in winter.
""", """\
Verification is easier than discovery. Checking that a proposed answer satisfies every condition of a problem is
usually quick, while finding that answer may take a long search. This asymmetry is what makes rewards from rules so
useful: a model can try many times, and a simple program decides which attempts were correct. Over many training
steps the model learns which habits of thought lead to correct answers, such as breaking a problem into parts,
double-checking arithmetic, and trying a different approach after a mistake.
""")


def default_corpus(n_problems: int = 1500, seed: int = 0) -> list[str]:
    """Built-in training text for tiny tokenizers: English prose plus generated arithmetic, word problems and
    countdown-style reasoning traces in the R1 format. Deterministic for a seed."""
    rng = random.Random(seed)
    texts = list(_PROSE) * 10
    for _ in range(n_problems):
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(1, 20)
        kind = rng.randrange(4)
        if kind == 0:
            texts.append(f"What is {a} + {b} * {c}?<think>\nFirst {b} * {c} = {b * c}. Then {a} + {b * c} = "
                         f"{a + b * c}.\n</think>\n\nThe answer is \\boxed{{{a + b * c}}}.")
        elif kind == 1:
            name, word = rng.choice(_NAMES), rng.choice(_WORDS)
            texts.append(f"{name} has {a} {word} and gives away {b}. How many {word} are left?<think>\n"
                         f"We subtract: {a} - {b} = {a - b}. Wait, let me check: {a - b} + {b} = {a}. Yes.\n"
                         f"</think>\n\n<answer>{a - b}</answer>")
        elif kind == 2:
            nums = [rng.randint(1, 100) for _ in range(3)]
            target = nums[0] + nums[1] - nums[2]
            texts.append(f"Using the numbers {nums}, create an equation that equals {target}. You can use basic "
                         f"arithmetic operations (+, -, *, /) and each number can only be used once.<think>\n"
                         f"Let me try {nums[0]} + {nums[1]} = {nums[0] + nums[1]}, then {nums[0] + nums[1]} - "
                         f"{nums[2]} = {target}. That works.\n</think>\n\n<answer>{nums[0]} + {nums[1]} - "
                         f"{nums[2]}</answer>")
        else:
            texts.append(f"Compute {a} / {c} and {b} ** 2. {a} / {c} = {a / c:.3f}, and {b} ** 2 = {b * b}. "
                         f"So the sum is {a / c + b * b:.3f}.")
    return texts
