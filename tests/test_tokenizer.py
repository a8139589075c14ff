"""Tokenizer: R1 chat format and templates render exactly like transformers; built tokenizers load in
transformers and encode identically; the incremental decoder adds up to the full decode."""
import json

import pytest
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer

from r1kit.errors import UserError
from r1kit.tokenizer import (ASSISTANT, BOS, EOS, THINK_END, THINK_START, USER, IncrementalDecoder, Tokenizer,
                             build_r1_tokenizer, default_corpus, load_tokenizer)

MULTI_TURN = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>\n2 + 3 = 5, check: 5 - 3 = 2.\n</think>\n\nIt is 5."},
    {"role": "user", "content": "And 7 * 6? Please reason step by step, and put your final answer within \\boxed{}."},
    {"role": "assistant", "content": "The answer is \\boxed{42}.", "reasoning_content": "7 * 6 = 42"},
    {"role": "user", "content": "Thanks! 日本語 🙂"},
]
CONVERSATIONS = {
    "single_turn": [{"role": "user", "content": "Hello there"}],
    "system_prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "two_system_messages": [{"role": "system", "content": "A"}, {"role": "system", "content": "B"},
                            {"role": "user", "content": "Hi"}],
    "multi_turn": MULTI_TURN,
    "ends_with_assistant": MULTI_TURN[:3],
}
TEXTS = [
    "",
    "Hello world, hello WORLD!  Two  spaces\tand\ttabs\nnew lines\n\n",
    "What is 123 + 4567? Let me think: 123 + 4567 = 4690. The answer is \\boxed{4690}.",
    "<think>\nreasoning\n</think>\n\n<answer>1 + 2 - 3</answer>",
    f"{BOS}{USER}hi{ASSISTANT}{THINK_START}\nok{THINK_END}{EOS}",
    "ünïcödé — “quotes” 日本語の文章 🙂👍🏽 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero-width",
    "def f(x):\n    return x ** 2  # comment\n",
]


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("r1tok")
    build_r1_tokenizer(default_corpus(), 512, out)
    return out


@pytest.fixture(scope="module")
def tok(r1_dir):
    return load_tokenizer(r1_dir)


@pytest.fixture(scope="module")
def hf_tok(r1_dir):
    return AutoTokenizer.from_pretrained(str(r1_dir))


def test_built_tokenizer_has_requested_size_and_r1_special_tokens(tok):
    assert tok.vocab_size == 512
    assert (tok.bos_token, tok.eos_token) == (BOS, EOS)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    for marker in (USER, ASSISTANT, THINK_START, THINK_END, "<answer>", "</answer>"):
        assert len(tok.encode(marker)) == 1, marker
    assert tok.encode(THINK_START + THINK_END) == [tok.think_start_id, tok.think_end_id]
    # Think tags are not special: skipping special tokens keeps them (the reasoning parser needs them).
    ids = tok.encode(f"{BOS}{ASSISTANT}{THINK_START}x{THINK_END}y{EOS}")
    assert tok.decode(ids, skip_special_tokens=True) == f"{THINK_START}x{THINK_END}y"


def test_digits_are_single_tokens(tok):
    ids = tok.encode("12345")
    assert [tok.decode([i]) for i in ids] == list("12345")


def test_build_is_deterministic(tmp_path, r1_dir):
    build_r1_tokenizer(default_corpus(), 512, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_text() == (r1_dir / name).read_text(), name


def test_too_small_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="vocab_size must be"):
        build_r1_tokenizer(["abc"], 100, tmp_path)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_match_transformers(tok, hf_tok, text):
    assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    assert tok.encode(text, add_special_tokens=True) == hf_tok(text)["input_ids"]
    assert tok.encode(text, add_special_tokens=True)[0] == tok.bos_token_id
    ids = tok.encode(text)
    assert tok.decode(ids) == hf_tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_r1_chat_template_matches_transformers(tok, hf_tok, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert ours == theirs
    ids = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    assert ids == hf_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             tokenize=True, return_dict=False)


def test_r1_chat_format_layout(tok):
    text = tok.apply_chat_template(MULTI_TURN)
    assert text == (f"{BOS}You are a careful assistant.{USER}What is 2 + 3?{ASSISTANT}\n\nIt is 5.{EOS}"
                    f"{USER}{MULTI_TURN[3]['content']}{ASSISTANT}The answer is \\boxed{{42}}.{EOS}"
                    f"{USER}Thanks! 日本語 🙂{ASSISTANT}{THINK_START}\n")
    assert "2 + 3 = 5, check" not in text and "7 * 6 = 42" not in text  # earlier reasoning is dropped
    two = tok.apply_chat_template(CONVERSATIONS["two_system_messages"], add_generation_prompt=False)
    assert two == f"{BOS}A\n\nB{USER}Hi"


def test_unsupported_role_is_a_user_error(tok):
    with pytest.raises(UserError, match="roles system, user, assistant and tool"):
        tok.apply_chat_template([{"role": "ipython", "content": "x"}])


# A ChatML-style template using what Hub templates use: namespace, loop controls, tojson, raise_exception, kwargs,
# a {% generation %} block, whitespace control with trim_blocks/lstrip_blocks.
GENERIC_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{% for m in messages %}
    {% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}
    {% if m.role == 'system' and not loop.first %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<|im_start|>{{ m.role }}
    {% if m.role == 'assistant' %}
{% generation %}{{ m.content | trim }}{% if m.reasoning_content is defined %} [r={{ m.reasoning_content | tojson }}]{% endif %}{% endgeneration %}
    {% else %}
{{ m.content }}
    {% endif %}
<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant{% if enable_thinking is defined and not enable_thinking %} /no_think{% endif %}
{% endif %}{{ ns.n }} {{ eos_token }}{{ tools | tojson }}"""


@pytest.fixture(scope="module")
def generic_dir(tmp_path_factory, r1_dir):
    out = tmp_path_factory.mktemp("generic")
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (out / name).write_text((r1_dir / name).read_text())
    config = json.loads((r1_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").write_text(GENERIC_TEMPLATE)  # the newer transformers layout
    return out


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"add_generation_prompt": False}])
def test_any_template_renders_like_transformers(generic_dir, kwargs):
    ours = load_tokenizer(generic_dir)
    theirs = AutoTokenizer.from_pretrained(str(generic_dir))
    messages = MULTI_TURN + [{"role": "assistant", "content": "  ok  ", "reasoning": "r\"q<>"}]
    kwargs = {"add_generation_prompt": True, **kwargs}
    expected = theirs.apply_chat_template(messages, tokenize=False, **kwargs)
    assert ours.apply_chat_template(messages, **kwargs) == expected
    assert '[r="r\\"q<>"]' in expected  # the aliased reasoning field reached the template, JSON-escaped
    with pytest.raises(UserError, match="bad role"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_loading_without_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_no_chat_template_is_a_clear_error(generic_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_text((generic_dir / "tokenizer.json").read_text())
    with pytest.raises(UserError, match="no chat_template"):
        load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])


# ---- incremental decoding ----------------------------------------------------------------------------------------
STREAM_TEXT = "Résumé: 日本語 🙂👍🏽 é\n<think>naïve</think> 𝔘𝔫𝔦 done"


def llama_style_tokenizer() -> Tokenizer:
    """SentencePiece-like: a few pieces, byte fallback <0xNN> for everything else, leading-space stripping."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "a", "e", "n", "o", "d", "R", "s", "u", "m", ":", "▁d", "on", "done"]:
        vocab.setdefault(piece, len(vocab))
    bpe = models.BPE(vocab=vocab, merges=[("▁", "d"), ("o", "n")], unk_token="<unk>", byte_fallback=True)
    fast = FastTokenizer(bpe)
    fast.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    fast.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    fast.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    return Tokenizer(fast, {"bos_token": "<s>", "eos_token": "</s>"})


def assert_streams_like_full_decode(tokenizer: Tokenizer, ids: list[int], skip_special_tokens=False):
    full = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    for cut in range(len(ids) + 1):
        dec = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        parts = [dec.feed(ids[:cut]), dec.feed(ids[cut:])]
        assert "".join(parts) + dec.flush() == full, cut
    dec = tokenizer.incremental_decoder(skip_special_tokens=skip_special_tokens)
    deltas = [dec.feed(i) for i in ids]
    assert "".join(deltas) + dec.flush() == full == dec.text
    assert not any("\ufffd" in d for d in deltas)  # a partial character is never emitted


@pytest.mark.parametrize("skip", [False, True])
def test_incremental_decoder_equals_full_decode_byte_level(tok, skip):
    ids = tok.encode(STREAM_TEXT, add_special_tokens=True) + [tok.eos_token_id]
    assert len(ids) > len(STREAM_TEXT.encode()) // 3  # multi-byte characters really are split over tokens
    assert_streams_like_full_decode(tok, ids, skip_special_tokens=skip)


def test_incremental_decoder_equals_full_decode_byte_fallback():
    tokenizer = llama_style_tokenizer()
    ids = tokenizer.encode("Rosa done: 日本 🙂 ad")
    assert any(tokenizer.id_to_token(i).startswith("<0x") for i in ids)
    assert tokenizer.decode(ids) == "Rosa done: 日本 🙂 ad"
    assert_streams_like_full_decode(tokenizer, ids)


def test_incremental_decoder_flush_emits_a_truncated_character_as_replacement(tok):
    ids = tok.encode("ok 🙂")
    dec = IncrementalDecoder(tok)
    text = dec.feed(ids[:-1])  # the emoji's last byte is missing
    assert "\ufffd" not in text
    assert text + dec.flush() == tok.decode(ids[:-1])


def test_incremental_decoder_with_prompt_context_keeps_the_leading_space():
    tokenizer = llama_style_tokenizer()
    prompt, completion = tokenizer.encode("ad"), tokenizer.encode("done 日本")[:]
    assert tokenizer.decode(completion) == "done 日本"  # decoded alone, the leading "▁" is stripped
    dec = tokenizer.incremental_decoder(context_ids=prompt)
    text = "".join(dec.feed(i) for i in completion) + dec.flush()
    assert text == tokenizer.decode(prompt + completion)[len("ad"):] == " done 日本"


def test_loads_what_transformers_saves(hf_tok, tok, tmp_path):
    hf_tok.save_pretrained(str(tmp_path))
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.apply_chat_template(MULTI_TURN) == tok.apply_chat_template(MULTI_TURN)
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (0, 1, 2)
    assert reloaded.encode(TEXTS[5], add_special_tokens=True) == tok.encode(TEXTS[5], add_special_tokens=True)
