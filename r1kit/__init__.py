"""r1kit: the DeepSeek-R1 system end to end, practical on ordinary hardware.

The public entry points are imported lazily so that `import r1kit` stays cheap (the CLI imports only the
subcommand it runs): `from r1kit import LLM, SamplingParams` loads the engine on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "LLM": "r1kit.engine.llm",
    "SamplingParams": "r1kit.engine.sampling_params",
    "load_model": "r1kit.models.checkpoint",
    "save_model": "r1kit.models.checkpoint",
    "load_tokenizer": "r1kit.tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'r1kit' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
