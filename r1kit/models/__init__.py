"""Model architectures and Hugging Face checkpoint I/O.

    r1kit.models.checkpoint        load_model / save_model / load_model_config (HF layout, hub ids)
    r1kit.models.registry          model_type -> class (deepseek_v3, llama, qwen2, qwen3), build_model
    r1kit.models.deepseek_v3       MLA + DeepSeekMoE;  r1kit.models.llama  Llama / Qwen2 / Qwen3
    r1kit.models.context           the engine <-> model contract (AttentionContext, KVCacheSpec)
    r1kit.models.random_checkpoint random checkpoints with an R1 tokenizer for tests and demos
"""
