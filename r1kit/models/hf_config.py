"""Model configs that read and write Hugging Face `config.json` files.

Every architecture has a small dataclass whose field names are the config.json keys (vocab_size, hidden_size, ...),
so `model.config.eos_token_id` means what it means on the hub. `from_hf_dict` accepts both the hub spelling of RoPE
settings (`rope_theta` + `rope_scaling`, what DeepSeek-V3 / R1-Distill configs contain) and the transformers 5
spelling (`rope_parameters`), and normalises them into one dict:

    rope_parameters = {"rope_type": "default" | "linear" | "yarn" | "llama3", "rope_theta": float, ...type params}

`to_hf_dict` writes a config.json that transformers (5.x, and 4.x through `rope_scaling`) loads; keys r1kit does not
model are kept in `extra` and written back unchanged, so a load -> save round trip loses nothing that matters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from r1kit.errors import UserError

ROPE_TYPES = ("default", "linear", "yarn", "llama3")
# Keys that describe a particular file/export rather than the model; never written back.
_DROPPED_KEYS = {"architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                 "rope_scaling", "rope_theta", "rope_parameters", "model_type"}


def parse_rope(d: dict[str, Any], default_theta: float = 10000.0) -> dict[str, Any]:
    """Normalised rope parameters from a config dict (hub `rope_scaling` or transformers-5 `rope_parameters`)."""
    params = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    if "type" in params:  # hub spelling
        params.setdefault("rope_type", params.pop("type"))
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", d.get("rope_theta", default_theta))
    params["rope_theta"] = float(params["rope_theta"])
    if params["rope_type"] not in ROPE_TYPES:
        raise UserError(f"rope type {params['rope_type']!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if params["rope_type"] in ("yarn", "llama3"):
        params.setdefault("original_max_position_embeddings", d.get("max_position_embeddings"))
    return params


@dataclass
class HFConfig:
    """Fields shared by every decoder-only architecture r1kit supports."""

    model_type: ClassVar[str] = ""
    architecture: ClassVar[str] = ""  # the transformers class name written to "architectures"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    extra: dict[str, Any] = field(default_factory=dict)  # config.json keys r1kit does not use, written back as-is

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.hidden_act != "silu":
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported; r1kit models use 'silu'")
        self.rope_parameters = parse_rope({"rope_parameters": self.rope_parameters,
                                           "max_position_embeddings": self.max_position_embeddings})

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "HFConfig":
        """Build from a parsed config.json (unknown keys go to `extra`)."""
        if d.get("quantization_config"):
            raise UserError("quantized checkpoints (quantization_config in config.json, e.g. the fp8 DeepSeek-V3/R1 "
                            "release) are not supported; convert the weights to bf16 first")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "rope_parameters"}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["rope_parameters"] = parse_rope(d)
        kwargs["extra"] = {k: v for k, v in d.items() if k not in names and k not in _DROPPED_KEYS}
        return cls(**kwargs)

    def to_hf_dict(self, dtype: str | None = None) -> dict[str, Any]:
        """A config.json dict that transformers' AutoConfig loads into the matching class."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name not in ("extra", "rope_parameters"):
                out[f.name] = getattr(self, f.name)
        rope = dict(self.rope_parameters)
        out["rope_parameters"] = rope
        out["rope_theta"] = rope["rope_theta"]  # transformers 4.x reads these two
        out["rope_scaling"] = None if rope["rope_type"] == "default" else {**rope, "type": rope["rope_type"]}
        out["model_type"] = self.model_type
        out["architectures"] = [self.architecture]
        if dtype is not None:
            out["dtype"] = dtype
        return dict(sorted(out.items()))
