"""Training: cold-start SFT and GRPO (the R1-Zero recipe) with rollouts on r1kit's engine.

    from r1kit.train.sft import train_sft          # SFTConfig in r1kit.train.config
    from r1kit.train.grpo import train_grpo        # GRPOConfig in r1kit.train.config
Modules: losses (GRPO objective), advantages (group advantages, dynamic sampling), group_packing (shared-prefix
rows), rollout (engine adapter), config, optim (AdamW, schedule, clipping), precision (autocast), moe_balance
(router-bias update, balance loss), setup (policy, optimizer, resumed state), checkpointing (+ RUN/final),
run_log (RUN/config.json, metrics, samples), distributed (torchrun/DDP/FSDP2), task_data, plots, cli.
"""
