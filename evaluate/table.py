"""`python -m evaluate.table DIR`: the paper's tables from every ``results.json`` under DIR
(a run, a multirun sweep, or a folder of them), as Markdown, CSV and heatmap PNG.

python -m evaluate.table outputs/evaluate/multiruns/2026-01-01_12-00-00
python -m evaluate.table outputs/evaluate --out tables/ --metric final

- ``teacher_student``: teacher x student grid per dataset and IPC (paper Tables 4 and 8);
- ``t_range``: start x end of the scoring timestep range per setting (supplementary Table 7;
  read from the distill run that wrote each distilled set);
- ``method_ipc``: method x IPC per dataset, student and teacher (Tables 1 and 2).

Cells are mean +- std (sample std) of the per-seed top-1: the headline metric (``best`` by
default, the best validation in the last 20 % of epochs as the paper and RDED report it),
then the other one (``final``) in brackets, and the number of seeds. The CSVs are long-format
(one row per cell, both metrics) so they can be re-pivoted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import DataError
from distill.io import atomic_path, atomic_write_text, write_csv_rows

log = logging.getLogger("evaluate.table")

# The paper's column order for architectures (Tables 4 and 8); others follow by name.
MODEL_ORDER = [
    "resnet18",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "efficientnet_b0",
    "swin_t",
    "vit_b_16",
    "convnet3",
    "convnet4",
    "resnet18_cifar",
]


@dataclass(frozen=True)
class TableSpec:
    """One table kind: which fields group the results, and which make rows and columns."""

    name: str
    title: str
    group: tuple[str, ...]
    row: Callable[[dict], object]
    col: Callable[[dict], object]
    row_label: str
    col_label: str
    sort_row: Callable[[object], object]
    sort_col: Callable[[object], object]


def _model_key(name) -> tuple:
    n = str(name)
    return (MODEL_ORDER.index(n), n) if n in MODEL_ORDER else (len(MODEL_ORDER), n)


def _t_range(r: dict, i: int):
    tr = r.get("t_range")
    return float(tr[i]) if tr else None


TABLES = [
    TableSpec(
        "teacher_student",
        "Teacher x student (paper Tables 4 and 8)",
        ("dataset", "ipc", "method", "labels"),
        lambda r: r["teacher"],
        lambda r: r["student"],
        "teacher",
        "student",
        _model_key,
        _model_key,
    ),
    TableSpec(
        "t_range",
        "Scoring timestep range, start x end (supplementary Table 7)",
        ("dataset", "ipc", "method", "student", "teacher"),
        lambda r: _t_range(r, 0),
        lambda r: _t_range(r, 1),
        "start",
        "end",
        float,
        float,
    ),
    TableSpec(
        "method_ipc",
        "Method x IPC (paper Tables 1 and 2)",
        ("dataset", "student", "teacher", "labels"),
        lambda r: r["method"],
        lambda r: int(r["ipc"]),
        "method",
        "IPC",
        str,
        int,
    ),
]


def find_results(dirs: list[Path]) -> list[dict]:
    """Every student ``results.json`` under ``dirs`` (at any depth), each with its path in
    ``_path``. A class-subset run's dataset reads ``dataset[key, ...]`` so that it never
    shares a cell with a run on all of the dataset's classes."""
    out = []
    for d in dirs:
        paths = [d] if d.is_file() else sorted(d.rglob("results.json"))
        for p in paths:
            try:
                r = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                log.warning("skipping %s: %s", p, e)
                continue
            if r.get("mode") != "student" or not r.get("acc_final"):
                continue
            if r.get("class_subset"):
                r["dataset"] = f"{r.get('dataset')}[{', '.join(map(str, r['class_subset']))}]"
            r["_path"] = str(p)
            r["_mtime"] = p.stat().st_mtime
            out.append(r)
    return out


def resolve_dirs(dirs: list[Path]) -> list[Path]:
    """The folders to read: each of ``dirs`` that holds student results as it is; one that
    does not (or does not exist) stands for every folder of its name below its nearest
    existing parent, with a warning naming them.

    Evaluation runs land under ``outputs/evaluate/`` by default, but a run of ``make demo``
    (`distill.demo`) writes its students to ``outputs/demo/<time>/evaluate/``: so
    ``python -m evaluate.table outputs/evaluate``, as the README writes it, still finds them
    instead of failing or printing an empty table.
    """
    out = []
    for d in dirs:
        if d.exists() and find_results([d]):
            out.append(d)
            continue
        base = d.parent
        while not base.exists() and base != base.parent:
            base = base.parent
        found: list[Path] = []
        for p in sorted(base.rglob(d.name)) if d.name else []:
            # Outermost folders only: one inside another is read through it.
            inside = any(p.is_relative_to(q) for q in [*out, *found])
            if p.is_dir() and not inside and find_results([p]):
                found.append(p)
        if not found:
            out.append(d)  # make_tables names it in its error
            continue
        log.warning(
            "%s holds no student results.json; reading the %d folder(s) named %r below %s "
            "instead: %s",
            d,
            len(found),
            d.name,
            base,
            ", ".join(map(str, found)),
        )
        out.extend(found)
    return out


def build_cells(results: list[dict], spec: TableSpec, metric: str) -> dict:
    """{group: {(row, col): cell}}; a cell holds the ``metric``'s mean and std (the headline),
    the other metric's as ``other_mean``/``other_std``, n and the source file. Two results for
    one cell: the newer file wins, with a warning naming both."""
    if metric not in METRICS:
        raise DataError(f"metric {metric!r}: use one of {list(METRICS)}")
    key, other_key = METRICS[metric], METRICS[_other(metric)]
    groups: dict = {}
    for r in sorted(results, key=lambda r: r["_mtime"]):
        row, col = spec.row(r), spec.col(r)
        if row is None or col is None:
            continue
        g = tuple(r.get(k) for k in spec.group)
        cells = groups.setdefault(g, {})
        accs = np.asarray(r[key], dtype=np.float64)
        other = np.asarray(r.get(other_key) or r[key], dtype=np.float64)
        if (row, col) in cells:
            log.warning(
                "%s: two results for %s=%s, %s=%s: using %s over %s",
                spec.name,
                spec.row_label,
                row,
                spec.col_label,
                col,
                r["_path"],
                cells[(row, col)]["path"],
            )
        cells[(row, col)] = {
            "mean": float(accs.mean()),
            "std": _std(accs),
            "other_mean": float(other.mean()),
            "other_std": _std(other),
            "n": len(accs),
            "path": r["_path"],
        }
    return groups


# The reference every table compares against: random real images of the same IPC
# (DD-Ranking's "gain over random"), else random real crops. Method names as evaluate writes
# them (evaluate.run._method) and as the benchmarks pass them with method=.
RANDOM_METHODS = ("random_image", "random", "random_crop")


def add_gains(groups: dict, spec: TableSpec) -> None:
    """Give every cell with a random-real reference at the same IPC its ``gain`` (headline
    mean minus the reference's) and ``gain_ref`` (which random method it is measured from).

    In the method x IPC table the reference is a row of the same group; in the others the
    method is part of the group, so the reference is the same cell of the group that differs
    only in its method.
    """
    method_at = spec.group.index("method") if "method" in spec.group else None
    for g, cells in groups.items():
        for (row, col), cell in cells.items():
            ref, name = None, None
            for m in RANDOM_METHODS:
                if method_at is None:
                    if row not in RANDOM_METHODS:
                        ref, name = cells.get((m, col)), m
                else:
                    if g[method_at] not in RANDOM_METHODS:
                        other = groups.get((*g[:method_at], m, *g[method_at + 1 :]), {})
                        ref, name = other.get((row, col)), m
                if ref is not None:
                    break
            if ref is not None:
                cell["gain"] = cell["mean"] - ref["mean"]
                cell["gain_ref"] = name


# Per-seed lists in results.json behind each metric. "best" is what the paper and RDED report:
# the best top-1 over the validations in the last 20 % of epochs; "final" is the last epoch's.
METRICS = {"best": "acc_best", "final": "acc_final"}


def _other(metric: str) -> str:
    return "final" if metric == "best" else "best"


def _std(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(cell: dict | None) -> str:
    if cell is None:
        return "-"
    gain = f"; **{cell['gain']:+.1f}** vs {cell['gain_ref']}" if "gain" in cell else ""
    return (
        f"{cell['mean']:.1f} ± {cell['std']:.1f} "
        f"({cell['other_mean']:.1f} ± {cell['other_std']:.1f}, n={cell['n']}{gain})"
    )


def _axes(cells: dict, spec: TableSpec) -> tuple[list, list]:
    rows = sorted({k[0] for k in cells}, key=spec.sort_row)
    cols = sorted({k[1] for k in cells}, key=spec.sort_col)
    return rows, cols


def render_markdown(groups: dict, spec: TableSpec, metric: str) -> str:
    lines = [
        f"## {spec.title}",
        "",
        f"Top-1 %, mean ± std over seeds: **{metric}** ({_describe(metric)}), then in "
        f"brackets {_other(metric)} ({_describe(_other(metric))}) and the number of seeds; "
        "where random real images (or crops) of the same IPC were evaluated too, the gain "
        "over them in bold (DD-Ranking's view: what the selection buys over chance).",
        "",
    ]
    if not groups:
        lines.append(f"_No results with a {spec.row_label} and a {spec.col_label}._")
        return "\n".join(lines) + "\n"
    for g, cells in groups.items():
        rows, cols = _axes(cells, spec)
        lines.append(
            "**" + ", ".join(f"{k}={v}" for k, v in zip(spec.group, g, strict=True)) + "**"
        )
        lines.append("")
        lines.append(
            f"| {spec.row_label} \\ {spec.col_label} | " + " | ".join(map(str, cols)) + " |"
        )
        lines.append("| --- " * (len(cols) + 1) + "|")
        for r in rows:
            lines.append(f"| {r} | " + " | ".join(_fmt(cells.get((r, c))) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _describe(metric: str) -> str:
    if metric == "best":
        return "the best validation in the last 20 % of epochs, as the paper and RDED report"
    return "after the last epoch"


def write_csv(groups: dict, spec: TableSpec, path: Path, metric: str = "best") -> None:
    """Long format, both metrics: ``mean``/``std`` are the headline ``metric``'s."""
    other = _other(metric)
    header = [
        *spec.group,
        spec.row_label,
        spec.col_label,
        "metric",
        "mean",
        "std",
        f"{other}_mean",
        f"{other}_std",
        "n",
        "gain_over_random",
        "random_reference",
        "source",
    ]
    rows = []
    for g, cells in groups.items():
        r_axis, c_axis = _axes(cells, spec)
        for r in r_axis:
            for c in c_axis:
                cell = cells.get((r, c))
                if cell is not None:
                    rows.append(
                        [
                            *g,
                            r,
                            c,
                            metric,
                            round(cell["mean"], 4),
                            round(cell["std"], 4),
                            round(cell["other_mean"], 4),
                            round(cell["other_std"], 4),
                            cell["n"],
                            round(cell["gain"], 4) if "gain" in cell else "",
                            cell.get("gain_ref", ""),
                            cell["path"],
                        ]
                    )
    write_csv_rows(path, header, rows)


def write_heatmap(groups: dict, spec: TableSpec, path: Path, metric: str) -> None:
    """One annotated heatmap per group, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(groups)
    fig, axes = plt.subplots(
        1,
        n,
        figsize=(1.6 + 1.3 * _total_cols(groups, spec), 1.2 + 0.9 * _max_rows(groups, spec)),
        squeeze=False,
    )
    for ax, (g, cells) in zip(axes[0], groups.items(), strict=True):
        rows, cols = _axes(cells, spec)
        grid = np.full((len(rows), len(cols)), np.nan)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                if (r, c) in cells:
                    grid[i, j] = cells[(r, c)]["mean"]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(spec.col_label)
        ax.set_ylabel(spec.row_label)
        ax.set_title(", ".join(f"{v}" for v in g), fontsize=8)
        finite = grid[np.isfinite(grid)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                cell = cells.get((r, c))
                if cell is not None:
                    colour = "black" if grid[i, j] > mid else "white"
                    ax.text(
                        j,
                        i,
                        f"{cell['mean']:.1f}\n±{cell['std']:.1f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
        fig.colorbar(im, ax=ax, label=f"top-1 % ({metric})")
    fig.suptitle(spec.title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _total_cols(groups, spec) -> int:
    return sum(max(1, len(_axes(c, spec)[1])) for c in groups.values())


def _max_rows(groups, spec) -> int:
    return max(len(_axes(c, spec)[0]) for c in groups.values())


def make_tables(dirs: list[Path], out: Path, metric: str = "best") -> dict[str, list[Path]]:
    """Write the three tables under ``out``; returns the files written per table."""
    results = find_results(dirs)
    if not results:
        raise DataError(f"no student results.json under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    parts = []
    for spec in TABLES:
        groups = build_cells(results, spec, metric)
        add_gains(groups, spec)
        md = render_markdown(groups, spec, metric)
        parts.append(md)
        files = [out / f"{spec.name}.md", out / f"{spec.name}.csv"]
        atomic_write_text(files[0], md)
        write_csv(groups, spec, files[1], metric)
        if groups:
            files.append(out / f"{spec.name}.png")
            write_heatmap(groups, spec, files[2], metric)
        written[spec.name] = files
    print(f"{len(results)} results\n")
    print("\n".join(parts))
    print(f"tables written to {out}")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate.table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="runs, sweeps or results.json files")
    parser.add_argument("--out", type=Path, default=None, help="default: DIR/tables")
    parser.add_argument(
        "--metric",
        choices=list(METRICS),
        default="best",
        help="headline figure: best (the paper's and RDED's, default) or final; both are written",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dirs = resolve_dirs(args.dirs)
    missing = [d for d in dirs if not d.exists()]
    if missing:
        print(f"error: not found: {', '.join(map(str, missing))}", file=sys.stderr)
        sys.exit(2)
    first = args.dirs[0]
    out = args.out or (first.parent if first.is_file() else first) / "tables"
    try:
        make_tables(dirs, out, args.metric)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
