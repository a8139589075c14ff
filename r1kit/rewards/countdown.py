"""Countdown: reach the target with the given numbers and + - * / -- checked by a hand-written parser, never eval.

Rules (the TinyZero / reasoning-gym convention; reasoning-gym's score_answer requires the sorted numbers used to
equal the given ones): every given number is used exactly once (a number given twice may be used twice), no other
numbers appear; only binary + - * / and parentheses; operands are non-negative integer literals as written
(no unary minus, decimals, exponents, concatenation, names or calls); arithmetic is exact (fractions), so
intermediate fractions are allowed but the result must equal the target exactly; division by zero scores 0.
The expression is the final answer (\\boxed{} or <answer>), optionally followed by "= target".
"""
from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from r1kit.rewards.extract import final_answer

_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))")


class CountdownSyntaxError(ValueError):
    pass


def _tokenize(expr: str) -> list[str]:
    tokens, pos = [], 0
    for written, op in (("\\times", "*"), ("×", "*"), ("\\cdot", "*"), ("÷", "/"), ("\\div", "/")):
        expr = expr.replace(written, op)
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if not m:
            raise CountdownSyntaxError(f"unexpected {expr[pos:].strip()[:10]!r}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    return tokens


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """(exact value, integer literals used) of an expression over + - * / and parentheses; raises ValueError."""
    tokens = _tokenize(expr)
    numbers: list[int] = []
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expression():  # term (('+'|'-') term)*
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term():  # factor (('*'|'/') factor)*
        value = factor()
        while peek() in ("*", "/"):
            op, rhs = take(), factor()
            if op == "/" and rhs == 0:
                raise CountdownSyntaxError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor():  # number | '(' expression ')'
        tok = peek()
        if tok is None:
            raise CountdownSyntaxError("expression ends early")
        if tok == "(":
            take()
            value = expression()
            if peek() != ")":
                raise CountdownSyntaxError("missing ')'")
            take()
            return value
        if tok.isdigit():
            take()
            if len(tok) > 1 and tok[0] == "0":
                raise CountdownSyntaxError("numbers may not have leading zeros")
            numbers.append(int(tok))
            return Fraction(int(tok))
        raise CountdownSyntaxError(f"unexpected {tok!r}")

    if not tokens:
        raise CountdownSyntaxError("empty expression")
    value = expression()
    if pos != len(tokens):
        raise CountdownSyntaxError(f"unexpected {tokens[pos]!r}")
    return value, numbers


def check_countdown(expr: str, numbers: list[int], target: int) -> bool:
    """True if `expr` uses each of `numbers` exactly once and evaluates exactly to `target`."""
    expr = expr.strip().rstrip(".")
    if "=" in expr:  # "3 * (4 + 5) = 27": the right side must be the target itself
        expr, _, rhs = expr.partition("=")
        if rhs.strip() != str(target):
            return False
    try:
        value, used = evaluate(expr)
    except (ValueError, ZeroDivisionError):
        return False
    return Counter(used) == Counter(int(n) for n in numbers) and value == target


def countdown_reward(completion: str, example: dict) -> float:
    """1.0 if the final answer solves the countdown problem in example["metadata"] (numbers, target)."""
    meta = example.get("metadata") or {}
    return float(check_countdown(final_answer(completion), meta["numbers"], int(meta["target"])))
