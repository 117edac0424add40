"""The one crash-safe, resumable store of generated samples (teacher generation and evaluation).

Generating is the expensive step, so every finished chunk of samples is kept and a rerun makes
only what is missing. A store is one append-only JSONL file:

- **Chunks are durable.** :meth:`SampleStore.append` writes a chunk of records in one write and
  fsyncs it before the caller generates the next chunk, so a kill loses at most the chunk in
  flight.
- **A torn tail is mended.** A kill mid-write can leave the last line unterminated: on open it is
  finished when it holds a whole record and cut off when it does not, so the next append starts
  on a line of its own. Damage anywhere else is an error naming the file and line.
- **Fingerprinted.** A meta file beside the log records what produced the samples (model content,
  engine, sampling, prompt). A different fingerprint starts the log afresh instead of mixing two
  models' samples, but only when the first new chunk is written: a run that fails before that
  (an engine that cannot start) leaves the old samples and their fingerprint as they were.
- **One writer.** An exclusive ``flock`` on the log for the store's lifetime refuses a second run
  on the same store; the kernel releases it when the holder dies, even by SIGKILL.
- **Groups and indexes.** Records are keyed by their group fields (e.g. benchmark and problem)
  plus a sample index; a group is done when it holds every index ``0..n-1``. A record written
  again under the same key (a chunk regenerated after a crash) replaces the earlier one.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Callable

from common.errors import MixdistillError
from common.io import JsonlError, iter_jsonl, write_json


class SampleStoreError(MixdistillError, ValueError):
    """A sample store cannot be opened or read; the message names the file (and line)."""


class SampleStore:
    """Append-only JSONL of samples keyed by ``group_fields`` + ``index_field``.

    Use as a context manager: entering locks the log, checks the fingerprint and loads it."""

    def __init__(self, path: str | Path, fingerprint: dict, *, group_fields: tuple[str, ...], index_field: str,
                 fields: dict[str, type], meta_path: str | Path | None = None,
                 log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.meta_path = Path(meta_path) if meta_path else self.path.with_name(self.path.stem + ".meta.json")
        self.fingerprint = fingerprint
        self.group_fields, self.index_field = tuple(group_fields), index_field
        self.fields = {**{f: object for f in (*group_fields, index_field)}, **fields}
        self.log = log or (lambda message: None)
        self.records: dict[tuple, dict] = {}
        self._fd: int | None = None
        self._stale = False               # the log holds another fingerprint's samples

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SampleStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SampleStoreError(f"{self.path}: another run is writing these samples; wait for it or "
                                   "stop it") from None
        self._fd = fd
        try:
            if self._check_fingerprint():
                self._load()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _check_fingerprint(self) -> bool:
        """Whether the log's samples belong to this fingerprint (else they are ignored, and replaced
        at the first append)."""
        try:
            old = json.loads(self.meta_path.read_text(encoding="utf-8")) if self.meta_path.exists() else None
        except (OSError, ValueError):
            old = None                    # an unreadable fingerprint proves nothing about the samples
        if old == self.fingerprint:
            return True
        if os.fstat(self._fd).st_size:
            self.log(f"{self.path} was produced by another model or config; its samples are replaced by "
                     "this run's")
            self._stale = True
        else:
            write_json(self.meta_path, self.fingerprint)
        return False

    def _load(self) -> None:
        last_line = 0
        try:
            for lineno, rec in iter_jsonl(self.path, tolerate_torn_tail=True):
                self._check(rec, lineno)
                self.records[self.key(rec)] = rec
                last_line = lineno
        except JsonlError as exc:
            raise SampleStoreError(f"{exc}; delete {self.path} to generate its samples again") from exc
        self._mend_tail(last_line)

    def _check(self, rec: dict, lineno: int) -> None:
        for name, kind in self.fields.items():
            if name not in rec:
                raise SampleStoreError(f"{self.path}: line {lineno}: field '{name}' is missing; delete the file "
                                       "to generate its samples again")
            if kind is not object and not isinstance(rec[name], kind):
                raise SampleStoreError(f"{self.path}: line {lineno}: field '{name}' has type "
                                       f"{type(rec[name]).__name__}, expected {kind.__name__}")

    def _mend_tail(self, last_line: int) -> None:
        size = os.fstat(self._fd).st_size
        if not size or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        raw = self.path.read_bytes()      # rare: only after a write was cut short
        if last_line == raw.count(b"\n") + 1:
            os.pwrite(self._fd, b"\n", size)          # the last record only lost its newline
        else:
            os.ftruncate(self._fd, raw.rfind(b"\n") + 1)   # a partial record: drop it
        os.fsync(self._fd)

    # ------------------------------------------------------------------ reading and writing
    def key(self, rec: dict) -> tuple:
        return (*(rec[f] for f in self.group_fields), rec[self.index_field])

    def has(self, group: tuple, n: int) -> bool:
        """Whether ``group`` holds every sample index ``0..n-1``."""
        return all((*group, i) in self.records for i in range(n))

    def group(self, group: tuple, n: int) -> list[dict]:
        return [self.records[(*group, i)] for i in range(n)]

    def append(self, records: list[dict]) -> None:
        """Write one chunk durably (one write, then fsync) and index it."""
        for rec in records:
            self._check(rec, 0)
        data = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8")
        if self._stale:                   # the first new chunk is ready: now the old samples go
            os.ftruncate(self._fd, 0)
            write_json(self.meta_path, self.fingerprint)
            self._stale = False
        os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)                # the chunk is on disk before the next one is generated
        for rec in records:
            self.records[self.key(rec)] = rec
