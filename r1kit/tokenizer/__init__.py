"""Tokenizers and the R1 chat format.

    hf_tokenizer.py   Tokenizer (ids, decode, chat templates) and load_tokenizer for a Hugging Face directory
    chat_template.py  chat templates rendered exactly as transformers' apply_chat_template renders them
    incremental.py    IncrementalDecoder: streaming text deltas that never split a UTF-8 character
    r1_format.py      the DeepSeek-R1 special tokens and chat template
    bpe.py            build_r1_tokenizer: a small byte-level BPE in the R1 format, trained from text
    corpus.py         default_corpus: built-in text to train such a tokenizer on
"""
from r1kit.tokenizer.bpe import build_r1_tokenizer
from r1kit.tokenizer.corpus import default_corpus
from r1kit.tokenizer.hf_tokenizer import Tokenizer, load_tokenizer
from r1kit.tokenizer.incremental import IncrementalDecoder
from r1kit.tokenizer.r1_format import (ANSWER_END, ANSWER_START, ASSISTANT, BOS, EOS, PAD, THINK_END, THINK_START,
                                       TOOL_TOKENS, USER, r1_chat_template)

__all__ = ["ANSWER_END", "ANSWER_START", "ASSISTANT", "BOS", "EOS", "PAD", "THINK_END", "THINK_START", "TOOL_TOKENS",
           "USER", "IncrementalDecoder", "Tokenizer", "build_r1_tokenizer", "default_corpus", "load_tokenizer",
           "r1_chat_template"]
