"""Task sources: spec parsing, built-in procedural tasks, JSONL files, reasoning-gym, and prompt templates."""
import json

import pytest
import reasoning_gym

from r1kit.errors import UserError
from r1kit.rewards import format_reward, reasoning_gym_reward
from r1kit.tasks import R1_DISTILL_INSTRUCTION, load_task, parse_task_spec


def test_parse_task_spec():
    assert parse_task_spec("arithmetic?digits=3&ops=+-&carries=false&x=1.5") == (
        "arithmetic", "", {"digits": 3, "ops": "+-", "carries": False, "x": 1.5})
    assert parse_task_spec("reasoning_gym:chain_sum?n=5") == ("reasoning_gym", "chain_sum", {"n": 5})
    assert parse_task_spec("data/x.jsonl") == ("jsonl", "data/x.jsonl", {})


def test_unknown_source_and_unknown_option_are_user_errors():
    with pytest.raises(UserError, match="unknown task source"):
        load_task("nonsense")
    with pytest.raises(UserError, match="no option"):
        load_task("arithmetic?digitz=3")
    with pytest.raises(UserError, match="split"):
        load_task("countdown?split=dev")


@pytest.mark.parametrize("spec", ["arithmetic?digits=4&n=60", "arithmetic?digits=2&ops=-&n=30",
                                  "arithmetic?digits=3&ops=*&n=30", "countdown?numbers=4&n=60",
                                  "countdown?numbers=3&max_value=20&n=30", "countdown?numbers=7&n=10",
                                  "arithmetic?digits=5&min_digits=1&ops=+-&n=60",
                                  "reasoning_gym:chain_sum?min_terms=2&max_terms=6&n=30"])
@pytest.mark.parametrize("template", ["r1_distill", "r1_zero"])
def test_reference_solutions_are_correct_and_well_formed(spec, template):
    task = load_task(spec, template=template)
    assert len(task) == int(spec.split("n=")[1])
    for ex in task:
        ref = task.reference_solution(ex)
        assert task.score(ref, ex) == 1.0, ref
        assert format_reward(ref) == 1.0
        assert ("prompt" in ex) == (template == "r1_zero")


def test_wrong_answers_score_zero_on_procedural_tasks():
    for spec in ("arithmetic?n=20", "countdown?n=20"):
        task = load_task(spec)
        for ex in task:
            assert task.score("r</think>\\boxed{1}", ex) == 0.0


def test_arithmetic_knobs_and_carries():
    task = load_task("arithmetic?digits=5&ops=+&n=50")
    for ex in task:
        a, b = ex["metadata"]["a"], ex["metadata"]["b"]
        assert 10_000 <= a <= 99_999 and 10_000 <= b <= 99_999 and int(ex["answer"]) == a + b
        assert any(int(x) + int(y) >= 10 for x, y in zip(str(a), str(b)))  # at least one carry
    assert "carry" in task.reference_solution(task[0]) and "ten-thousands" in task.reference_solution(task[0])


def test_arithmetic_operands_span_min_digits_to_digits_and_varied_wording():
    task = load_task("arithmetic?digits=4&min_digits=2&ops=+&n=200&phrasing=varied")
    lengths = {len(str(ex["metadata"][k])) for ex in task for k in "ab"}
    assert lengths == {2, 3, 4}
    wordings = {ex["question"].replace(str(ex["metadata"]["a"]), "A").replace(str(ex["metadata"]["b"]), "B")
                for ex in task}
    assert len(wordings) > 3 and "What is A + B?" in wordings
    assert {ex["question"] for ex in load_task("arithmetic?digits=2&n=20")} <= {
        f"Compute {a} {op} {b}." for a in range(10, 100) for b in range(10, 100) for op in "+-*"}
    with pytest.raises(UserError, match="min_digits"):
        load_task("arithmetic?digits=2&min_digits=3")
    with pytest.raises(UserError, match="phrasing"):
        load_task("arithmetic?phrasing=poetic")


def test_countdown_reference_guesses_and_checks_each_try():
    task = load_task("countdown?numbers=4&max_value=10&n=40")
    tries_seen = set()
    for ex in task:
        reasoning = task.reference_solution(ex).partition("</think>")[0]
        tries = [line for line in reasoning.splitlines() if line.startswith("Try ")]
        tries_seen.add(len(tries))
        target = ex["metadata"]["target"]
        for line in tries[:-1]:   # every miss states a value that is really not the target, computed correctly
            for step in line[4:].split(". That gives")[0].split(", "):
                lhs, value = step.split(" = ")
                assert eval(lhs) == int(value)  # noqa: S307 (our own trace: digits and + - * // only)
            assert line.endswith(f"not {target}.")
        assert tries[-1].endswith(f"That gives {target}.")
    assert len(tries_seen) > 2   # not always the same number of guesses


def test_chain_sum_reference_is_a_correct_running_total():
    task = load_task("reasoning_gym:chain_sum?n=20&min_terms=3&max_terms=5")
    for ex in task:
        ref = task.reference_solution(ex)
        assert task.score(ref, ex) == 1.0 and "running total" in ref
        assert ref.count(" = ") == ex["metadata"]["num_terms"] - 1


def test_direct_solution_and_plain_text_keep_the_answer_and_drop_the_reasoning():
    task = load_task("arithmetic?digits=3&ops=+&n=3")
    for ex in task:
        direct, plain = task.direct_solution(ex), task.plain_text(ex)
        assert direct == f"\n</think>\n\nThe answer is $\\boxed{{{ex['answer']}}}$."
        assert task.score(direct, ex) == 1.0
        assert plain == f"{ex['question']}\nThe answer is $\\boxed{{{ex['answer']}}}$." and "carry" not in plain
    zero = load_task("countdown?numbers=3&n=2&template=r1_zero")
    assert zero.direct_solution(zero[0]).startswith("<think>\n\n</think>\n<answer>")
    assert zero.score(zero.direct_solution(zero[0]), zero[0]) == 1.0
    no_ref = load_task("reasoning_gym:leg_counting?n=1")
    assert no_ref.score(no_ref.direct_solution(no_ref[0]), no_ref[0]) == 1.0


def test_countdown_knobs():
    task = load_task("countdown?numbers=5&max_value=30&n=40")
    for ex in task:
        nums = ex["metadata"]["numbers"]
        assert len(nums) == 5 and all(1 <= x <= 30 for x in nums)


@pytest.mark.parametrize("name", ["arithmetic?digits=2", "countdown?numbers=3&max_value=10",
                                  "arithmetic?digits=2&min_digits=1&phrasing=varied",
                                  "reasoning_gym:chain_sum?min_terms=2&max_terms=3&min_digits=1&max_digits=1"])
def test_train_and_test_splits_are_disjoint_and_deterministic(name):
    train = load_task(f"{name}&n=300&split=train&seed=0")
    train_other_seed = load_task(f"{name}&n=300&split=train&seed=1")
    test = load_task(f"{name}&n=30&split=test&seed=0")
    train_q = {ex["question"] for ex in train} | {ex["question"] for ex in train_other_seed}
    assert not train_q & {ex["question"] for ex in test}
    problem = lambda ex: ex["metadata"].get("problem", ex["question"])  # noqa: E731  (a wording-free identity)
    assert not {problem(ex) for ex in train} & {problem(ex) for ex in test}
    assert [ex["question"] for ex in load_task(f"{name}&n=300&split=train&seed=0")] == [ex["question"] for ex in train]
    assert [ex["question"] for ex in train] != [ex["question"] for ex in train_other_seed]


def test_templates():
    distill = load_task("arithmetic?n=1")[0]
    assert distill["messages"][-1]["content"].endswith(R1_DISTILL_INSTRUCTION)
    zero = load_task("arithmetic?n=1&template=r1_zero")[0]
    assert zero["prompt"].startswith("A conversation between User and Assistant")
    assert "<answer> </answer>" in zero["prompt"] and zero["prompt"].endswith("Assistant:")
    plain = load_task("arithmetic?n=1&template=plain")[0]
    assert plain["messages"] == [{"role": "user", "content": plain["question"]}]
    with pytest.raises(UserError, match="template"):
        load_task("arithmetic?n=1&template=fancy")


# --- JSONL ----------------------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_task_loads_prompts_and_messages(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": "What is 1/2 + 1/4?", "answer": "3/4", "verifier": "math"},
        "",
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Capital of France?"}],
         "answer": "Paris", "verifier": "exact"},
        {"prompt": "Write add(a, b).", "verifier": "code", "tests": ["assert add(2, 3) == 5"]},
    ])
    task = load_task(path)
    assert len(task) == 3
    assert task[0]["messages"][0]["content"].startswith("What is 1/2 + 1/4?")
    assert task[1]["messages"][0]["role"] == "system" and task[1]["question"] == "Capital of France?"
    assert task.score("r</think>\\boxed{0.75}", task[0]) == 1.0
    assert task.score("r</think>paris", task[1]) == 1.0
    assert task.score("r</think>```python\ndef add(a, b):\n    return a + b\n```", task[2]) == 1.0
    assert len(load_task(f"jsonl:{path}?n=2")) == 2


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ('{"answer": "1"}', "exactly one of 'prompt'"),
    ('{"prompt": "q"}', "missing 'answer'"),
    ('{"prompt": "q", "answer": "1", "verifier": "magic"}', "unknown verifier"),
    ('{"prompt": "q", "verifier": "code"}', "tests"),
    ('{"messages": "hi", "answer": "1"}', "messages"),
])
def test_malformed_jsonl_line_names_file_and_line(tmp_path, bad_line, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, "", bad_line])
    with pytest.raises(UserError, match=message) as info:
        load_task(path)
    assert f"{path}:3" in str(info.value)


def test_missing_jsonl_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_task(str(tmp_path / "none.jsonl"))


# --- reasoning-gym --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,config", [("countdown", {}), ("chain_sum", {"min_terms": 2, "max_terms": 3}),
                                         ("basic_arithmetic", {}), ("leg_counting", {})])
def test_reasoning_gym_scores_equal_score_answer_called_directly(name, config):
    spec = f"reasoning_gym:{name}?n=8&seed=5" + "".join(f"&{k}={v}" for k, v in config.items())
    task = load_task(spec)
    reference = reasoning_gym.create_dataset(name, size=200, seed=5, **config)
    by_question = {e["question"]: e for e in reference}
    assert len(task) == 8 and all(ex["question"] in by_question for ex in task)
    for ex in task:
        entry = by_question[ex["question"]]
        for candidate in (str(entry["answer"]), "1", "", "not an answer"):
            completion = f"thinking</think>\n\\boxed{{{candidate}}}"
            assert task.score(completion, ex) == reference.score_answer(candidate, entry)
            detached = {k: v for k, v in ex.items() if k != "rg_key"}  # e.g. an example read back from disk
            assert reasoning_gym_reward(completion, detached) == reference.score_answer(candidate, entry)


def test_reasoning_gym_test_split_uses_other_seeds_and_bad_config_is_user_error():
    train = load_task("reasoning_gym:chain_sum?n=5&seed=0")
    test = load_task("reasoning_gym:chain_sum?n=5&seed=0&split=test")
    assert [e["question"] for e in train] != [e["question"] for e in test]
    with pytest.raises(UserError, match="distinct test problems"):
        load_task("reasoning_gym:chain_sum?n=400&min_terms=2&max_terms=2&min_digits=1&max_digits=1&split=test")
    with pytest.raises(UserError, match="unknown reasoning-gym dataset"):
        load_task("reasoning_gym:no_such_dataset")
    with pytest.raises(UserError, match="bad config"):
        load_task("reasoning_gym:chain_sum?no_such_knob=3")


def test_malformed_spec_option_is_user_error():
    with pytest.raises(UserError, match="key=value"):
        load_task("arithmetic?digits")
