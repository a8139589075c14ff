"""Run directories: append-only sample logs that survive a kill, resuming exactly where a run stopped, refusing to
mix settings, and the command line's errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from r1kit.errors import UserError
from r1kit.eval.samples import JsonlLog
from test_eval_metrics import TASK, FakeBackend, FakeClock, _evaluate


def test_a_partial_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}]
    log.append({"a": 4})
    log.close()
    assert path.read_text().splitlines() == ['{"a": 1}', '{"a": 2}', '{"a": 4}']
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(UserError, match=":2 is not a JSON line"):
        JsonlLog(path)


def _metrics(res):
    t = dict(res["tasks"][TASK])
    t.pop("output_tokens_per_s")  # two runs: the wall time differs
    return t


def test_an_interrupted_evaluation_resumes_with_only_the_missing_samples(tmp_path):
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        _evaluate(tmp_path, FakeBackend(clock, fail_after=10), clock)
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 10
    second = FakeBackend(clock)
    resumed = _evaluate(tmp_path, second, clock)
    done = {(json.loads(x)["problem"], json.loads(x)["sample"]) for x in lines}
    assert len(second.calls) == 14 and not done & set(second.calls)
    fresh = _evaluate(tmp_path / "fresh", FakeBackend(FakeClock()), FakeClock())
    assert _metrics(resumed) == _metrics(fresh)
    assert resumed["totals"]["generated_now"] == 14


def test_raising_n_generates_only_the_new_samples(tmp_path):
    from r1kit.eval.evaluate import evaluate

    clock = FakeClock()
    kw = dict(model="fake-model", tasks=[TASK], out=str(tmp_path / "run"), clock=clock, progress=False)
    evaluate(n=2, backend=FakeBackend(clock), **kw)
    b = FakeBackend(clock)
    res = evaluate(n=4, backend=b, **kw)
    assert sorted(b.calls) == [(i, j) for i in range(6) for j in (2, 3)]
    assert res["tasks"][TASK]["n"] == 4
    b = FakeBackend(clock)
    res = evaluate(n=1, backend=b, **kw)  # fewer: nothing to generate, the first sample of each problem is used
    assert b.calls == [] and res["tasks"][TASK]["n"] == 1


def test_resuming_with_other_generation_settings_is_refused(tmp_path):
    clock = FakeClock()
    _evaluate(tmp_path, FakeBackend(clock), clock)
    with pytest.raises(UserError, match="temperature: 0.6 there, 1.0 now"):
        _evaluate(tmp_path, FakeBackend(clock), clock, temperature=1.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "r1kit", *args], capture_output=True, text=True, timeout=120)


def test_command_line_mistakes_are_one_line_and_exit_2(tmp_path):
    r = _cli("eval", "--task", "arithmetic?n=2")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "give exactly one of" in r.stderr
    r = _cli("eval", "--model", "random-deepseek_v3-tiny", "--task", "nosuchtask", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown task source 'nosuchtask'" in r.stderr
    r = _cli("eval", "--model", "m", "--task", "arithmetic", "--temperature", "hot")
    assert r.returncode == 2 and "temperature: expected float, got 'hot'" in r.stderr
    r = _cli("eval", "--compare", str(tmp_path / "missing"))
    assert r.returncode == 2 and "results.json' does not exist" in r.stderr
    r = _cli("distill", "--teacher", "m", "--task", "arithmetic", "--keep", "longest")
    assert r.returncode == 2 and "invalid choice: 'longest'" in r.stderr
