"""Where r1kit keeps what it makes once and reuses: compiled CPU kernels, random test checkpoints."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$R1KIT_CACHE_DIR, else ~/.cache/r1kit."""
    return Path(os.environ.get("R1KIT_CACHE_DIR") or Path.home() / ".cache" / "r1kit")
