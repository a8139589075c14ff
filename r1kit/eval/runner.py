"""Generate and score: tasks -> problems -> samples from a backend -> one scored record per sample.

Shared by `r1kit eval` and `r1kit distill`. Scoring always goes through the task's own scorer (`Task.score`: the
example's verifier, e.g. math-verify or the code sandbox) on the completion (see below), in a thread
pool so that the engine keeps generating while samples are checked. Every record is appended to the run's
samples.jsonl the moment it is scored; on restart, the (task, problem, sample) triples already there are skipped.

What is scored, for chat prompts: reasoning_content + "\\n</think>\\n\\n" + content as the chat API returns them (the
local engine builds the same fields), or the reasoning alone when no answer came back (the thinking never closed:
no answer, a format error). With --no-thinking the prompt already closed the thinking block, so "</think>\\n\\n" is
put before the answer (r1kit.rewards.extract: text without "</think>" has no answer). Raw-text prompts
(template=r1_zero): the completion's text as generated.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from r1kit.errors import UserError
from r1kit.eval.backends import Generation, Job
from r1kit.eval.config import GenerationConfig
from r1kit.eval.samples import JsonlLog

Key = tuple[str, int, int]  # (task spec, problem index, sample index)


@dataclass
class Problem:
    task_name: str          # the task spec as given
    index: int
    example: dict
    task: Any               # r1kit.tasks.Task: its scorer checks the samples
    chat: bool
    prompt: Any             # chat messages or raw text
    prompt_hash: str
    seed: int


def load_problems(cfg: GenerationConfig) -> dict[str, list[Problem]]:
    """The problems of each task (the first `limit` when set), in the task's order."""
    from r1kit.tasks import load_task

    out = {}
    for spec in cfg.tasks:
        task = load_task(spec)
        examples = task.examples[:cfg.limit] if cfg.limit else task.examples
        problems = []
        for i, ex in enumerate(examples):
            if "messages" in ex:
                chat, prompt = True, ex["messages"]
            elif isinstance(ex.get("prompt"), str):
                chat, prompt = False, ex["prompt"]
            else:
                raise UserError(f"task {spec!r}: example {i} has neither 'messages' nor a 'prompt' string")
            digest = hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            seed = int(hashlib.sha256(f"{cfg.seed}|{spec}|{i}".encode()).hexdigest()[:8], 16) >> 1  # < 2**31
            problems.append(Problem(spec, i, ex, task, chat, prompt, digest[:16], seed))
        if not problems:
            raise UserError(f"task {spec!r} has no problems")
        out[spec] = problems
    return out


def scored_completion(gen: Generation, chat: bool, thinking: bool) -> str:
    """The text the task's scorer sees (see the module docstring)."""
    if not chat:
        return gen.text or ""
    if not thinking:
        return "</think>\n\n" + (gen.content or "")
    if gen.reasoning is None:  # not split (a server without a reasoning parser): the raw text is in content
        return gen.content or ""
    return f"{gen.reasoning}\n</think>\n\n{gen.content}" if gen.content else gen.reasoning


def score_record(problem: Problem, gen: Generation, thinking: bool, run: int) -> dict:
    """One samples.jsonl record: the sample, what was extracted from it and the task's verdict."""
    from r1kit.rewards.extract import code_answer, final_answer, split_reasoning

    completion = scored_completion(gen, problem.chat, thinking)
    reasoning, answer = split_reasoning(completion)
    code = problem.example.get("verifier") == "code"
    extracted = code_answer(completion) if code else final_answer(completion)
    score = float(problem.task.score(completion, problem.example))
    answer_tokens = None if gen.reasoning_tokens is None else gen.completion_tokens - gen.reasoning_tokens
    return {"task": problem.task_name, "problem": problem.index, "sample": gen.sample,
            "seed": problem.seed + gen.sample, "prompt": problem.prompt, "prompt_hash": problem.prompt_hash,
            "gold": problem.example.get("answer"), "reasoning": reasoning, "answer": answer, "extracted": extracted,
            "score": score, "correct": score >= 1.0 - 1e-9, "format_error": not extracted.strip(),
            "completion": completion, "finish_reason": gen.finish_reason, "completion_tokens": gen.completion_tokens,
            "reasoning_tokens": gen.reasoning_tokens, "answer_tokens": answer_tokens,
            "latency_s": gen.end - gen.start, "start": gen.start, "end": gen.end, "run": run}


def check_resumable(records: list[dict], problems: dict[str, list[Problem]], where: str) -> None:
    """Existing records must describe the same prompts (else the task's data changed under the run)."""
    by_key = {(p.task_name, p.index): p for ps in problems.values() for p in ps}
    for r in records:
        p = by_key.get((r.get("task"), r.get("problem")))
        if p is not None and r.get("prompt_hash") != p.prompt_hash:
            raise UserError(f"{where} holds problem {p.index} of task {p.task_name!r} with a different prompt: the "
                            "task's data changed since that run; use a new output location")


def generate(cfg: GenerationConfig, backend, problems: dict[str, list[Problem]], log: JsonlLog | None,
             progress: bool = True, on_record: Callable[[dict], None] | None = None) -> tuple[list[dict], int]:
    """Generate and score every (problem, sample < n) not yet in `log`. Returns all records of these problems (old
    and new) and the number of this invocation ("run" in the records). `on_record` sees each new record right after
    it is saved (from a scoring thread, one at a time)."""
    old = log.records if log is not None else []
    run = 1 + max((int(r.get("run", 0)) for r in old), default=0)
    done: set[Key] = {(r["task"], r["problem"], r["sample"]) for r in old}
    jobs = []
    for ps in problems.values():
        for p in ps:
            missing = [j for j in range(cfg.n) if (p.task_name, p.index, j) not in done]
            if missing:
                jobs.append(Job(key=p, label=f"task {p.task_name!r}, problem {p.index}", chat=p.chat,
                                prompt=p.prompt, samples=missing, seed=p.seed))
    new: list[dict] = []
    todo = sum(len(j.samples) for j in jobs)
    if todo:
        _generate_jobs(cfg, backend, jobs, log, new, todo, run, progress, on_record)
    wanted = {(p.task_name, p.index) for ps in problems.values() for p in ps}
    keep = {}
    for r in [*old, *new]:
        if (r["task"], r["problem"]) in wanted and r["sample"] < cfg.n:
            keep[(r["task"], r["problem"], r["sample"])] = r  # a duplicate (two runs at once) keeps the later one
    return list(keep.values()), run


def _generate_jobs(cfg, backend, jobs, log, new, todo, run, progress, on_record) -> None:
    from tqdm.auto import tqdm

    lock = threading.Lock()
    bar = tqdm(total=todo, desc="samples", unit="sample", dynamic_ncols=True, disable=not progress)
    futures: list[Future] = []
    correct = [0]

    def finish(record: dict) -> None:
        with lock:
            if log is not None:
                log.append(record)
            new.append(record)
            correct[0] += record["correct"]
            bar.update(1)
            bar.set_postfix_str(f"acc {correct[0] / len(new):.3f}", refresh=False)
            if on_record is not None:
                on_record(record)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="r1kit-score") as pool:
        def on_result(job: Job, gen: Generation) -> None:
            f = pool.submit(score_record, job.key, gen, cfg.thinking, run)
            f.add_done_callback(lambda f: f.exception() is None and finish(f.result()))
            futures.append(f)

        try:
            backend.run(jobs, on_result)
        finally:
            for f in list(futures):
                f.exception()  # wait for every scoring job, so that no record is lost
            bar.close()
    for f in futures:
        f.result()  # a scorer that raised: report it (the other samples are saved)
