"""GRPO's packed rows (each prompt once, then its completions) compute exactly what separate sequences compute."""
import pytest
import torch

from r1kit.train.group_packing import pack_groups, packed_logprobs
from r1kit.train.losses import token_logprobs
from r1kit.train.rollout import Sample


def _samples(vocab: int, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for group, (p_len, c_lens) in enumerate([(7, [5, 1, 9]), (4, [0, 8, 3]), (9, [6, 6, 2])]):
        prompt = torch.randint(3, vocab, (p_len,), generator=g).tolist()
        for c in c_lens:
            comp = torch.randint(3, vocab, (c,), generator=g).tolist()
            out.append(Sample(group=group, example={}, prompt_ids=prompt, completion_ids=comp,
                              logprobs=[-1.0] * c, text="", truncated=False))
    return out


def _separate_logprobs(model, samples, temperature):
    """Reference: every prompt + completion as its own sequence through the plain causal forward."""
    out = []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(ids)[:, len(s.prompt_ids) - 1:-1]
        lp, _ = token_logprobs(logits, torch.tensor([s.completion_ids]), temperature)
        out.append(lp[0])
    return out


@pytest.mark.parametrize("model_type", ["deepseek_v3", "qwen2"])
def test_packed_rows_give_the_same_logprobs_and_gradients_as_separate_sequences(tiny_checkpoint, model_type):
    from r1kit.models.checkpoint import load_model

    model = load_model(tiny_checkpoint(model_type), dtype=torch.float32).train()
    model.config.aux_loss_alpha = 0.0
    samples = _samples(model.config.vocab_size)
    weights = torch.linspace(-1.0, 2.0, len(samples))

    ref = _separate_logprobs(model, samples, 0.7)
    sum(w * lp.sum() for w, lp in zip(weights, ref)).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    batch = pack_groups(samples, 3, 0, torch.device("cpu"))
    assert batch.ids.shape[0] == 3                                    # one row per prompt
    logp, _ = packed_logprobs(model, batch, 0.7)
    assert torch.equal(batch.mask.sum(1), torch.tensor([float(len(s.completion_ids)) for s in samples]))
    for i, (s, lp) in enumerate(zip(samples, ref)):
        n = len(s.completion_ids)
        assert torch.allclose(logp[i, :n], lp, atol=1e-5), (i, (logp[i, :n] - lp).abs().max())
    (logp * batch.mask * weights[:, None]).sum().backward()
    for name, p in model.named_parameters():
        if name in ref_grads:
            assert torch.allclose(p.grad, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_on_cpu_stays_close_to_float32_with_float32_gradients(tiny_checkpoint):
    from r1kit.models.checkpoint import load_model
    from r1kit.train.precision import autocast_context

    model = load_model(tiny_checkpoint("deepseek_v3"), dtype=torch.float32).train()
    model.config.aux_loss_alpha = 0.0
    samples = _samples(model.config.vocab_size)
    batch = pack_groups(samples, 3, 0, torch.device("cpu"))
    runs = []
    for dtype in ("float32", "bf16"):
        with autocast_context(torch.device("cpu"), dtype):
            logp, _ = packed_logprobs(model, batch, 1.0)
        (logp * batch.mask).sum().backward()
        runs.append((logp.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    (lp32, g32), (lp16, g16) = runs
    real = batch.mask.bool()
    diff = (lp16 - lp32)[real].abs().max()
    assert 0 < diff < 0.1                      # bf16 really ran (not bit-equal), and stayed close
    assert g16.keys() == g32.keys()
    for name, g in g16.items():                # master weights and their gradients stay float32
        assert g.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(g.flatten(), g32[name].flatten(), dim=0)
        assert cos > 0.999, (name, cos)          # (0.87 for the router when it routed in bf16)


def test_rows_of_fewer_completions_than_the_group_split_it(tiny_checkpoint):
    from r1kit.models.checkpoint import load_model

    model = load_model(tiny_checkpoint("qwen2"), dtype=torch.float32).eval()
    samples = _samples(model.config.vocab_size, seed=1)
    with torch.no_grad():
        full, _ = packed_logprobs(model, pack_groups(samples, 3, 0, torch.device("cpu")), 1.0)
        single, _ = packed_logprobs(model, pack_groups(samples, 1, 0, torch.device("cpu")), 1.0)
    c = single.shape[1]
    assert torch.allclose(full[:, :c], single, atol=1e-5)


def test_a_row_mixing_two_prompts_is_refused():
    samples = _samples(50)
    with pytest.raises(ValueError, match="different prompts"):
        pack_groups(samples[2:5], 3, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="rows of 2"):
        pack_groups(samples[:3], 2, 0, torch.device("cpu"))
