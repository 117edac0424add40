"""The one resumable sample store (generation/store.py): durable chunks, mended torn tails,
fingerprints, one writer, and errors that name the file and line."""
from __future__ import annotations

import fcntl
import json

import pytest

from generation.store import SampleStore, SampleStoreError

FIELDS = {"response": str}


def store(path, fingerprint=None, log=None):
    return SampleStore(path, fingerprint or {"model": "a"}, group_fields=("bench", "pid"), index_field="i",
                       fields=FIELDS, log=log)


def rec(pid, i, text="x", bench="b"):
    return {"bench": bench, "pid": pid, "i": i, "response": text}


def test_appends_are_read_back_and_groups_complete_only_with_every_index(tmp_path):
    path = tmp_path / "samples.jsonl"
    with store(path) as s:
        s.append([rec("p1", 0), rec("p1", 1), rec("p2", 0)])
    with store(path) as s:
        assert s.has(("b", "p1"), 2) and not s.has(("b", "p2"), 2) and s.has(("b", "p2"), 1)
        assert [r["i"] for r in s.group(("b", "p1"), 2)] == [0, 1]
    assert path.read_text().count("\n") == 3
    assert json.loads((tmp_path / "samples.meta.json").read_text()) == {"model": "a"}


def test_a_record_written_again_replaces_the_earlier_one(tmp_path):
    path = tmp_path / "samples.jsonl"
    with store(path) as s:
        s.append([rec("p1", 0, "old")])
        s.append([rec("p1", 0, "new")])
    with store(path) as s:
        assert s.records[("b", "p1", 0)]["response"] == "new"


def test_a_cut_short_last_line_is_dropped_and_a_whole_one_finished(tmp_path):
    path = tmp_path / "samples.jsonl"
    with store(path) as s:
        s.append([rec("p1", 0)])
    good = path.read_bytes()
    path.write_bytes(good + b'{"bench": "b", "pid": "p2", "i": 0, "resp')       # killed mid-write
    with store(path) as s:
        assert list(s.records) == [("b", "p1", 0)]
    assert path.read_bytes() == good
    path.write_bytes(good + json.dumps(rec("p2", 0)).encode())                   # only the newline lost
    with store(path) as s:
        s.append([rec("p3", 0)])
        assert set(s.records) == {("b", "p1", 0), ("b", "p2", 0), ("b", "p3", 0)}
    assert path.read_text().count("\n") == 3 and all(json.loads(x) for x in path.read_text().splitlines())


def test_another_fingerprint_starts_afresh_only_once_it_has_a_new_chunk(tmp_path):
    path, said = tmp_path / "samples.jsonl", []
    with store(path) as s:
        s.append([rec("p1", 0)])
    old = path.read_bytes()
    with store(path, {"model": "b"}, log=said.append) as s:
        assert s.records == {}            # the old samples are not this model's
    # A run that made nothing (its engine could not start) lost nothing.
    assert path.read_bytes() == old and "another model or config" in said[0]
    assert json.loads((tmp_path / "samples.meta.json").read_text()) == {"model": "a"}
    with store(path, {"model": "b"}) as s:
        s.append([rec("p9", 0)])
    assert [json.loads(x)["pid"] for x in path.read_text().splitlines()] == ["p9"]
    assert json.loads((tmp_path / "samples.meta.json").read_text()) == {"model": "b"}


def test_damage_inside_the_log_names_the_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    with store(path) as s:
        s.append([rec("p1", 0)])
    path.write_text(path.read_text() + "{oops\n" + json.dumps(rec("p2", 0)) + "\n")
    with pytest.raises(SampleStoreError, match=r"samples.jsonl: line 2: invalid JSON.*delete .* to generate"):
        store(path).__enter__()
    path.write_text(json.dumps({"bench": "b", "pid": "p1", "i": 0, "response": 5}) + "\n")
    with pytest.raises(SampleStoreError, match=r"line 1: field 'response' has type int, expected str"):
        store(path).__enter__()
    path.write_text(json.dumps({"bench": "b", "i": 0, "response": "x"}) + "\n")
    with pytest.raises(SampleStoreError, match=r"line 1: field 'pid' is missing"):
        store(path).__enter__()


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "samples.jsonl"
    with store(path):
        with pytest.raises(SampleStoreError, match="another run is writing these samples"):
            store(path).__enter__()
    with open(path) as held:                  # a lock held by another process (flock is per open file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SampleStoreError, match="another run"):
            store(path).__enter__()
    with store(path):                          # released: the next run goes ahead
        pass
