"""Append-only JSONL logs that survive being killed at any moment: how evaluations and distillation resume.

Every record is written as one complete line by a single unbuffered write and flushed, under a lock (several
threads finish samples at once). A kill can therefore only leave a partial last line (e.g. a full disk cut a
write short); opening the log drops such a tail, so the file again holds only complete records, and the work it
described is simply done again.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from r1kit.errors import UserError


class JsonlLog:
    """`records` are the complete records already in the file; `append(record)` adds one line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._read_and_repair()
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read_and_repair(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # everything after the last newline is a partial record
        records = []
        for lineno, line in enumerate(data[:good].split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{self.path}:{lineno} is not a JSON line; is this a file r1kit wrote?") from None
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, record: dict) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict]) -> None:
        """Write several records with one write call (they land together or, at worst, as a partial tail)."""
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.records.extend(records)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
