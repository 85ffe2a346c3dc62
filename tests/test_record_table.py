"""The compact record table gives back exactly the records json gives, in a tenth of the memory,
and hands any file it cannot hold exactly to the plain reader."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest

from distill.bank import SHARD_HEADER, Bank, read_jsonl, read_records
from distill.errors import DataError
from distill.record_table import NotCompact, RecordTable


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([0, 1, 3])  # an image may keep no patch
        w, h = rng.randint(50, 900), rng.randint(50, 900)
        out.append(
            {
                "index": i,
                "source": rng.choice(["n0/a_%d.JPEG", "klasse/ünï cödé %d.png", "x/%d.jpg"]) % i,
                "label": rng.randrange(7),
                "orig_size": [w, h],
                "size": [rng.randint(8, 300), 256],
                "image_score": rng.uniform(-1, 1) * 10 ** rng.randint(-9, 2),
                "boxes": [[rng.randint(-5, w) for _ in range(4)] for _ in range(k)],
                "boxes_resized": [[rng.randint(0, 256) for _ in range(4)] for _ in range(k)],
                "scores": [rng.uniform(-1, 1) / 3 for _ in range(k)],
            }
        )
    return out


def write_lines(path, records, header=None):
    lines = ([json.dumps({SHARD_HEADER: header})] if header else []) + [
        json.dumps(r, separators=(",", ":")) for r in records
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_table_equals_the_json_records_item_by_item(tmp_path):
    recs = make_records(700)
    p = tmp_path / "scores.jsonl"
    write_lines(p, recs)
    table = read_records(p)
    assert isinstance(table, RecordTable) and len(table) == 700
    assert table == read_jsonl(p) == recs
    for i in (0, 1, 350, 699, -1, -700):
        got, want = table[i], recs[i]
        assert got == want
        # the same Python types json gives (a numpy scalar would compare equal and still
        # change what json.dumps writes or what isinstance(x, int) says downstream)
        assert json.dumps(got) == json.dumps(want)
    assert table[10:13] == recs[10:13] and table[::-97] == recs[::-97]
    with pytest.raises(IndexError):
        table[700]
    with pytest.raises(IndexError):
        table[-701]


def test_small_chunks_build_the_same_table():
    recs = make_records(101, seed=3)
    assert RecordTable.from_records(recs, chunk=7) == recs
    assert RecordTable.from_records([]) == [] and len(RecordTable.from_records([])) == 0


def test_the_table_is_a_tenth_of_the_dicts():
    recs = make_records(3000, seed=1)
    table = RecordTable.from_records(recs)

    def deep(o, seen=None):
        seen = set() if seen is None else seen
        if id(o) in seen:
            return 0
        seen.add(id(o))
        size = sys.getsizeof(o)
        if isinstance(o, dict):
            size += sum(deep(k, seen) + deep(v, seen) for k, v in o.items())
        elif isinstance(o, list):
            size += sum(deep(v, seen) for v in o)
        return size

    assert table.nbytes() * 5 < deep(recs), (table.nbytes(), deep(recs))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(extra=1),  # a field the table does not know
        lambda r: r.pop("image_score"),
        lambda r: r.update(image_score=None),
        lambda r: r.update(label=2.0),
        lambda r: r.update(index=True),  # a bool is not an int here
        lambda r: r.update(orig_size=[1, 2, 3]),
        lambda r: r.update(boxes=[[1, 2, 3, 4.5]], boxes_resized=[[1, 2, 3, 4]], scores=[0.5]),
        lambda r: r.update(scores=[0.1, 0.2]),  # not one score per box
        lambda r: r.update(image_score=1),  # an int where json gave floats
        lambda r: r.update(boxes=[[2**70, 0, 1, 1]], boxes_resized=[[0, 0, 1, 1]], scores=[0.5]),
        lambda r: r.update(size=[3, "4"]),
    ],
)
def test_a_record_it_cannot_hold_exactly_falls_back_to_the_list(tmp_path, change):
    recs = make_records(20)
    change(recs[13])
    with pytest.raises(NotCompact):
        RecordTable.from_records(recs)
    p = tmp_path / "scores.jsonl"
    write_lines(p, recs)
    got = read_records(p)
    assert isinstance(got, list) and got == recs


def test_a_header_line_or_a_broken_line_takes_the_plain_reader(tmp_path):
    recs = make_records(5)
    p = tmp_path / "a.jsonl"
    write_lines(p, recs, header={"hash": "x"})
    assert read_records(p) == recs
    q = tmp_path / "b.jsonl"
    q.write_text(json.dumps(recs[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.jsonl line 2 is not a JSON record"):
        read_records(q)


def test_positions_by_class_from_the_labels_equal_the_loop():
    recs = make_records(400, seed=5)
    classes = [{"index": i} for i in range(9)]  # labels 7 and 8 have no record
    fast = Bank(None, {}, classes, RecordTable.from_records(recs)).positions_by_class()
    slow = Bank(None, {}, classes, recs).positions_by_class()
    assert fast == slow and fast[8] == [] and sum(map(len, fast.values())) == 400
    recs[3]["label"] = 11  # a label outside the classes is an error either way
    for records in (recs, RecordTable.from_records(recs)):
        with pytest.raises(KeyError):
            Bank(None, {}, classes, records).positions_by_class()


def test_the_cache_beside_the_file_is_used_only_for_that_file(tmp_path, monkeypatch):
    from distill.bank import file_record
    from distill.record_table import CACHE_NAME

    recs = make_records(300, seed=7)
    p = tmp_path / "scores.jsonl"
    write_lines(p, recs)
    sha = file_record(p)["sha256"]
    first = read_records(p, sha)
    cache = tmp_path / CACHE_NAME
    assert cache.is_file() and first == recs
    parsed = []
    real = RecordTable.from_lines
    monkeypatch.setattr(
        RecordTable, "from_lines", classmethod(lambda cls, f: parsed.append(1) or real(f))
    )
    assert read_records(p, sha) == recs and parsed == [], "read from the cache"
    # another file's sha: the cache is not this file's; parsed again (and re-cached)
    recs2 = make_records(300, seed=8)
    write_lines(p, recs2)
    assert read_records(p, file_record(p)["sha256"]) == recs2 and parsed == [1]
    # a garbled cache (a score flipped inside the arrays) is rebuilt, never trusted
    sha2 = file_record(p)["sha256"]
    blob = bytearray(cache.read_bytes())
    at = blob.find(np.float64(recs2[5]["scores"][0]).tobytes()) if recs2[5]["scores"] else -1
    at = at if at >= 0 else len(blob) // 2
    blob[at] ^= 0xFF
    cache.write_bytes(bytes(blob))
    assert read_records(p, sha2) == recs2 and parsed == [1, 1]
    cache.write_bytes(b"junk")
    assert read_records(p, sha2) == recs2 and parsed == [1, 1, 1]
    # no sha given (nothing checked the file): no cache read or written
    cache.unlink()
    assert read_records(p) == recs2 and not cache.exists()
