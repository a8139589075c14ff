"""Random-weight checkpoints in the Hugging Face layout, with an R1-format tokenizer, for tests, demos and benchmarks.

    create_random_checkpoint(out_dir, model_type="deepseek_v3", preset="tiny", seed=0) -> Path

Presets (vocabulary = the size of the tokenizer trained on r1kit.tokenizer.default_corpus):
    tiny   a few layers, hidden 64, vocab ~512: fast unit tests, the demo, tiny training runs
    small  hidden 256-320, vocab ~1k; for deepseek_v3 a ~25M-parameter fine-grained MoE shaped like V3
           (64 experts of width hidden/4, 8 active, 8 groups of which 4 kept): benchmarks
    r1kit-tiny (deepseek_v3) / r1kit-tiny-student (qwen2): the architectures of r1kit-tiny and its distilled
           student (recipes/tiny.sh trains them from these)
The files are exactly what a real checkpoint has (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json), so everything downstream loads them through the same code as real models.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r1kit.errors import UserError
from r1kit.models.checkpoint import save_model
from r1kit.models.registry import MODELS, build_model

_DEEPSEEK_TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                      v_head_dim=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
                      topk_group=1, first_k_dense_replace=1, routed_scaling_factor=2.5, num_nextn_predict_layers=0,
                      max_position_embeddings=4096)
_DEEPSEEK_SMALL = dict(hidden_size=256, intermediate_size=768, moe_intermediate_size=64, num_hidden_layers=8,
                       num_attention_heads=8, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
                       qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=64, n_shared_experts=1,
                       num_experts_per_tok=8, n_group=8, topk_group=4, first_k_dense_replace=1,
                       routed_scaling_factor=2.5, num_nextn_predict_layers=0, max_position_embeddings=4096)
# r1kit-tiny (the reasoner r1kit trains itself, docs/r1kit-tiny.md) and its dense student, at most half its size.
_DEEPSEEK_R1KIT_TINY = dict(hidden_size=192, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=6, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
                            qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16, n_shared_experts=1,
                            num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1,
                            routed_scaling_factor=2.5, num_nextn_predict_layers=0, max_position_embeddings=2048)
_QWEN2_R1KIT_TINY_STUDENT = dict(hidden_size=160, intermediate_size=448, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
_DENSE_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096)
_DENSE_SMALL = dict(hidden_size=320, intermediate_size=896, num_hidden_layers=6, num_attention_heads=8,
                    num_key_value_heads=2, max_position_embeddings=4096)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "deepseek_v3": {"tiny": {**_DEEPSEEK_TINY, "vocab": 512}, "small": {**_DEEPSEEK_SMALL, "vocab": 1024},
                    "r1kit-tiny": {**_DEEPSEEK_R1KIT_TINY, "vocab": 1024}},
    "llama": {"tiny": {**_DENSE_TINY, "vocab": 512}, "small": {**_DENSE_SMALL, "vocab": 1024}},
    "qwen2": {"tiny": {**_DENSE_TINY, "tie_word_embeddings": True, "vocab": 512},
              "small": {**_DENSE_SMALL, "tie_word_embeddings": True, "vocab": 1024},
              "r1kit-tiny-student": {**_QWEN2_R1KIT_TINY_STUDENT, "vocab": 1024}},
    "qwen3": {"tiny": {**_DENSE_TINY, "head_dim": 16, "tie_word_embeddings": True, "vocab": 512},
              "small": {**_DENSE_SMALL, "head_dim": 40, "tie_word_embeddings": True, "vocab": 1024}},
}


def preset_config(model_type: str, preset: str = "tiny", vocab_size: int | None = None, **overrides: Any):
    """The config dataclass of a preset (vocab_size defaults to the preset's tokenizer size)."""
    if model_type not in PRESETS:
        raise UserError(f"unsupported model_type {model_type!r}; r1kit supports: {', '.join(sorted(PRESETS))}")
    if preset not in PRESETS[model_type]:
        raise UserError(f"unknown preset {preset!r} for {model_type}; choose one of {', '.join(PRESETS[model_type])}")
    fields = dict(PRESETS[model_type][preset])
    vocab = fields.pop("vocab")
    fields.update(vocab_size=vocab_size or vocab, **overrides)
    return MODELS[model_type].config_class(**fields)


def create_random_checkpoint(out_dir: str | os.PathLike, model_type: str = "deepseek_v3", preset: str = "tiny",
                             seed: int = 0, corpus: list[str] | None = None, vocab_size: int | None = None,
                             tool_tokens: bool = False) -> Path:
    """Write a random `model_type` model of size `preset` and an R1 tokenizer to out_dir (HF layout); return it.

    The tokenizer is trained on `corpus` (default: r1kit.tokenizer.default_corpus) to `vocab_size` entries (default:
    the preset's); a model trained from scratch on some tasks gets shorter sequences from a corpus of their text.
    tool_tokens: the tokenizer has R1's tool-call tokens (build_r1_tokenizer)."""
    from r1kit.tokenizer import build_r1_tokenizer, default_corpus

    out = Path(out_dir)
    target_vocab = vocab_size or PRESETS.get(model_type, {}).get(preset, {}).get("vocab")
    config = preset_config(model_type, preset)  # validates model_type / preset before any work
    tokenizer = build_r1_tokenizer(default_corpus(seed=seed) if corpus is None else corpus,
                                   target_vocab or config.vocab_size, out, tool_tokens=tool_tokens)
    config = preset_config(model_type, preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = build_model(config, device="cpu", dtype="float32", init=True, seed=seed)
    save_model(model, out)
    return out
