"""A built-in training text for tiny tokenizers (and nothing else: it is not model training data)."""
from __future__ import annotations

import random

_WORDS = ("apples pears coins marbles books tickets students boxes cards stones").split()
_NAMES = ("Alice Bob Carol Dave Erin Frank Grace Heidi").split()
_PROSE = ("""\
DeepSeek-R1 is a reasoning model. Before it answers, it thinks: it writes a chain of thought, checks each step, and
only then gives the final answer. The thinking is enclosed in <think> and </think> tags, and the answer follows.
A good answer is short and correct. When a step looks wrong, the model says so and tries again: "Wait, let me
reconsider." Reinforcement learning with verifiable rewards taught the model to reason this way, without a
reward model: a rule checks whether the final answer is right, and whether the format is followed.
The quick brown fox jumps over the lazy dog. Please reason step by step, and put your final answer within \\boxed{}.
""", """\
A train leaves the station at nine o'clock and travels north at sixty kilometres per hour. Another train leaves an
hour later, going south on a parallel track at eighty kilometres per hour. How far apart are they at noon? First we
find how long each train has been moving, then we multiply speed by time, and finally we add the two distances.
""", """\
In a right triangle the square of the hypotenuse equals the sum of the squares of the other two sides. If the legs
are three and four, the hypotenuse is five. A circle with radius r has area pi times r squared and circumference two
pi r. The derivative of x squared is two x; the integral of one over x is the natural logarithm of x. A prime number
has exactly two divisors. Every integer greater than one can be written as a product of primes in only one way.
""", """\
Programs are read more often than they are written. A function should do one thing, have a clear name, and be
tested. When a test fails, read the error message carefully, reproduce the problem with the smallest possible
input, form a hypothesis, and check it. Python lists, dictionaries and sets cover most everyday needs; a loop over
a million items takes well under a second. Return early, avoid global state, and prefer simple data structures.
""", """\
Weather changes quickly in the mountains: a sunny morning can turn into a cold, windy afternoon with rain or snow.
Hikers carry water, food, a map, warm clothes and a small first aid kit. Rivers begin as springs and streams high up
and grow as they flow down towards the sea, through forests, farms, villages and cities. Children learn to count
before they learn to read, and they often ask why the sky is blue, why leaves fall, and where the birds go in winter.
""", """\
Verification is easier than discovery. Checking that a proposed answer satisfies every condition of a problem is
usually quick, while finding that answer may take a long search. This asymmetry is what makes rewards from rules so
useful: a model can try many times, and a simple program decides which attempts were correct. Over many training
steps the model learns which habits of thought lead to correct answers, such as breaking a problem into parts,
double-checking arithmetic, and trying a different approach after a mistake.
""")


def default_corpus(n_problems: int = 1500, seed: int = 0) -> list[str]:
    """Built-in training text for tiny tokenizers: English prose plus generated arithmetic, word problems and
    countdown-style reasoning traces in the R1 format. Deterministic for a seed."""
    rng = random.Random(seed)
    texts = list(_PROSE) * 10
    for _ in range(n_problems):
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(1, 20)
        kind = rng.randrange(4)
        if kind == 0:
            texts.append(f"What is {a} + {b} * {c}?<think>\nFirst {b} * {c} = {b * c}. Then {a} + {b * c} = "
                         f"{a + b * c}.\n</think>\n\nThe answer is \\boxed{{{a + b * c}}}.")
        elif kind == 1:
            name, word = rng.choice(_NAMES), rng.choice(_WORDS)
            texts.append(f"{name} has {a} {word} and gives away {b}. How many {word} are left?<think>\n"
                         f"We subtract: {a} - {b} = {a - b}. Wait, let me check: {a - b} + {b} = {a}. Yes.\n"
                         f"</think>\n\n<answer>{a - b}</answer>")
        elif kind == 2:
            nums = [rng.randint(1, 100) for _ in range(3)]
            target = nums[0] + nums[1] - nums[2]
            texts.append(f"Using the numbers {nums}, create an equation that equals {target}. You can use basic "
                         f"arithmetic operations (+, -, *, /) and each number can only be used once.<think>\n"
                         f"Let me try {nums[0]} + {nums[1]} = {nums[0] + nums[1]}, then {nums[0] + nums[1]} - "
                         f"{nums[2]} = {target}. That works.\n</think>\n\n<answer>{nums[0]} + {nums[1]} - "
                         f"{nums[2]}</answer>")
        else:
            texts.append(f"Compute {a} / {c} and {b} ** 2. {a} / {c} = {a / c:.3f}, and {b} ** 2 = {b * b}. "
                         f"So the sum is {a / c + b * b:.3f}.")
    return texts
