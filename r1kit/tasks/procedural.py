"""Built-in procedural tasks for tiny models: multi-digit arithmetic with carries, and countdown.

Each has difficulty knobs, a step-by-step reference solution (the <think> body a cold-start SFT target needs) and
held-out splits: the train and test streams use different seeds, and every problem is assigned to one split by a hash
of its text (1 in 10 to test), so a test problem never appears in any train set, whatever the seeds.
"""
from __future__ import annotations

import random
from fractions import Fraction

from r1kit.errors import UserError
from r1kit.tasks.base import Task, pop_params, split_of
from r1kit.tasks.templates import apply_template, format_completion


def _generate(make, n: int, seed: int, split: str, name: str) -> list[dict]:
    rng = random.Random(f"{name}:{split}:{seed}")
    out, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        ex = make(rng)
        if ex is None:
            continue
        key = ex["metadata"].get("problem", ex["question"])   # the split follows the problem, not its wording
        if split_of(key) == split and ex["question"] not in seen:
            seen.add(ex["question"])
            out.append(ex)
    raise UserError(f"task {name!r}: could not make {n} distinct {split} problems at this difficulty; lower n")


# --- arithmetic -------------------------------------------------------------------------------------------------

def _digits(x: int) -> list[int]:
    return [int(c) for c in reversed(str(x))]


PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions")


def place_name(i: int) -> str:
    """The name of the i-th digit place from the right (0: ones)."""
    return PLACES[i] if i < len(PLACES) else f"10^{i}s"


def place_values(x: int, places: int) -> str:
    """'4738' -> '4 thousands 7 hundreds 3 tens 8 ones' (zero-padded to `places` places)."""
    d = _digits(x) + [0] * (places - len(str(x)))
    return " ".join(f"{d[i]} {place_name(i)}" for i in reversed(range(places)))


def _addition_steps(a: int, b: int) -> list[str]:
    """Place by place from the ones up, after naming every digit's place: the place names make each step's digits
    something to look up by name rather than by counting positions, which small models learn far faster."""
    places = max(len(str(a)), len(str(b)))
    da, db = _digits(a) + [0] * places, _digits(b) + [0] * places
    out, carry, written = [f"{a} is {place_values(a, places)}.", f"{b} is {place_values(b, places)}."], 0, 0
    for i in range(places):
        s = da[i] + db[i] + carry
        out.append(f"{place_name(i)}: {da[i]} + {db[i]}" + (f" + {carry}" if carry else "") + f" = {s}, write {s % 10}"
                   + (f" carry {s // 10}." if s >= 10 else "."))
        carry, written = s // 10, written + 1
    if carry:
        out.append(f"{place_name(places)}: write the carry {carry}.")
        written += 1
    out.append(f"So the sum is {place_values(a + b, written)} = {a + b}.")
    return out


def _subtraction_steps(a: int, b: int) -> list[str]:
    out = []
    if a < b:
        out.append(f"{a} is smaller than {b}, so compute {b} - {a} and make it negative.")
        a, b = b, a
    da, db, borrow = _digits(a), _digits(b), 0
    for i in range(len(da)):
        x, y = da[i] - borrow, (db[i] if i < len(db) else 0)
        note = " (after lending 1)" if borrow else ""
        if x < y:
            out.append(f"Column {i + 1} from the right: {x}{note} is less than {y}, borrow 10: "
                       f"{x + 10} - {y} = {x + 10 - y}.")
            borrow = 1
        else:
            out.append(f"Column {i + 1} from the right: {x}{note} - {y} = {x - y}.")
            borrow = 0
    return out


def _multiplication_steps(a: int, b: int) -> list[str]:
    out, total = [], 0
    for i, d in enumerate(_digits(b)):
        part = a * d * 10 ** i
        out.append(f"{a} * {d * 10 ** i} = {part}.")
        if i:
            out.append(f"Running sum: {total} + {part} = {total + part}.")
        total += part
    return out


_OPS = {"+": (lambda a, b: a + b, _addition_steps), "-": (lambda a, b: a - b, _subtraction_steps),
        "*": (lambda a, b: a * b, _multiplication_steps)}


def _has_carry(a: int, b: int, op: str) -> bool:
    da, db = _digits(a), _digits(b)
    if op == "+":
        return any(x + y >= 10 for x, y in zip(da, db))
    if op == "-":
        hi, lo = (da, db) if a >= b else (db, da)
        return any(x < y for x, y in zip(hi, lo))
    return True


def arithmetic_reference(example: dict) -> str:
    m = example["metadata"]
    a, b, op = m["a"], m["b"], m["op"]
    steps = _OPS[op][1](a, b)
    result = int(example["answer"])
    if op == "+":
        reasoning = f"I add {a} + {b} place by place.\n" + "\n".join(steps)
    else:
        check = {"-": f"{result} + {b} = {a}", "*": f"{result} / {b} = {a}"}[op]
        reasoning = f"I need to compute {a} {op} {b}. I'll work it out step by step.\n" + "\n".join(steps)
        reasoning += f"\nSo {a} {op} {b} = {result}. Let me check by inverting it: {check}. Correct."
    return format_completion(example, reasoning, example["answer"])


PHRASINGS = ("Compute {a} {op} {b}.", "What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "{a} {op} {b} = ?",
             "Work out {a} {op} {b}.", "Find {a} {op} {b}.")


def load_arithmetic(arg: str, params: dict) -> Task:
    """`arithmetic?digits=3&min_digits=&ops=+-*&carries=true&phrasing=fixed|varied`: a op b with operands of
    min_digits..digits digits (each drawn on its own; min_digits defaults to digits). phrasing=varied words the
    question in several ways ("What is 12 + 30?", "Calculate ..."); the split is by the problem, not its wording."""
    p = pop_params(params, "arithmetic", digits=3, min_digits=0, ops="+-*", carries=True, n=200, seed=0,
                   split="train", template="r1_distill", phrasing="fixed")
    digits, min_digits = int(p["digits"]), int(p["min_digits"]) or int(p["digits"])
    if not 1 <= min_digits <= digits <= 30:
        raise UserError(f"arithmetic: need 1 <= min_digits <= digits <= 30, got min_digits={min_digits}, "
                        f"digits={digits}")
    ops = str(p["ops"])
    if not ops or any(o not in _OPS for o in ops):
        raise UserError(f"arithmetic: ops must be a string of + - *, got {ops!r}")
    if p["phrasing"] not in ("fixed", "varied"):
        raise UserError(f"arithmetic: phrasing must be fixed or varied, got {p['phrasing']!r}")

    def operand(rng):
        n = rng.randint(min_digits, digits)
        return rng.randint(10 ** (n - 1) if n > 1 else 0, 10 ** n - 1)

    def make(rng):
        a, b, op = operand(rng), operand(rng), rng.choice(ops)
        if p["carries"] and not _has_carry(a, b, op):
            return None
        wording = rng.choice(PHRASINGS) if p["phrasing"] == "varied" else PHRASINGS[0]
        ex = {"question": wording.format(a=a, op=op, b=b), "answer": str(_OPS[op][0](a, b)), "verifier": "numeric",
              "metadata": {"task": "arithmetic", "a": a, "b": b, "op": op, "problem": f"{a} {op} {b}"}}
        return apply_template(ex, p["template"])

    digit_range = f"{min_digits}-{digits}" if min_digits < digits else str(digits)
    examples = _generate(make, int(p["n"]), int(p["seed"]), p["split"], f"arithmetic:{digit_range}:{ops}")
    return Task(f"arithmetic?digits={digit_range}&ops={ops}", examples, reference=arithmetic_reference)


# --- countdown --------------------------------------------------------------------------------------------------

def _build_countdown(rng: random.Random, numbers: list[int]):
    """Combine the numbers in random order with random ops, keeping every intermediate a positive integer.
    Returns (target, expression, steps) or None."""
    items = [(Fraction(x), str(x)) for x in numbers]
    rng.shuffle(items)
    steps = []
    while len(items) > 1:
        (x, ex), (y, ey) = items.pop(), items.pop()
        if x < y:
            (x, ex), (y, ey) = (y, ey), (x, ex)
        choices = ["+", "*"] + (["-"] if x > y else []) + (["/"] if y and x % y == 0 and y != 1 else [])
        op = rng.choice(choices)
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
        steps.append(f"{x} {op} {y} = {value}.")
        items.insert(rng.randrange(len(items) + 1), (value, f"({ex} {op} {ey})"))
    value, expr = items[0]
    expr = expr[1:-1] if expr.startswith("(") else expr
    return int(value), expr, steps


_APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
          "/": lambda x, y: x // y if y > 1 and x % y == 0 else None}


def _chains(numbers: list[int], rng: random.Random, draws: int = 300):
    """Up to `draws` random left-to-right chains ((x1 op x2) op x3) ... over orderings of the numbers whose
    intermediate values are non-negative integers (divisions exact): [(steps [(x, op, y, value)], final value)].
    Drawn, not enumerated: 8 numbers have 40320 orderings x 16384 operator choices."""
    out, seen = [], set()
    for _ in range(draws):
        order = rng.sample(numbers, len(numbers))
        ops = [rng.choice("+-*/") for _ in numbers[1:]]
        key = (tuple(order), tuple(ops))
        if key in seen:
            continue
        seen.add(key)
        value, steps = order[0], []
        for op, y in zip(ops, order[1:]):
            new = _APPLY[op](value, y)
            if new is None or new < 0:
                break
            steps.append((value, op, y, new))
            value = new
        else:
            out.append((steps, value))
    return out


def _chain_expression(steps) -> str:
    expr = str(steps[0][0])
    for i, (_, op, y, _) in enumerate(steps):
        expr = f"({expr} {op} {y})" if i < len(steps) - 1 else f"{expr} {op} {y}"
    return expr


def countdown_reference(example: dict) -> str:
    """Guess and check, as a person would: try a few chains of operations, compute each, and say whether it reaches
    the target, until one does. The failed tries are drawn from the chains that miss (seeded by the question, so the
    trace is a fixed function of the problem); the last try is a chain that hits, else the generator's own steps
    (its solution may need two partial results, e.g. (a + b) * (c + d), which no chain reaches)."""
    m = example["metadata"]
    target, numbers = m["target"], m["numbers"]
    rng = random.Random(example["question"])
    chains = _chains(numbers, rng)
    hits = [c for c, v in chains if v == target]
    misses = [c for c, v in chains if v != target]
    tries = rng.sample(misses, min(len(misses), rng.randint(0, len(numbers))))
    lines = [f"I need to reach {target} using each of {', '.join(map(str, numbers))} exactly once. "
             "Let me try combinations and check each."]
    for steps in tries:
        lines.append("Try " + ", ".join(f"{x} {op} {y} = {v}" for x, op, y, v in steps)
                     + f". That gives {steps[-1][3]}, not {target}.")
    if hits:
        win = rng.choice(hits)
        expression = _chain_expression(win)
        lines.append("Try " + ", ".join(f"{x} {op} {y} = {v}" for x, op, y, v in win) + f". That gives {target}.")
    else:
        expression = m["expression"]
        lines.append("Try " + " ".join(m["steps"]) + f" That gives {target}.")
    lines.append(f"Every number is used once, so the answer is {expression}.")
    return format_completion(example, "\n".join(lines), expression)


def load_countdown(arg: str, params: dict) -> Task:
    p = pop_params(params, "countdown", numbers=4, max_value=100, max_target=1000, n=200, seed=0, split="train",
                   template="r1_distill")
    count, max_value = int(p["numbers"]), int(p["max_value"])
    if not 2 <= count <= 8 or max_value < 2:
        raise UserError(f"countdown: numbers must be 2..8 and max_value >= 2, got {count} and {max_value}")

    def make(rng):
        nums = [rng.randint(1, max_value) for _ in range(count)]
        target, expr, steps = _build_countdown(rng, nums)
        if not 1 <= target <= int(p["max_target"]) or target in nums:
            return None
        q = (f"Using the numbers {nums}, create an equation that equals {target}. Use each number exactly once, "
             "with only + - * / and parentheses. Give the expression as the final answer.")
        ex = {"question": q, "answer": expr, "verifier": "countdown",
              "metadata": {"task": "countdown", "numbers": nums, "target": target, "expression": expr, "steps": steps}}
        return apply_template(ex, p["template"])

    examples = _generate(make, int(p["n"]), int(p["seed"]), p["split"], f"countdown:{count}:{max_value}")
    return Task(f"countdown?numbers={count}&max_value={max_value}", examples, reference=countdown_reference)

