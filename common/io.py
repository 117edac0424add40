"""File helpers shared by every package.

Atomic outputs: a stage writes into a temporary sibling and renames it into place only when
everything succeeded, so a failure never leaves half-written output behind.

JSONL input: :func:`iter_jsonl` is the one line reader; its :class:`JsonlError` names the file and
line, and each caller wraps it in its own error type.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from common.errors import MixdistillError, first_line


class JsonlError(MixdistillError, ValueError):
    """A JSONL file that cannot be read or parsed.

    ``path`` is the file, ``lineno`` the 1-based line (None when the file itself cannot be read)
    and ``reason`` the problem without the location, e.g. ``invalid JSON: Expecting value
    (column 5)``. ``str()`` is ``"PATH: line N: REASON"`` (``"PATH: REASON"`` without a line).
    """

    def __init__(self, path: str | Path, lineno: int | None, reason: str):
        self.path = Path(path)
        self.lineno = lineno
        self.reason = reason
        where = f"{path}: line {lineno}" if lineno is not None else f"{path}"
        super().__init__(f"{where}: {reason}")


def iter_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(lineno, obj)`` for each non-blank line of a JSONL file, streaming.

    Lines are split on ``\\n`` only (so a raw U+2028 inside a string stays in its line); line
    numbers count every line, blank ones included. Every line must be UTF-8 holding one JSON
    object, else :class:`JsonlError` names the line: invalid UTF-8 (the byte and its position),
    invalid JSON (the parser's message and column), or a JSON value that is no object (its type).
    A file that cannot be opened or read raises :class:`JsonlError` with ``lineno=None``.

    ``tolerate_torn_tail``: a final line with no newline after it that is not valid UTF-8 or JSON
    is skipped instead of raising, as a write cut short by a kill leaves it (an append-only log
    being resumed). Only that last, unterminated line is forgiven, and only for those two faults.
    """
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise JsonlError(path, None, f"cannot read: {exc.strerror or exc}") from exc
    with f:
        lineno = 0
        while True:
            try:
                raw = f.readline()
            except OSError as exc:
                raise JsonlError(path, None, f"cannot read: {exc.strerror or exc}") from exc
            if not raw:
                return
            lineno += 1
            if not raw.strip():
                continue
            torn_ok = tolerate_torn_tail and not raw.endswith(b"\n")
            line = raw.rstrip(b"\r\n")  # so that a JSON error's column is within this line
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                if torn_ok:
                    return
                bad = line[exc.start]
                raise JsonlError(path, lineno, f"not valid UTF-8 (byte 0x{bad:02x} at position {exc.start} "
                                               f"of the line: {exc.reason})") from exc
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                if torn_ok:
                    return
                raise JsonlError(path, lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise JsonlError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp directory that replaces ``path`` on success and is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp and set-aside folders of a run that was killed (DVC runs one stage at a time): left
    # where DVC hashes, they would make every stage that depends on the parent folder look changed.
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual modes
    replace_dir(tmp, path)


def replace_dir(staging: str | Path, target: str | Path) -> None:
    """Swap ``staging`` into ``target``: the old one is moved aside first and removed only after
    the new one is in place, so a crash in between leaves the old or the new, never neither."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", **kwargs):
    """Yield a file open on a temp sibling that replaces ``path`` on success; removed on failure.
    Temp files a killed earlier write left beside ``path`` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
    except BaseException:
        os.unlink(tmp)
        raise
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    os.replace(tmp, path)


def write_json(path: str | Path, obj, atomic: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    if atomic:
        with atomic_file(path, encoding="utf-8") as f:
            f.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


class ParquetError(MixdistillError):
    """A Parquet file that cannot be read: truncated, corrupted, or not Parquet at all."""


def read_parquet(path: str | Path, columns: list[str] | None = None):
    """``polars.read_parquet`` with a message that names the file when it cannot be read (a
    truncated write, a corrupted download) instead of polars' bare ``ComputeError``.

    A missing file stays a ``FileNotFoundError`` (the stage wrapper reports it with its path)."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ParquetError(f"{path}: not a readable Parquet file ({first_line(exc)}); "
                           "rebuild it by re-running the stage that writes it") from exc
