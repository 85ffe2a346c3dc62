"""Stage I records held as a few numpy arrays instead of a list of dicts.

A bank's ``scores.jsonl`` has one record per image (its source, label, sizes, image score
and its patches' boxes and scores). As Python dicts they take about 1.7 KB each: 2.2 GB at
ImageNet-1K (1.3M images), copied page by page into every forked worker that touches them
(reference counts write to the pages). Here the same records take about 150 bytes each plus
the path, in arrays a fork shares as they are; ``table[i]`` builds record ``i``'s dict on
demand, equal to the one json gave (same keys, same Python ints and floats). The table is
read-only: a dict it returns is a copy.

A record that does not have exactly the Stage I fields (another writer's bank, a future
field) makes `RecordTable.from_lines` give up and the caller keep the plain list: never a
record silently losing a field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

FIELDS = (
    "index",
    "source",
    "label",
    "orig_size",
    "size",
    "image_score",
    "boxes",
    "boxes_resized",
    "scores",
)
SORTED_FIELDS = sorted(FIELDS)


class NotCompact(ValueError):
    """A record the table cannot hold exactly."""


def _ints(v, n: int) -> list[int]:
    if not isinstance(v, list) or len(v) != n or not all(type(x) is int for x in v):
        raise NotCompact(f"expected {n} ints, got {v!r}")
    return v


def _float(v) -> float:
    if type(v) is not float:
        raise NotCompact(f"expected a float, got {v!r}")
    return v


class _Chunk:
    """Up to ``chunk`` records' fields as Python lists, checked, before they become arrays."""

    def __init__(self, strict: bool = True):
        # strict=False (JSON lines already scanned for true/false/null): the int fields are
        # checked by the dtype numpy infers for the whole chunk instead of value by value.
        self.strict = strict
        self.n = 0
        self.cols: dict[str, list] = {
            k: [] for k in ("index", "label", "orig_size", "size", "image_score", "count")
        }
        self.boxes: list = []
        self.boxes_r: list = []
        self.scores: list = []

    def add(self, r, paths: list[bytes]) -> None:
        if not isinstance(r, dict) or sorted(r) != SORTED_FIELDS:
            raise NotCompact(f"record fields {sorted(r) if isinstance(r, dict) else r!r}")
        if type(r["index"]) is not int or type(r["label"]) is not int:
            raise NotCompact("index and label must be ints")
        if not isinstance(r["source"], str):
            raise NotCompact("source must be a string")
        sc, bx, br = r["scores"], r["boxes"], r["boxes_resized"]
        if not (isinstance(sc, list) and isinstance(bx, list) and isinstance(br, list)):
            raise NotCompact("boxes, boxes_resized and scores must be lists")
        if not len(sc) == len(bx) == len(br):
            raise NotCompact("boxes, boxes_resized and scores must have the same length")
        c = self.cols
        c["index"].append(r["index"])
        c["label"].append(r["label"])
        if self.strict:
            c["orig_size"].append(_ints(r["orig_size"], 2))
            c["size"].append(_ints(r["size"], 2))
            self.boxes.extend(_ints(b, 4) for b in bx)
            self.boxes_r.extend(_ints(b, 4) for b in br)
        else:
            c["orig_size"].append(r["orig_size"])
            c["size"].append(r["size"])
            self.boxes.extend(bx)
            self.boxes_r.extend(br)
        c["image_score"].append(_float(r["image_score"]))
        c["count"].append(len(sc))
        self.scores.extend(_float(x) for x in sc)
        paths.append(r["source"].encode("utf-8"))
        self.n += 1

    def arrays(self) -> dict[str, np.ndarray]:
        c = self.cols
        return {
            "index": np.asarray(c["index"], dtype=np.int64),
            "label": np.asarray(c["label"], dtype=np.int64),
            "orig_size": _int_rows(c["orig_size"], 2),
            "size": _int_rows(c["size"], 2),
            "image_score": np.asarray(c["image_score"], dtype=np.float64),
            "count": np.asarray(c["count"], dtype=np.int64),
            "boxes": _int_rows(self.boxes, 4),
            "boxes_resized": _int_rows(self.boxes_r, 4),
            "scores": np.asarray(self.scores, dtype=np.float64),
        }


def _int_rows(rows: list, n: int) -> np.ndarray:
    """``rows`` (lists of ``n`` values) as an (R, n) int64 array, only if every value is an
    int: numpy's own inference says so (a float makes it float64, a ragged row or a string
    fails, an int beyond int64 makes it object)."""
    if not rows:
        return np.zeros((0, n), dtype=np.int64)
    try:
        a = np.asarray(rows)
    except (ValueError, OverflowError) as e:
        raise NotCompact(f"rows of {n} ints: {e}") from None
    if a.dtype != np.int64 or a.ndim != 2 or a.shape[1] != n:
        raise NotCompact(f"rows of {n} ints, got {a.dtype} {a.shape}")
    return a


class RecordTable(Sequence):
    """A read-only sequence of Stage I record dicts, stored column by column."""

    def __init__(self, cols: dict[str, np.ndarray], paths: bytes, path_ends: np.ndarray):
        self._c = cols
        self._paths, self._path_ends = paths, path_ends
        self.labels = cols["label"]  # per record, for grouping without building dicts

    # -- building
    @classmethod
    def from_records(
        cls, records: Iterable[dict], chunk: int = 65536, strict: bool = True
    ) -> RecordTable:
        """From record dicts (raises `NotCompact` on one it cannot hold exactly). Built
        ``chunk`` records at a time, so the Python lists in between stay small."""
        parts: list[dict[str, np.ndarray]] = []
        paths: list[bytes] = []
        buf = _Chunk(strict)
        for r in records:
            buf.add(r, paths)
            if buf.n >= chunk:
                parts.append(buf.arrays())
                buf = _Chunk(strict)
        parts.append(buf.arrays())
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "count"}
        counts = np.concatenate([p["count"] for p in parts])
        cols["starts"] = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=cols["starts"][1:])
        ends = np.cumsum(np.fromiter((len(p) for p in paths), dtype=np.int64, count=len(paths)))
        return cls(cols, b"".join(paths), ends)

    @classmethod
    def from_lines(cls, lines: Iterable[bytes]) -> RecordTable:
        """From JSON lines, one parsed at a time (no list of dicts is ever held). A line with
        a JSON ``true``, ``false`` or ``null`` anywhere (even inside a path) is left to the
        plain reader: numpy would take a bool for an int."""

        def parsed():
            for raw in lines:
                if not raw.strip():
                    continue
                if b"true" in raw or b"false" in raw or b"null" in raw:
                    raise NotCompact("a JSON true, false or null")
                yield json.loads(raw)

        return cls.from_records(parsed(), strict=False)

    # -- reading
    def __len__(self) -> int:
        return len(self._c["index"])

    def source(self, i: int) -> str:
        start = int(self._path_ends[i - 1]) if i > 0 else 0
        return self._paths[start : int(self._path_ends[i])].decode("utf-8")

    def scores_of(self, i: int) -> np.ndarray:
        """Record ``i``'s patch scores (a view, no dict built)."""
        c = self._c
        return c["scores"][c["starts"][i] : c["starts"][i + 1]]

    def _one(self, i: int) -> dict:
        c = self._c
        a, b = int(c["starts"][i]), int(c["starts"][i + 1])
        return {
            "index": int(c["index"][i]),
            "source": self.source(i),
            "label": int(c["label"][i]),
            "orig_size": c["orig_size"][i].tolist(),
            "size": c["size"][i].tolist(),
            "image_score": float(c["image_score"][i]),
            "boxes": c["boxes"][a:b].tolist(),
            "boxes_resized": c["boxes_resized"][a:b].tolist(),
            "scores": c["scores"][a:b].tolist(),
        }

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"record {i} of {n}")
        return self._one(j)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self._one(i)

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, RecordTable)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def nbytes(self) -> int:
        """The bytes its arrays and paths take."""
        return sum(a.nbytes for a in self._c.values()) + len(self._paths) + self._path_ends.nbytes


# ----------------------------------------------------------------------------- either kind
# The functions below take a `RecordTable` or a plain list of record dicts alike.


def labels_of(records: Sequence[dict]) -> np.ndarray:
    """Every record's label as an int64 array."""
    if isinstance(records, RecordTable):
        return records.labels
    return np.fromiter((r["label"] for r in records), dtype=np.int64, count=len(records))


def patch_scores(records: Sequence[dict], rows: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The score of patch ``ks[j]`` of record ``rows[j]`` for every j, as float64."""
    rows, ks = np.asarray(rows, dtype=np.int64), np.asarray(ks, dtype=np.int64)
    if isinstance(records, RecordTable):
        starts = records._c["starts"]
        if len(ks) and (np.any(ks < 0) or np.any(starts[rows] + ks >= starts[rows + 1])):
            raise IndexError("a patch index beyond its record's patches")
        return records._c["scores"][starts[rows] + ks]
    return np.array([records[r]["scores"][k] for r, k in zip(rows, ks, strict=True)], np.float64)


def record_scores(records: Sequence[dict], i: int) -> list[float]:
    """Record ``i``'s patch scores as Python floats (no dict built for a table)."""
    if isinstance(records, RecordTable):
        return records.scores_of(i).tolist()
    return records[i]["scores"]


def group_by_label(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Per label, the ascending positions holding it (one stable sort, not one scan each)."""
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return {int(labels[g[0]]): g for g in np.split(order, cuts)} if len(order) else {}


# ----------------------------------------------------------------------------- on disk
# ``scores.table.npz`` beside ``scores.jsonl``: the table's arrays, so a later load of a large
# bank skips parsing a JSON line per image (ImageNet-1K: about 13 s of every stage's start).
# It is a cache, never the record: it is used only when it names the sha256 that meta.json
# recorded for scores.jsonl (which load_bank has just checked the file against) and its own
# arrays hash to the digest stored with them; anything else is rebuilt from the JSON lines.

CACHE_NAME = "scores.table.npz"
_CACHE_VERSION = 1


def _digest(cols: dict[str, np.ndarray], paths: bytes, ends: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(cols):
        a = np.ascontiguousarray(cols[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(paths)
    h.update(np.ascontiguousarray(ends).tobytes())
    return h.hexdigest()


def save_cache(path, table: RecordTable, jsonl_sha256: str) -> None:
    """Write ``table`` as the cache of the JSON lines whose sha256 is ``jsonl_sha256``."""
    from distill.io import atomic_path

    head = {
        "version": _CACHE_VERSION,
        "jsonl_sha256": jsonl_sha256,
        "digest": _digest(table._c, table._paths, table._path_ends),
    }
    arrays = {f"c_{k}": v for k, v in table._c.items()}
    arrays["paths"] = np.frombuffer(table._paths, dtype=np.uint8)
    arrays["path_ends"] = table._path_ends
    arrays["head"] = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_cache(path, jsonl_sha256: str) -> RecordTable | None:
    """The cached table if it is the cache of exactly these JSON lines, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(z["head"].tobytes().decode())
            if head.get("version") != _CACHE_VERSION or head.get("jsonl_sha256") != jsonl_sha256:
                return None
            cols = {k[2:]: z[k] for k in z.files if k.startswith("c_")}
            paths, ends = z["paths"].tobytes(), z["path_ends"]
    except FileNotFoundError:
        return None
    except Exception:  # a cut or garbled cache is rebuilt, never trusted
        return None
    want = {"index", "label", "orig_size", "size", "image_score", "boxes"}
    want |= {"boxes_resized", "scores", "starts"}
    if set(cols) != want or _digest(cols, paths, ends) != head.get("digest"):
        return None
    return RecordTable(cols, paths, ends)
