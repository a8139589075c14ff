"""Training: cold-start SFT and GRPO (the R1-Zero recipe) with rollouts on r1kit's engine.

    from r1kit.train.sft import train_sft          # SFTConfig in r1kit.train.config
    from r1kit.train.grpo import train_grpo        # GRPOConfig in r1kit.train.config
Modules: losses (GRPO objective), advantages (group advantages, dynamic sampling), config, optim, checkpointing,
distributed (torchrun/DDP/FSDP2), rollout (engine adapter), task_data, run (run directory), plots, cli.
"""
