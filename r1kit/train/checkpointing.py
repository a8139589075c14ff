"""Crash-safe training checkpoints: a kill -9 at any moment never leaves a checkpoint that looks complete but isn't.

Layout of a run directory:
    RUN/checkpoints/step-000040/model/          the policy in Hugging Face layout (+ tokenizer files), loadable as --model
    RUN/checkpoints/step-000040/trainer_state.pt optimizer, scheduler, RNG states, data position, step, metrics state
    RUN/checkpoints/step-000040/COMPLETE        written last
    RUN/checkpoints/latest                      name of the newest complete checkpoint (written atomically)
A checkpoint is first written into RUN/checkpoints/.tmp-step-000040-<pid>, every file fsynced, the COMPLETE marker
added, and only then renamed to its final name (a rename is atomic). Temporary directories left by a killed process
are ignored and removed; `latest_checkpoint` also falls back to scanning when the pointer is stale.
Re-saving a step that exists (after a resume) swaps the new directory in with one atomic renameat2(RENAME_EXCHANGE),
so step-N is a complete checkpoint at every moment; where the kernel or filesystem cannot exchange, the old copy is
first renamed to .old-step-N-<pid>, and `clean_partial` puts it back if a kill came before the new one was in.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from r1kit.config import atomic_write_text
from r1kit.errors import UserError

STATE_FILE = "trainer_state.pt"
MARKER = "COMPLETE"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model")
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def copy_tokenizer_files(src: str | os.PathLike | None, dst: str | os.PathLike) -> None:
    """Copy the tokenizer files of model directory `src` (if it is a local directory) next to saved weights."""
    if src is None or not Path(src).is_dir():
        return
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file() and not (Path(dst) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def clean_partial(run_dir: str | os.PathLike) -> None:
    """Remove temporary directories of saves that never finished (a killed process), and put back the old copy of
    a re-saved step whose replacement never arrived."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in root.glob(".old-step-*"):
            final = root / p.name[len(".old-"):].rsplit("-", 1)[0]
            if _is_complete(final):
                shutil.rmtree(p, ignore_errors=True)
            elif _is_complete(p):
                if final.exists():
                    shutil.rmtree(final)
                os.replace(p, final)


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file() and (path / STATE_FILE).is_file()


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and _is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (the `latest` pointer if it is valid, else by scanning), or None."""
    root = checkpoints_dir(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if (p / MARKER).is_file() and (p / STATE_FILE).is_file():
            newer = complete_checkpoints(run_dir)
            return newer[-1] if newer and newer[-1].name > p.name else p
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict[str, Any], *,
                    keep_last: int = 2, tokenizer_src: str | os.PathLike | None = None,
                    save_model_fn: Callable[[torch.nn.Module, Path], None] | None = None) -> Path:
    """Atomically save `model` (HF layout) and `state` (optimizer/scheduler state dicts, data position, ...) as
    step-N, add the RNG states, point `latest` at it and delete all but the newest `keep_last` checkpoints."""
    if save_model_fn is None:
        from r1kit.models.checkpoint import save_model as save_model_fn
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_fn(model, tmp / "model")
    copy_tokenizer_files(tokenizer_src, tmp / "model")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    (tmp / MARKER).write_text(f"{step}\n")
    _fsync_tree(tmp)
    final = root / name
    if not final.exists():
        os.replace(tmp, final)
    elif _exchange(tmp, final):              # re-saving a step (e.g. after a resume): swap, never a gap
        _fsync_dir(root)
        shutil.rmtree(tmp)                   # now the old copy
    else:                                    # no exchange here: the old copy stays until the new one is in
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        shutil.rmtree(old)
    _fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: str | os.PathLike, restore_rng: bool = True) -> dict[str, Any]:
    """Read trainer_state.pt of a checkpoint and (by default) restore the RNG states it holds."""
    state = torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=False)
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def find_resume_checkpoint(out_dir: str | os.PathLike, resume: bool | str) -> Path | None:
    """The checkpoint to continue from:
    --resume (True, "latest")   the run's newest complete checkpoint; none there is an error (nothing to resume)
    --resume auto               the newest complete checkpoint if there is one, else a fresh start (time-sliced jobs)
    --resume PATH               that checkpoint directory."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    if resume is True or resume in ("true", "latest", "1"):
        found = latest_checkpoint(out_dir)
        if found is None:
            raise UserError(f"--resume: there is no complete checkpoint in {str(checkpoints_dir(out_dir))!r} to "
                            "continue from; leave --resume out to start fresh, or use --resume auto to continue "
                            "when there is one and start fresh otherwise")
        return found
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume {resume!r} is not a complete checkpoint directory")
    return path


def checkpoint_due(cfg: Any, step: int) -> tuple[bool, bool]:
    """(save, stop) after `step` steps: periodic saves every `save_every`, and `stop_after` (save, then exit).
    The last step is never counted here: finish_run's caller saves it."""
    stop = bool(cfg.stop_after) and step == cfg.stop_after and step < cfg.max_steps
    save = stop or (bool(cfg.save_every) and step % cfg.save_every == 0 and step < cfg.max_steps)
    return save, stop


def save_final(model: torch.nn.Module, out_dir: Path, tokenizer_src: str | os.PathLike | None) -> Path:
    """Write the trained model (Hugging Face layout) and its tokenizer files to RUN/final, atomically."""
    from r1kit.models.checkpoint import save_model

    final = out_dir / "final"
    tmp = out_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    copy_tokenizer_files(tokenizer_src, tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
