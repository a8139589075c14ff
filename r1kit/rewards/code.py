"""Code reward: run the completion's program against the example's tests in the sandbox.

Example fields: "tests" (list of Python snippets, e.g. asserts; the score is the fraction that pass),
optional "code_prefix" (e.g. a HumanEval prompt: signature + docstring + imports) put before the completion's code,
optional "timeout_s". The code is the last ```python block of the answer part, else the whole answer part. A
completion that continues the prefix (an indented body) is appended to it; a full definition replaces the stub.
"""
from __future__ import annotations

from r1kit.rewards.extract import code_answer
from r1kit.rewards.sandbox import SandboxLimits, run_tests


def build_program(completion_code: str, prefix: str = "") -> str:
    if not prefix:
        return completion_code
    if completion_code[:1] in (" ", "\t"):  # a continuation of the prefix's function
        return prefix + completion_code
    try:  # a HumanEval stub (signature + docstring) is valid Python; a bare signature needs a body
        compile(prefix, "prefix.py", "exec")
    except SyntaxError:
        prefix = prefix.rstrip("\n") + "\n    pass\n"
    return prefix.rstrip("\n") + "\n\n\n" + completion_code  # the full definition replaces the stub


def code_reward(completion: str, example: dict) -> float:
    tests = example.get("tests")
    if not tests:
        raise ValueError("the code reward needs example['tests'] (a list of Python test snippets)")
    program = build_program(code_answer(completion), example.get("code_prefix", ""))
    return run_tests(program, list(tests), SandboxLimits(wall_s=float(example.get("timeout_s", 10.0))))
