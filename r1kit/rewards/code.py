"""Code reward: run the completion's program against the example's tests in the sandbox.

Example fields: "tests" (list of Python snippets, e.g. asserts; the score is the fraction that pass),
optional "code_prefix" (e.g. a HumanEval prompt: signature + docstring + imports) put before the completion's code,
optional "timeout_s", optional "site_packages" (true: the sandbox shows the interpreter's site-packages, e.g. for
numpy; hidden by default, as they may hold answer keys). The code is the last ```python block of the answer part,
else the whole answer part. A completion that continues the prefix (an indented body) is appended to it; a full
definition replaces the stub.

The tests run on the other side of the sandbox's boundary (`sandbox.test_program`): the completion cannot reach the
pass count, and its values arrive as plain data. The prefix is trusted: it also runs on the tests' side, so the tests
see its helpers (e.g. HumanEval's `poly`), not a completion's redefinition of them.
"""
from __future__ import annotations

from r1kit.rewards.extract import code_answer
from r1kit.rewards.sandbox import SandboxLimits, run_tests


def runnable_prefix(prefix: str) -> str:
    """The prefix as a module: a HumanEval stub (signature + docstring) is valid Python; a bare signature gets a
    body."""
    try:
        compile(prefix, "prefix.py", "exec")
        return prefix
    except SyntaxError:
        return prefix.rstrip("\n") + "\n    pass\n"


def build_program(completion_code: str, prefix: str = "") -> str:
    if not prefix:
        return completion_code
    if completion_code[:1] in (" ", "\t"):  # a continuation of the prefix's function
        return prefix + completion_code
    return runnable_prefix(prefix).rstrip("\n") + "\n\n\n" + completion_code  # a full definition replaces the stub


def code_reward(completion: str, example: dict) -> float:
    tests = example.get("tests")
    if not tests:
        raise ValueError("the code reward needs example['tests'] (a list of Python test snippets)")
    prefix = example.get("code_prefix", "")
    program = build_program(code_answer(completion), prefix)
    trusted = runnable_prefix(prefix) if prefix else ""
    try:
        compile(trusted, "prefix.py", "exec")
    except SyntaxError:  # a prefix that is no module even with a body: the program alone decides (and fails)
        trusted = ""
    limits = SandboxLimits(wall_s=float(example.get("timeout_s", 10.0)),
                           site_packages=bool(example.get("site_packages", False)))
    return run_tests(program, list(tests), limits, prefix=trusted)
