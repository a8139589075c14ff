"""Trainer config loading and crash-safe checkpoints."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1kit.config import ConfigError, build_config
from r1kit.train.checkpointing import (checkpoints_dir, clean_partial, latest_checkpoint, load_trainer_state,
                                       save_checkpoint)
from r1kit.train.config import GRPOConfig, SFTConfig


def _save_weights(model, out):
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))


def test_config_from_toml_file_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('loss_type = "dapo"\nnum_generations = 4\neps_high = 0.28\n')
    cfg = build_config(GRPOConfig, f, {"lr": "3e-6", "dynamic_sampling": "true"})
    assert (cfg.loss_type, cfg.num_generations, cfg.eps_high, cfg.lr, cfg.dynamic_sampling) == \
        ("dapo", 4, 0.28, 3e-6, True)


def test_config_errors_name_the_bad_key_or_value(tmp_path):
    with pytest.raises(ConfigError, match="num_generatoins"):
        build_config(GRPOConfig, None, {"num_generatoins": "4"})
    with pytest.raises(ConfigError, match="loss_type"):
        build_config(GRPOConfig, None, {"loss_type": "ppo"})
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        build_config(GRPOConfig, None, {"num_generations": "1"})
    with pytest.raises(ConfigError, match="batch_size"):
        build_config(SFTConfig, None, {"batch_size": "many"})


def test_keeps_last_k_and_restores_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in range(1, 4):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        random.random()
        save_checkpoint(tmp_path, step, model, {"optimizer": opt.state_dict(), "data_position": step * 10},
                        keep_last=2, save_model_fn=_save_weights)
    names = sorted(p.name for p in checkpoints_dir(tmp_path).iterdir() if p.name.startswith("step-"))
    assert names == ["step-000002", "step-000003"]
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-000003"
    expected_py, expected_torch = random.random(), torch.rand(3)
    state = load_trainer_state(ckpt)
    assert (state["step"], state["data_position"]) == (3, 30)
    assert random.random() == expected_py and torch.equal(torch.rand(3), expected_torch)
    w = load_file(str(ckpt / "model" / "model.safetensors"))
    assert torch.equal(w["weight"], model.weight.detach())
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_half_written_checkpoints_are_ignored_and_cleaned(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 5, model, {}, save_model_fn=_save_weights)
    root = checkpoints_dir(tmp_path)
    (root / ".tmp-step-000006-123" / "model").mkdir(parents=True)         # killed while writing
    (root / "step-000007").mkdir()                                          # no COMPLETE marker
    (root / "latest").write_text("step-000007\n")                           # stale pointer
    assert latest_checkpoint(tmp_path).name == "step-000005"
    clean_partial(tmp_path)
    assert not (root / ".tmp-step-000006-123").exists()


KILLER_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from safetensors.torch import save_file
    from r1kit.train.checkpointing import save_checkpoint
    def save(model, out):
        os.makedirs(out, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))
    model = torch.nn.Linear(512, 512)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(sys.argv[1], step, model, {"blob": torch.full((512, 512), float(step))}, keep_last=2,
                        save_model_fn=save)
        print(step, flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(KILLER_SCRIPT)
    for delay in (0.9, 1.3, 1.7):
        run = tmp_path / f"run{delay}"
        proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()                       # at least one save finished
        time.sleep(delay - 0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = latest_checkpoint(run)
        assert ckpt is not None
        step = load_trainer_state(ckpt, restore_rng=False)["step"]
        w = load_file(str(ckpt / "model" / "model.safetensors"))["weight"]
        assert torch.all(w == step)
        assert torch.all(load_trainer_state(ckpt, restore_rng=False)["blob"] == step)


class _Killed(BaseException):
    """Stands for a kill -9 at one point of a save: nothing after it runs."""


def _weight_of(ckpt) -> float:
    return float(load_file(str(ckpt / "model" / "model.safetensors"))["weight"][0, 0])


@pytest.mark.parametrize("exchange", [True, False])
def test_resaving_a_step_never_leaves_a_moment_without_a_valid_copy(tmp_path, monkeypatch, exchange):
    from r1kit.train import checkpointing

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    save_checkpoint(tmp_path, 3, model, {}, save_model_fn=_save_weights)
    with torch.no_grad():
        model.weight.fill_(2.0)
    if not exchange:  # the filesystem cannot swap: the two-rename path
        monkeypatch.setattr(checkpointing, "_exchange", lambda a, b: False)
    # a kill at each point of the re-save: after each rename/exchange and before each removal
    real_replace, real_rmtree, real_exchange = os.replace, checkpointing.shutil.rmtree, checkpointing._exchange
    points = ["replace", "rmtree"] + (["exchange"] if exchange else [])
    for point in points:
        for nth in (1, 2):
            calls = {"replace": 0, "rmtree": 0, "exchange": 0}

            def hook(name, real):
                def wrapped(*a, **k):
                    calls[name] += 1
                    result = real(*a, **k)
                    if name == point and calls[name] == nth:
                        raise _Killed
                    return result
                return wrapped

            monkeypatch.setattr(checkpointing.os, "replace", hook("replace", real_replace))
            monkeypatch.setattr(checkpointing.shutil, "rmtree", hook("rmtree", real_rmtree))
            if exchange:
                monkeypatch.setattr(checkpointing, "_exchange", hook("exchange", real_exchange))
            try:
                save_checkpoint(tmp_path, 3, model, {}, save_model_fn=_save_weights)
            except _Killed:
                pass
            monkeypatch.setattr(checkpointing.os, "replace", real_replace)
            monkeypatch.setattr(checkpointing.shutil, "rmtree", real_rmtree)
            monkeypatch.setattr(checkpointing, "_exchange", real_exchange if exchange else (lambda a, b: False))
            clean_partial(tmp_path)  # what the next run does first
            ckpt = latest_checkpoint(tmp_path)
            assert ckpt is not None and ckpt.name == "step-000003", (point, nth)
            assert _weight_of(ckpt) in (1.0, 2.0), (point, nth)  # the old copy or the new one, whole
            assert [p.name for p in checkpoints_dir(tmp_path).iterdir() if p.name.startswith(".")] == []
    save_checkpoint(tmp_path, 3, model, {}, save_model_fn=_save_weights)
    assert _weight_of(latest_checkpoint(tmp_path)) == 2.0


def test_resaving_uses_an_atomic_exchange_where_the_kernel_has_one(tmp_path):
    from r1kit.train import checkpointing

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not checkpointing._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the two-rename path is used")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
