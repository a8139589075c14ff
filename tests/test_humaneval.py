"""HumanEval through the code sandbox: every canonical solution passes, every empty completion fails."""
import pytest

from r1kit.rewards import score_batch
from r1kit.tasks import load_task


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_empty_completions_fail():
    task = load_task("humaneval")
    assert len(task) == 164
    examples = list(task)
    canonical = ["Done.\n</think>\n" + ex["answer"] for ex in examples]  # the body continuing the prompt
    empty = ["Done.\n</think>\n"] * len(examples)
    scores = score_batch(task.score, canonical + empty, examples + examples, workers=6)
    failed_canonical = [ex["metadata"]["task_id"] for ex, s in zip(examples, scores[:164]) if s != 1.0]
    passed_empty = [ex["metadata"]["task_id"] for ex, s in zip(examples, scores[164:]) if s != 0.0]
    assert failed_canonical == [] and passed_empty == []


def test_humaneval_reference_solution_is_a_full_function_in_a_code_block():
    task = load_task("humaneval?n=3")
    for ex in task:
        ref = task.reference_solution(ex)
        assert "```python" in ref and f"def {ex['metadata']['entry_point']}" in ref
        assert task.score(ref, ex) == 1.0
        assert task.score("thinking</think>\n```python\ndef unrelated():\n    pass\n```", ex) == 0.0
