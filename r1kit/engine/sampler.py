"""The sampler: turns one step's logits for a batch of sequences into next tokens, each row with its own params.

The engine core calls it once per step with the last-position logits of every running sequence. It is vectorised
over the batch and the vocabulary; the only Python loops over rows build small per-row tensors and draw the noise
of rows that own a seeded generator (a generator cannot be shared across rows without making draws depend on the
batch).

Interface
    sampler = Sampler(eos_token_ids=[eos], seed=engine_seed)
    out = sampler(logits[B, V], params: list[SamplingParams], generators: list[torch.Generator | None],
                  prompt_ids: list[list[int]] | None, output_ids: list[list[int]] | None) -> SamplerOutput
    out.token_ids     LongTensor[B]            the sampled (or argmax) tokens
    out.logprobs      FloatTensor[B] | None     chosen token's logprob; None when no row has params.logprobs set
    out.top_ids       LongTensor[B, k] | None   k = max(params.logprobs) over the batch (clamped to V); a row that
    out.top_logprobs  FloatTensor[B, k] | None  asked for fewer uses the first params.logprobs columns
  `prompt_ids` / `output_ids` are needed when a row has a penalty or min_tokens > 0 (they may be None otherwise).
  `generators[i]` is None for unseeded rows, which draw from the sampler's own generator seeded with `seed`;
  for a seeded request the engine makes one generator per sample with `make_generator(params.seed, index,
  device)` (seed + index, as vLLM does) and keeps it for the sequence's whole life (also across preemption).

Pipeline, per row, in this order
  1. penalties: repetition (HF/vLLM: every token seen in prompt + output has its logit divided by r if positive,
     multiplied by r if not), then frequency and presence (OpenAI: logit -= frequency * count_in_output +
     presence * [count_in_output > 0]). Counts come from one scatter_add over a padded id tensor; only the
     logits of seen ids are gathered, changed and scattered back.
  1b. logit_bias: the request's {token id: bias} added to those logits (OpenAI's and vLLM's logit_bias).
  1c. structured outputs: `allowed` = (rows, bool mask [len(rows), V]); tokens a row's grammar does not allow
      get -inf (the masks come from r1kit.engine.structured_output, computed by the model runner).
  2. min_tokens: while len(output) < min_tokens, stop_token_ids and the eos ids (unless ignore_eos) get -inf.
  3. logprobs = log_softmax(logits / T) over the full vocabulary (T = 1 for greedy rows): after penalties and
     min_tokens, before any truncation, so they are the logprobs of the temperature-scaled policy.
  4. greedy rows (temperature < 1e-5) take the argmax here (top_k/top_p/min_p do not apply); the rest continue.
  5. temperature: logits / T.
  6. top_k: keep the k largest logits (0 = off).
  7. top_p: of what remains, keep the smallest prefix (by descending probability, renormalised after top_k) whose
     probability reaches top_p; the most likely token is always kept. For 6-7, tokens tied with the last kept
     one are kept too (the cut is a logit threshold, so ties never depend on token order).
  8. min_p: keep tokens with p >= min_p * p_max. p / p_max does not change under renormalisation, so this equals
     applying min_p to the untruncated distribution.
  9. sample p = softmax(kept logits) with the exponential race: token = argmax(p / E), E ~ Exp(1) drawn as V
     values per row from that row's generator, so a seeded row's draw depends only on its generator state and its
     own logits, never on the batch around it (the same holds on CUDA: a row's draw is one call on its generator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from r1kit.engine.sampling_params import SamplingParams

_CANDIDATES = 256  # logits looked at before falling back to a full sort for top_p


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor                   # [B] long
    logprobs: torch.Tensor | None = None      # [B] float32, chosen token
    top_ids: torch.Tensor | None = None       # [B, k] long
    top_logprobs: torch.Tensor | None = None  # [B, k] float32


def make_generator(seed: int, sample_index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of sample `sample_index` of a request with `seed` (seed + index, like vLLM's n > 1)."""
    return torch.Generator(device=device).manual_seed((seed + sample_index) % 2**64)


def padded_ids(seqs: Sequence[Sequence[int]], pad: int, device: torch.device | str) -> torch.Tensor:
    """[R, max_len] long tensor of the sequences, right-padded with `pad` (ids outside [0, pad) also become pad)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in seqs], dtype=torch.long).reshape(len(seqs), width)
    ids = ids.to(device)
    return ids.masked_fill_((ids < 0) | (ids > pad), pad)


def token_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, V + 1] float32 count of each id in each row of padded ids [R, L] (pad = V lands in the last column)."""
    counts = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.float32, device=ids.device)
    return counts.scatter_add_(1, ids, torch.ones(ids.shape, dtype=torch.float32, device=ids.device))


def apply_penalties(logits: torch.Tensor, params: Sequence[SamplingParams], prompt_ids: Sequence[Sequence[int]],
                    output_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Penalised copy of logits [R, V] for rows with `params`; see the module docstring (step 1) for semantics.

    Only the logits of seen ids are touched: they are gathered, penalised and scattered back (a token seen several
    times is written several times with the same value), so the cost is one count pass plus O(seen ids)."""
    dev, (R, V) = logits.device, logits.shape
    out_ids = padded_ids(output_ids, V, dev)
    out_counts = token_counts(out_ids, V)                                      # [R, V + 1]
    seen = out_ids
    if any(p.repetition_penalty != 1 for p in params):
        seen = padded_ids([list(a) + list(b) for a, b in zip(prompt_ids, output_ids)], V, dev)
    rep, freq, pres = torch.tensor([[p.repetition_penalty, p.frequency_penalty, p.presence_penalty] for p in params],
                                   dtype=torch.float32).reshape(R, 3).to(dev).unbind(1)
    ext = torch.nn.functional.pad(logits, (0, 1))                             # [R, V + 1]; pad column is scratch
    vals, counts = ext.gather(1, seen), out_counts.gather(1, seen)             # [R, L]
    vals = torch.where(vals > 0, vals / rep[:, None], vals * rep[:, None])     # repetition, on prompt + output
    vals = vals - freq[:, None] * counts - pres[:, None] * (counts > 0).float()  # OpenAI, on output only
    return ext.scatter_(1, seen, vals)[:, :V]


class Sampler:
    """Batched sampling with per-row SamplingParams; call it with one step's logits (see the module docstring)."""

    def __init__(self, eos_token_ids: int | Sequence[int] | None = None, seed: int = 0):
        if isinstance(eos_token_ids, int):
            eos_token_ids = [eos_token_ids]
        self.eos_token_ids = list(eos_token_ids or [])
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}  # for unseeded rows, one per device

    def default_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed % 2**64)
        return self._generators[key]

    def __call__(self, logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[torch.Generator | None] | None = None,
                 prompt_ids: Sequence[Sequence[int]] | None = None,
                 output_ids: Sequence[Sequence[int]] | None = None,
                 allowed: tuple[list[int], torch.Tensor] | None = None) -> SamplerOutput:
        B, V = logits.shape
        if len(params) != B:
            raise ValueError(f"got {len(params)} SamplingParams for {B} rows of logits")
        generators = list(generators) if generators is not None else [None] * B
        logits = logits.float()
        dev = logits.device

        pen_rows = [i for i, p in enumerate(params) if p.has_penalties]
        min_rows = [i for i, p in enumerate(params) if p.min_tokens > 0]
        bias_rows = [i for i, p in enumerate(params) if p.logit_bias]
        want_lp = any(p.logprobs is not None for p in params)
        all_greedy = all(p.is_greedy for p in params)
        if all_greedy and not pen_rows and not min_rows and not bias_rows and not want_lp and not allowed:
            return SamplerOutput(token_ids=logits.argmax(dim=-1))

        if pen_rows:
            _require(output_ids, "output_ids", "penalties")
            if any(params[i].repetition_penalty != 1 for i in pen_rows):
                _require(prompt_ids, "prompt_ids", "repetition_penalty")
            sub = (lambda seqs: [seqs[i] for i in pen_rows]) if len(pen_rows) < B else (lambda seqs: seqs)
            prompts = sub(prompt_ids) if prompt_ids is not None else [[]] * len(pen_rows)
            if len(pen_rows) == B:
                logits = apply_penalties(logits, params, prompts, output_ids)  # a new tensor: the input is kept
            else:
                idx = torch.tensor(pen_rows, device=dev)
                logits = logits.clone()
                logits[idx] = apply_penalties(logits[idx], sub(params), prompts, sub(output_ids))
        if bias_rows:
            logits = _add_logit_bias(logits if pen_rows else logits.clone(), params, bias_rows)
        if allowed:
            rows, mask = allowed
            logits = logits if (pen_rows or bias_rows) else logits.clone()
            idx = torch.tensor(rows, device=dev)
            logits[idx] = logits[idx].masked_fill(~mask.to(dev), -math.inf)
        if min_rows:
            _require(output_ids, "output_ids", "min_tokens")
            logits = self._mask_stop_ids(logits if (pen_rows or bias_rows or allowed) else logits.clone(), params,
                                         min_rows, output_ids)

        # per-row scalars in one transfer: temperature (1 for greedy), top_k (V when off), top_p, min_p
        rows = torch.tensor([[1.0 if p.is_greedy else p.temperature, float(min(p.top_k or V, V)), p.top_p, p.min_p]
                             for p in params], dtype=torch.float32).to(dev)
        temp = rows[:, 0:1]

        sampled = [i for i, p in enumerate(params) if not p.is_greedy]
        if len(sampled) == B:  # no greedy row: skip the argmax and the row gather/scatter
            out = SamplerOutput(token_ids=self._sample(logits / temp, rows, params, generators))
        else:
            out = SamplerOutput(token_ids=logits.argmax(dim=-1))
            if sampled:
                srows = torch.tensor(sampled, device=dev)
                out.token_ids[srows] = self._sample(logits[srows] / temp[srows], rows[srows],
                                                    [params[i] for i in sampled], [generators[i] for i in sampled])

        if want_lp:
            lp = torch.log_softmax(logits / temp, dim=-1)
            out.logprobs = lp.gather(1, out.token_ids[:, None]).squeeze(1)
            k = min(max(p.logprobs or 0 for p in params), V)
            if k > 0:
                out.top_logprobs, out.top_ids = lp.topk(k, dim=-1)
        return out

    def _sample(self, x: torch.Tensor, rows: torch.Tensor, params, generators) -> torch.Tensor:
        """Tokens [R] drawn from temperature-scaled logits x [R, V] after top_k, top_p and min_p (steps 6-9)."""
        V = x.shape[1]
        if any(0 < p.top_k < V or p.top_p < 1 for p in params):
            max_k = max((p.top_k for p in params if p.top_k < V), default=0)
            x = _top_k_top_p(x, rows[:, 1].long(), rows[:, 2], max_k)
        if any(p.min_p > 0 for p in params):
            x = _min_p(x, rows[:, 3])
        noise = self._exponential_noise(generators, V, x.device)
        return x.softmax(dim=-1).div_(noise).argmax(dim=-1)

    def _mask_stop_ids(self, logits, params, rows, output_ids):
        V = logits.shape[1]
        r_idx, t_idx = [], []
        for i in rows:
            p = params[i]
            if len(output_ids[i]) >= p.min_tokens:
                continue
            ids = set(p.stop_token_ids) | (set() if p.ignore_eos else set(self.eos_token_ids))
            ids = [t for t in ids if 0 <= t < V]
            r_idx += [i] * len(ids)
            t_idx += ids
        if r_idx:
            logits[torch.tensor(r_idx, device=logits.device), torch.tensor(t_idx, device=logits.device)] = -math.inf
        return logits

    def _exponential_noise(self, generators: list, V: int, dev) -> torch.Tensor:
        """[R, V] Exp(1) draws; a seeded row draws its V values from its own generator only.

        Drawn as -log(U), U ~ U[0, 1): on CPU torch.rand + log is ~2x faster than exponential_(); U = 0 gives
        E = inf and p / E = 0, never NaN."""
        noise = torch.empty(len(generators), V, dtype=torch.float32, device=dev)
        shared = [j for j, g in enumerate(generators) if g is None]
        if len(shared) == len(generators):
            noise.uniform_(generator=self.default_generator(dev))
        else:
            if shared:
                draws = torch.empty(len(shared), V, dtype=torch.float32, device=dev)
                noise[torch.tensor(shared, device=dev)] = draws.uniform_(generator=self.default_generator(dev))
            for j, g in enumerate(generators):
                if g is not None:
                    noise[j].uniform_(generator=g)
        return noise.log_().neg_().clamp_min_(torch.finfo(torch.float32).tiny)  # CUDA's U may be 1: no E = 0


def _add_logit_bias(logits: torch.Tensor, params, rows: list[int]) -> torch.Tensor:
    """logits [R, V] with each row's logit_bias added in place (ids >= V are refused by the engine beforehand)."""
    r_idx, t_idx, vals = [], [], []
    for i in rows:
        for t, b in params[i].logit_bias.items():
            r_idx.append(i)
            t_idx.append(t)
            vals.append(b)
    dev = logits.device
    logits.index_put_((torch.tensor(r_idx, device=dev), torch.tensor(t_idx, device=dev)),
                      torch.tensor(vals, dtype=logits.dtype, device=dev), accumulate=True)
    return logits


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int):
    """(logprob of token_ids[i] in row i [N], top-k logprobs [N, k], their ids [N, k]) of raw logits [N, V]: the
    log_softmax of the model's own distribution (prompt logprobs, as vLLM reports them). k = 0: no top-k."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, token_ids[:, None]).squeeze(1)
    if k <= 0:
        return chosen, None, None
    top_lp, top_ids = lp.topk(min(k, lp.shape[1]), dim=-1)
    return chosen, top_lp, top_ids


def _top_k_top_p(x: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, max_k: int) -> torch.Tensor:
    """x [R, V] with -inf where top_k [R] (V = off), then top_p [R] (1 = off) remove a token.

    Avoids sorting the vocabulary (slow on CPU): the K = max(256, max finite top_k) largest logits decide the cut
    of every row whose kept set lies inside them; only the other rows (top_p over a flat distribution) are sorted.
    Ties at the cut are all kept."""
    R, V = x.shape
    K = min(V, max(_CANDIDATES, max_k))
    vals = x.topk(K, dim=-1).values                                             # [R, K], descending
    in_k = torch.arange(K, device=x.device)[None, :] < top_k[:, None]
    lse = torch.where(top_k <= K, vals.masked_fill(~in_k, -math.inf).logsumexp(-1), x.logsumexp(-1))
    probs = (vals - lse[:, None]).exp().masked_fill_(~in_k, 0)                 # renormalised over the top k
    ahead = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))       # mass strictly ahead of each token
    keep = in_k & ((ahead < top_p[:, None]) | (top_p[:, None] >= 1))
    cut = vals.gather(1, keep.sum(-1, keepdim=True) - 1)                       # smallest kept logit
    cut = torch.where(((top_k > K) & (top_p >= 1))[:, None], -math.inf, cut)   # nothing removed
    out = x.masked_fill(x < cut, -math.inf)
    unresolved = (top_k > K) & (top_p < 1) & (probs.sum(-1) < top_p)           # cut lies beyond the candidates
    if K < V and bool(unresolved.any()):
        rows = unresolved.nonzero().squeeze(1)
        out[rows] = _top_k_top_p_sorted(x[rows], top_k[rows], top_p[rows])
    return out


def _top_k_top_p_sorted(x: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Reference version of _top_k_top_p over the fully sorted vocabulary."""
    V = x.shape[1]
    xs, order = x.sort(dim=-1, descending=True, stable=True)
    drop = torch.arange(V, device=x.device)[None, :] >= top_k[:, None]          # top_k, in sorted order
    probs = xs.masked_fill(drop, -math.inf).softmax(dim=-1)                     # renormalised over the top k
    ahead = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))
    drop |= (ahead >= top_p[:, None]) & (top_p[:, None] < 1)
    return x.masked_fill(torch.empty_like(drop).scatter_(1, order, drop), -math.inf)


def _min_p(x: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """x [R, V] with -inf where p < min_p [R] * p_max, i.e. logit - max_logit < log(min_p)."""
    return x.masked_fill(x - x.max(dim=-1, keepdim=True).values < min_p.log()[:, None], -math.inf)


def _require(value, name: str, why: str):
    if value is None:
        raise ValueError(f"Sampler needs {name} when a row uses {why}")
