"""Every bad command-line input is one clear line on stderr and exit code 2, never a traceback (issue 21)."""
from __future__ import annotations

import pytest

from r1kit.cli import main


def _fails_cleanly(capsys, argv: list[str], *words: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def _grpo(tmp_path, *extra: str) -> list[str]:
    return ["train", "grpo", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "run"), *extra]


@pytest.mark.parametrize("suffix, text", [(".toml", "lr = [\n"), (".yaml", "a: [\n"), (".json", "{\"lr\": ")])
def test_a_broken_config_file(tmp_path, capsys, suffix, text):
    cfg = tmp_path / f"broken{suffix}"
    cfg.write_text(text)
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", "countdown", "--config", str(cfg)),
                   str(cfg), f"not valid {suffix[1:].upper()}")


def test_a_config_path_that_is_a_directory(tmp_path, capsys):
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", "countdown", "--config", str(tmp_path)), "is a directory")


@pytest.mark.parametrize("spec, words", [
    ("countdown?numbers=abc", ("numbers", "an integer", "'abc'")),
    ("countdown?n=-3", ("n must be a non-negative integer",)),
    ("arithmetic?carries=maybe", ("carries", "true or false")),
    ("humaneval?timeout_s=0", ("timeout_s must be > 0",)),
    ("reasoning_gym:chain_sum?seed=x", ("seed", "an integer")),
    ("countdown?colour=red", ("no option(s) colour",)),
])
def test_bad_task_spec_values(tmp_path, capsys, spec, words):
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", spec), *words)


def test_out_pointing_at_an_existing_file(tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", "countdown?n=4"), "--out", "existing file")
    _fails_cleanly(capsys, ["train", "sft", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "run"),
                            "--task", "countdown?n=4"], "existing file")


def test_resume_without_a_checkpoint_says_so_and_auto_starts_fresh(tmp_path, capsys):
    from r1kit.train.checkpointing import find_resume_checkpoint

    _fails_cleanly(capsys, _grpo(tmp_path, "--task", "countdown?n=4", "--resume"), "--resume", "no complete checkpoint",
                   "--resume auto")
    assert not (tmp_path / "run" / "config.json").exists()  # nothing written for a run that did not start
    _fails_cleanly(capsys, ["train", "sft", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "run"),
                            "--task", "countdown?n=4", "--resume"], "no complete checkpoint")
    assert find_resume_checkpoint(tmp_path / "run", "auto") is None  # today's behaviour: a fresh start
    step = tmp_path / "run" / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("2\n")
    (step / "trainer_state.pt").write_bytes(b"")
    assert find_resume_checkpoint(tmp_path / "run", "auto") == step
    assert find_resume_checkpoint(tmp_path / "run", True) == step


@pytest.mark.parametrize("spec, words", [("", ("is empty",)), (" , ", ("is empty",)),
                                         ("accuracy:nan", ("finite",)), ("nope", ("unknown reward 'nope'",))])
def test_bad_reward_specs(tmp_path, capsys, spec, words):
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", "countdown?n=4", "--reward", spec), *words)


def test_other_inputs_of_the_same_kinds(tmp_path, capsys):
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", "countdown?n=4", "lr=abc"), "lr", "expected float")
    _fails_cleanly(capsys, _grpo(tmp_path, "--task", f"jsonl:{tmp_path / 'missing.jsonl'}"), "does not exist")
    _fails_cleanly(capsys, ["plot", str(tmp_path / "no-run")], "does not exist")
    _fails_cleanly(capsys, ["chat", "--url", "notaurl", "hi"], "--url", "not an http(s) URL")
    _fails_cleanly(capsys, ["serve", "--header-timeout", "0"], "--header-timeout must be > 0")
    _fails_cleanly(capsys, ["serve", "--model", str(tmp_path / "no-model"), "--port", "0"], "no checkpoint")


def test_an_output_path_that_cannot_be_used(tmp_path, capsys, tiny_checkpoint):
    (tmp_path / "afile").write_text("x")
    _fails_cleanly(capsys, ["eval", "--model", tiny_checkpoint("qwen2"), "--task", "countdown?n=1", "--out",
                            str(tmp_path / "afile"), "--no-progress"], "File exists", "afile")
