"""GRPO end to end on r1kit's engine: learning on a toy reward, rollout logprobs, resume, router bias, penalties."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from r1kit.rewards import CombinedReward, load_reward
from r1kit.train.config import GRPOConfig
from r1kit.train.group_packing import pack_groups
from r1kit.train.grpo import policy_logprobs, score_samples, train_grpo
from r1kit.train.rollout import Sample


def digit_fraction(text: str, example: dict) -> float:
    """Toy verifiable reward a random tiny model can learn fast: the share of digit characters in its output."""
    return sum(ch.isdigit() for ch in text) / max(len(text), 1)


EXAMPLES = [{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(16)]
REWARDS = CombinedReward({"digits": (digit_fraction, 1.0)})


def _cfg(**kw):
    base = dict(num_generations=8, prompts_per_step=4, max_completion_length=16, lr=1e-2, lr_schedule="constant",
                micro_batch_size=32, sample_every=5, seed=0)
    return GRPOConfig(**{**base, **kw})


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


@pytest.mark.slow
def test_mean_reward_rises_on_a_toy_task(tiny_checkpoint, tmp_path):
    train_grpo(tiny_checkpoint("qwen2"), str(tmp_path), _cfg(max_steps=20), examples=EXAMPLES, rewards=REWARDS)
    m = _metrics(tmp_path)
    first, last = sum(r["reward"] for r in m[:4]) / 4, sum(r["reward"] for r in m[-4:]) / 4
    assert last > first + 0.3, (first, last)
    for key in ("reward_std", "rewards/digits", "frac_reward_zero_std", "completion_length_max", "truncated_frac",
                "kl", "clip_frac", "entropy", "lr", "grad_norm", "tokens_per_s", "rollout_time", "train_time"):
        assert key in m[-1]
    assert (tmp_path / "samples.jsonl").is_file() and (tmp_path / "final" / "model.safetensors").is_file()
    assert (tmp_path / "reward.png").is_file() and (tmp_path / "length.png").is_file()


def test_engine_rollout_logprobs_equal_the_training_forward(tiny_checkpoint, monkeypatch):
    from r1kit.ops import frozen
    from r1kit.ops.cpu import library, weight_blocks
    from r1kit.models.checkpoint import load_model
    from r1kit.tokenizer import load_tokenizer
    from r1kit.train.rollout import EngineRollout
    from r1kit.train.task_data import prompt_ids

    path = tiny_checkpoint("deepseek_v3")
    tok, model = load_tokenizer(path), load_model(path, dtype=torch.float32)
    engine = EngineRollout(model, tok, max_model_len=128, max_num_seqs=8)
    blocked, real_experts, real_linear = [], weight_blocks.expert_blocks, weight_blocks.linear
    monkeypatch.setattr(weight_blocks, "expert_blocks", lambda *a: blocked.append(real_experts(*a) is not None)
                        or real_experts(*a))
    monkeypatch.setattr(weight_blocks, "linear", lambda *a: blocked.append(real_linear(*a) is not None)
                        or real_linear(*a))
    engine.allocate_kv_cache()
    [group] = engine.generate([prompt_ids(tok, EXAMPLES[0], 64)], EXAMPLES[:1], [0], 4, [7], 12, 0.7, 1.0)
    engine.free_kv_cache()
    if library.load() is not None:  # the rollout decoded over blocked weights (experts, linears), dropped after it
        assert blocked and all(blocked) and frozen.current() is None
    batch = pack_groups(group, 4, tok.pad_token_id, torch.device("cpu"))
    mask, old = batch.mask, batch.old_logprobs
    with torch.no_grad():
        logp, _ = policy_logprobs(model, batch, 0.7, torch.device("cpu"), "float32")
    assert mask.sum() == sum(len(s.completion_ids) for s in group) > 0
    assert torch.allclose(old * mask, logp * mask, atol=2e-4)


def test_resume_matches_an_uninterrupted_run_and_router_biases_move(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    path = tiny_checkpoint("deepseek_v3")
    kw = dict(max_steps=4, save_every=2, beta=0.01, num_iterations=2, loss_type="dapo", eps_high=0.28,
              max_completion_length=12, prompts_per_step=2, num_generations=4)
    train_grpo(path, str(tmp_path / "full"), _cfg(**kw), examples=EXAMPLES, rewards=REWARDS)
    assert train_grpo(path, str(tmp_path / "cut"), _cfg(**kw, stop_after=2), examples=EXAMPLES,
                      rewards=REWARDS) is None
    train_grpo(path, str(tmp_path / "cut"), _cfg(**kw), examples=EXAMPLES, rewards=REWARDS, resume=True)
    full, cut = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(full, cut):
        for key in ("reward", "completion_length", "loss", "kl", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)
    assert full[-1]["kl"] > 0                                         # the reference is used when beta > 0
    w0, w1 = load_file(os.path.join(path, "model.safetensors")), load_file(str(tmp_path / "full/final/model.safetensors"))
    bias = [k for k in w0 if k.endswith("e_score_correction_bias")]
    assert bias and any(not torch.equal(w0[k], w1[k]) for k in bias)


def test_soft_overlong_penalty_ramps_over_the_buffer():
    def overlong_penalty(length: int, max_len: int, buffer: int, weight: float) -> float:
        """The reward of a `length` tokens completion under the `length` reward of that weight (the one knob)."""
        sample = Sample(group=0, example={}, prompt_ids=[1], completion_ids=[5] * length, logprobs=None, text="x",
                        truncated=False)
        reward = CombinedReward({"length": (load_reward("length"), weight)})
        score_samples([sample], reward, GRPOConfig(max_completion_length=max_len, overlong_buffer=buffer))
        return sample.reward

    assert overlong_penalty(80, 100, 20, 1.0) == 0.0
    assert overlong_penalty(90, 100, 20, 1.0) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20, 2.0) == pytest.approx(-2.0)
    assert overlong_penalty(100, 100, 20, 0.0) == 0.0  # off (weight 0, or no `length` in the reward spec)


def test_truncated_completions_are_masked_and_dynamic_sampling_drops_flat_groups(tiny_checkpoint, tmp_path):
    def flat_for_even_prompts(text, ex):
        return 0.0 if int(ex["prompt"][0]["content"].split()[-1][:-1]) % 2 == 0 else len(text) % 3 / 2

    train_grpo(tiny_checkpoint("qwen2"), str(tmp_path), _cfg(max_steps=2, dynamic_sampling=True,
               mask_truncated_completions=True, max_completion_length=6),
               examples=EXAMPLES, rewards=CombinedReward({"digits": (flat_for_even_prompts, 1.0)}))
    m = _metrics(tmp_path)
    assert all(r["frac_reward_zero_std"] < 0.5 for r in m)            # flat (even) groups were replaced
    # a random model almost never stops within 6 tokens; fully truncated steps carry no loss and no gradient
    full = [r for r in m if r["truncated_frac"] == 1.0]
    assert full and all(r["grad_norm"] == 0.0 and r["loss"] == 0.0 for r in full)


@pytest.mark.parametrize("model_type", ["qwen2", "deepseek_v3"])
def test_skipping_groups_of_equal_rewards_changes_nothing_but_the_work(tiny_checkpoint, tmp_path, model_type):
    """Groups whose rewards are all equal have zero advantages, hence zero policy gradient (beta = 0): skipping their
    forward and backward must reach the same parameters as training on them (for the MoE model with its balancing
    off: the balance loss and router-bias loads would otherwise cover the trained groups only)."""
    from safetensors.torch import load_file

    def flat_for_even_prompts(text, ex):
        return 0.0 if int(ex["prompt"][0]["content"].split()[-1][:-1]) % 2 == 0 else len(text) % 5 / 4

    model = tiny_checkpoint(model_type)
    if model_type == "deepseek_v3":
        model = str(tmp_path / "no-balance")
        shutil.copytree(tiny_checkpoint(model_type), model)
        config = os.path.join(model, "config.json")
        with open(config) as f:
            fields = json.load(f)
        with open(config, "w") as f:
            json.dump({**fields, "aux_loss_alpha": 0.0}, f)
    runs = {}
    for skip in (True, False):
        out = tmp_path / f"skip-{skip}"
        train_grpo(model, str(out), _cfg(max_steps=3, micro_batch_size=8, prompts_per_step=4, router_bias_gamma=0.0,
                   max_completion_length=8, sample_every=0, skip_zero_advantage=skip),
                   examples=EXAMPLES, rewards=CombinedReward({"r": (flat_for_even_prompts, 1.0)}))
        runs[skip] = (_metrics(out), load_file(str(out / "final" / "model.safetensors")))
    (m_skip, w_skip), (m_all, w_all) = runs[True], runs[False]
    assert all(r["trained_frac"] == 1.0 for r in m_all)
    assert any(r["trained_frac"] < 1.0 for r in m_skip)         # some flat groups were not run at all
    for a, b in zip(m_skip, m_all):
        assert a["trained_frac"] == pytest.approx(1 - a["frac_reward_zero_std"], abs=0.25 + 1e-9)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    base = load_file(os.path.join(model, "model.safetensors"))
    assert any(not torch.equal(w_all[k], base[k]) for k in w_all)
    for k in w_all:
        assert torch.allclose(w_skip[k], w_all[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.slow
@pytest.mark.parametrize("model_type,fsdp,flat_even", [("qwen2", False, False), ("deepseek_v3", True, False),
                                                       ("deepseek_v3", False, True)])
def test_torchrun_two_processes_match_one_process(tiny_checkpoint, tmp_path, model_type, fsdp, flat_even):
    """Same global batch (4 prompts x 4 completions) on 1 and 2 processes: rollouts are seeded per prompt, so both
    layouts sample the same completions and must reach the same parameters -- for the MoE model also the same
    router biases, whose updates must use the load summed over ranks. flat_even: the prompts that rank 1 draws (odd
    positions of the seeded prompt stream, r1kit.train.grpo.PromptStream) get equal rewards, one group per
    micro-batch: rank 1 trains on filler micro-batches only, which must count for nothing."""
    from safetensors.torch import load_file

    model = tiny_checkpoint(model_type)
    script = tmp_path / "grpo_run.py"
    script.write_text(textwrap.dedent(f"""
        import random
        import sys
        from r1kit.train.config import GRPOConfig
        from r1kit.rewards import CombinedReward
        from r1kit.train.grpo import train_grpo

        order = list(range(16))
        random.Random(0).shuffle(order)                   # PromptStream's epoch-0 order for seed 0
        rank1 = {{order[p] for p in range(1, 16, 2)}}

        def digit_fraction(text, example):
            if {flat_even} and int(example["prompt"][0]["content"].split()[-1][:-1]) in rank1:
                return 0.0
            return sum(ch.isdigit() for ch in text) / max(len(text), 1)

        examples = [{{"prompt": [{{"role": "user", "content": f"Count to {{i}}."}}]}} for i in range(16)]
        cfg = GRPOConfig(num_generations=4, prompts_per_step=4, max_completion_length=10, lr=1e-3, max_steps=3,
                         lr_schedule="constant", micro_batch_size=4 if {flat_even} else 32, sample_every=0, seed=0,
                         fsdp={fsdp} and len(sys.argv) > 2)
        train_grpo({model!r}, sys.argv[1], cfg, examples=examples,
                   rewards=CombinedReward({{"digits": (digit_fraction, 1.0)}}))
    """))
    import r1kit                               # the script must import this checkout of r1kit, not an installed one
    root = os.path.dirname(os.path.dirname(os.path.abspath(r1kit.__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29617 + fsdp), str(script), str(tmp_path / "two"), "distributed"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    keys = ("reward", "reward_std", "completion_length", "loss", "grad_norm")
    for a, b in zip(one, two):  # flat_even: fillers stay out of the logged metrics too
        for key in keys + (("trained_frac",) if flat_even else ()):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
        if flat_even and a["trained_frac"] > 0:  # (a step with nothing to train logs its fillers' entropy)
            # a random model's entropy is ~ln(vocab) everywhere: counting rank 1's fillers would move it by ~1e-5
            assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-6), (a["step"], a["entropy"], b["entropy"])
    assert len({m["reward"] for m in one}) > 1                        # the steps did sample different completions
    if flat_even:
        fracs = [m["trained_frac"] for m in one]                        # rank 1's groups are never trained
        assert max(fracs) <= 0.5 and any(fracs), fracs
    w1 = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    base = load_file(os.path.join(model, "model.safetensors"))
    assert max(float((w1[k] - base[k]).abs().max()) for k in w1) > 1e-3     # training did change the weights
    for k in w1:   # (Adam turns float-rounding differences of near-zero gradients into ~lr-relative ones)
        assert torch.allclose(w1[k], w2[k], atol=2e-5), k
