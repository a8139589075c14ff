"""r1kit.engine: a paged-KV inference engine (vLLM-like): LLM, SamplingParams, scheduler, KV cache, sampler."""
from __future__ import annotations

from r1kit.engine.sampling_params import SamplingParams


def __getattr__(name: str):
    # LLM pulls in the models; import it lazily so `from r1kit.engine import SamplingParams` stays light
    if name == "LLM":
        from r1kit.engine.llm import LLM

        return LLM
    if name == "LLMEngine":
        from r1kit.engine.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module 'r1kit.engine' has no attribute {name!r}")


__all__ = ["LLM", "LLMEngine", "SamplingParams"]
