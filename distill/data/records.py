"""The records the data layer hands to the pipeline: source images and skipped files."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from distill.io import write_csv_rows


@dataclass(frozen=True)
class SourceItem:
    """One real image before decoding.

    ``source`` is the stable id used everywhere downstream (banks, manifests, noise seeds):
    the path relative to the dataset root for files, ``{split}/{index:06d}`` for datasets
    stored as arrays. ``size`` is the original (width, height).
    """

    source: str
    label: int
    size: tuple[int, int]
    path: str | None = None


@dataclass(frozen=True)
class SkipRecord:
    """A file or class that was left out, and why (written to ``skipped.csv``)."""

    source: str
    path: str
    class_index: int | None
    stage: str
    reason: str


SKIPPED_HEADER = ["source", "path", "class_index", "stage", "reason"]


def write_skipped_csv(records: list[SkipRecord], path) -> None:
    """Write every skipped file with its reason; an empty file with a header means none."""
    rows = [
        [r.source, r.path, "" if r.class_index is None else r.class_index, r.stage, r.reason]
        for r in records
    ]
    write_csv_rows(path, SKIPPED_HEADER, rows)


def read_skipped_csv(path) -> list[SkipRecord]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [
            SkipRecord(
                r["source"],
                r["path"],
                int(r["class_index"]) if r["class_index"] else None,
                r["stage"],
                r["reason"],
            )
            for r in csv.DictReader(f)
        ]


def skip_to_dict(r: SkipRecord) -> dict:
    return asdict(r)
