"""Training a small byte-level BPE tokenizer in the DeepSeek-R1 format, for the tiny models r1kit trains from scratch;
the files it writes load in transformers' AutoTokenizer and encode identically."""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _FastTokenizer

from r1kit.errors import UserError
from r1kit.tokenizer.hf_tokenizer import Tokenizer
from r1kit.tokenizer.r1_format import (ANSWER_END, ANSWER_START, ASSISTANT, BOS, EOS, PAD, THINK_END, THINK_START,
                                       TOOL_TOKENS, USER, r1_chat_template)


def build_r1_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike | None = None,
                       tool_tokens: bool = False) -> Tokenizer:
    """Train a byte-level BPE with the DeepSeek-R1 special tokens and chat template; save it to out_dir if given.

    Ids 0/1/2 are BOS/EOS/pad as in DeepSeek-V3; the chat markers <｜User｜>/<｜Assistant｜> are special tokens;
    <think>, </think>, <answer>, </answer> are added tokens that are NOT special, so that decoding with
    skip_special_tokens=True keeps them (the reasoning parser needs them). tool_tokens=True also adds R1's nine
    tool-call tokens (<｜tool▁calls▁begin｜>, ...), not special either, as in DeepSeek-R1's tokenizer, for a model
    that is to learn tool calls; without them the chat template writes the same markers as plain text (several
    tokens each), which the tool-call parser and grammar handle the same way. Off by default: adding them takes 9
    merges from the vocabulary, which changes every tokenization (and so every random test model). Digits are split one per token, which
    helps small models learn arithmetic. vocab_size counts everything (bytes, merges and added tokens); it is
    reached exactly unless the text is too small to learn that many merges (`tokenizer.vocab_size` is the truth).
    """
    specials = [BOS, EOS, PAD]
    chat_specials = [USER, ASSISTANT]
    plain_added = [THINK_START, THINK_END, ANSWER_START, ANSWER_END, *(TOOL_TOKENS if tool_tokens else ())]
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
