"""The shared JSONL line reader: iter_jsonl and its JsonlError."""
from __future__ import annotations

import json
import re

import pytest

from common.io import JsonlError, iter_jsonl


def write(tmp_path, data: bytes, name: str = "f.jsonl"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_yields_objects_with_their_line_numbers_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, b'\n{"a": 1}\n   \n\t\n{"a": 2}\r\n\n{"a": 3}\n\n')
    assert list(iter_jsonl(path)) == [(2, {"a": 1}), (5, {"a": 2}), (7, {"a": 3})]


def test_last_line_without_newline_and_empty_file(tmp_path):
    assert list(iter_jsonl(write(tmp_path, b'{"a": 1}\n{"b": [2]}'))) == [(1, {"a": 1}), (2, {"b": [2]})]
    assert list(iter_jsonl(write(tmp_path, b"", "empty.jsonl"))) == []
    assert list(iter_jsonl(write(tmp_path, b"\n \n", "blank.jsonl"))) == []


def test_lines_split_on_newline_only(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 / U+0085 raw; str.splitlines would break there.
    row = {"text": "a\u2028b\u0085c\x0cd"}
    path = write(tmp_path, (json.dumps(row, ensure_ascii=False) + "\n" + json.dumps({"n": 2}) + "\n").encode())
    assert list(iter_jsonl(path)) == [(1, row), (2, {"n": 2})]


def test_reads_lazily(tmp_path):
    path = write(tmp_path, b'{"a": 1}\n{"a": 2}\n{oops\n')
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"a": 1})
    assert next(rows) == (2, {"a": 2})
    with pytest.raises(JsonlError, match="line 3"):
        next(rows)


def _error(path, **kwargs) -> JsonlError:
    with pytest.raises(JsonlError) as info:
        list(iter_jsonl(path, **kwargs))
    return info.value


def test_missing_file_and_directory_cannot_be_read(tmp_path):
    err = _error(tmp_path / "nope.jsonl")
    assert isinstance(err, ValueError)
    assert (err.path, err.lineno) == (tmp_path / "nope.jsonl", None)
    assert str(err) == f"{tmp_path / 'nope.jsonl'}: cannot read: No such file or directory"
    err = _error(tmp_path)
    assert err.lineno is None and str(err).startswith(f"{tmp_path}: cannot read: ")


def test_invalid_utf8_names_line_and_byte(tmp_path):
    path = write(tmp_path, b'{"a": 1}\n\n{"a": "caf\xe9"}\n')
    err = _error(path)
    assert (err.path, err.lineno) == (path, 3)
    assert err.reason == "not valid UTF-8 (byte 0xe9 at position 10 of the line: invalid continuation byte)"
    assert str(err) == f"{path}: line 3: {err.reason}"


def test_invalid_json_names_line_message_and_column(tmp_path):
    path = write(tmp_path, b'{"a": 1}\n{"a": 1,, "b": 2}\n{"a": 3}\n')
    err = _error(path)
    assert (err.path, err.lineno) == (path, 2)
    assert str(err) == f"{path}: line 2: invalid JSON: Expecting property name enclosed in double quotes (column 9)"


def test_invalid_json_column_is_within_the_line(tmp_path):
    # The error is at the very end of the line: its column must not spill onto "line 2 column 1".
    path = write(tmp_path, b'{"a": 1,\r\n')
    assert _error(path).reason == "invalid JSON: Expecting property name enclosed in double quotes (column 9)"


@pytest.mark.parametrize("line,kind", [
    (b"[1, 2]", "list"), (b"7", "int"), (b'"text"', "str"), (b"null", "NoneType"), (b"true", "bool"),
])
def test_non_object_names_the_type(tmp_path, line, kind):
    path = write(tmp_path, b'{"a": 1}\n' + line + b"\n")
    err = _error(path)
    assert err.lineno == 2
    assert str(err) == f"{path}: line 2: expected a JSON object, got {kind}"


# ---------------------------------------------------------------- torn tail

TORN = [
    pytest.param(b'{"a": 1}\n{"a": 2}\n{"a": "hal', id="json"),
    pytest.param(b'{"a": 1}\n{"a": 2}\n{"a": "caf\xc3', id="utf8-cut-mid-character"),
]


@pytest.mark.parametrize("data", TORN)
def test_torn_tail_is_skipped_only_when_asked(tmp_path, data):
    path = write(tmp_path, data)
    assert list(iter_jsonl(path, tolerate_torn_tail=True)) == [(1, {"a": 1}), (2, {"a": 2})]
    err = _error(path)
    assert err.lineno == 3 and re.search(r"invalid JSON|not valid UTF-8", err.reason)


def test_torn_tail_tolerance_covers_only_an_unterminated_last_line(tmp_path):
    # A bad last line that ends in a newline was written whole: it is damage, not a torn write.
    err = _error(write(tmp_path, b'{"a": 1}\n{"a": "hal\n', "terminated.jsonl"), tolerate_torn_tail=True)
    assert err.lineno == 2
    # A bad line before the end is never forgiven.
    err = _error(write(tmp_path, b'{"a": "hal\n{"a": 2}', "middle.jsonl"), tolerate_torn_tail=True)
    assert err.lineno == 1
    # An unterminated last line that parses is a complete record, and a non-object is still wrong.
    path = write(tmp_path, b'{"a": 1}\n{"a": 2}', "whole.jsonl")
    assert list(iter_jsonl(path, tolerate_torn_tail=True)) == [(1, {"a": 1}), (2, {"a": 2})]
    err = _error(write(tmp_path, b'{"a": 1}\n[2]', "list.jsonl"), tolerate_torn_tail=True)
    assert (err.lineno, err.reason) == (2, "expected a JSON object, got list")


def test_atomic_dir_removes_what_a_killed_run_left_and_keeps_the_old_output_until_the_new_is_done(tmp_path):
    from common.io import atomic_dir

    target = tmp_path / "curated" / "src"
    target.mkdir(parents=True)
    (target / "kept.parquet").write_text("old")
    (tmp_path / "curated" / ".src.k1ll3d").mkdir()           # a kill -9 inside an earlier write
    (tmp_path / "curated" / ".src.old-123").mkdir()          # a crash inside the swap
    (tmp_path / "curated" / ".other.abc").mkdir()            # another output's: not ours to touch
    try:
        with atomic_dir(target) as out:
            (out / "kept.parquet").write_text("new")
            assert (target / "kept.parquet").read_text() == "old"
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert (target / "kept.parquet").read_text() == "old"
    with atomic_dir(target) as out:
        (out / "kept.parquet").write_text("new")
    assert (target / "kept.parquet").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "curated").iterdir()) == [".other.abc", "src"]


def test_atomic_file_removes_temp_files_a_killed_write_left(tmp_path):
    from common.io import atomic_file

    target = tmp_path / "out.parquet"
    target.write_bytes(b"old")
    (tmp_path / ".out.parquet.k1ll3d").write_bytes(b"half")     # a kill -9 inside an earlier write
    (tmp_path / ".other.parquet.x").write_bytes(b"not ours")
    with atomic_file(target, "wb") as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.parquet.x", "out.parquet"]
