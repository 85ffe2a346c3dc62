"""A sweep ends in one comparison: ``sweep_summary.md``, ``.csv`` and ``.png`` in its folder.

A Hydra multirun (``python -m distill -m ...`` or ``python -m evaluate -m ...``) leaves one
folder per job; `SweepSummary`, a Hydra callback, reads them when the sweep ends and writes
one table with a row per job: the overrides that make the job different from the others,
and what the job produced. For evaluation jobs that is the headline (best) and final top-1
with their spread over seeds; for distill jobs the images scored, the mean best-patch
relevance, and where the data knows the item's box, the best patch's IoU with it. The plot
shows the headline per job. `summarise_sweep` does the same for any sweep folder by hand:
``python -m distill.sweep outputs/<task>/multiruns/<time>``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

from distill.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


def _overrides(job: Path) -> list[str]:
    f = job / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(f)]


def _varying(jobs: list[tuple[Path, list[str]]]) -> dict[Path, str]:
    """Per job, only its overrides that differ between the jobs (the swept ones)."""
    common = set.intersection(*(set(o) for _, o in jobs)) if jobs else set()
    return {
        p: " ".join(o for o in ov if o not in common) or "(same as the others)" for p, ov in jobs
    }


def _evaluate_row(job: Path) -> dict | None:
    f = job / "results.json"
    if not f.is_file():
        return None
    r = json.loads(f.read_text())
    return {
        "method": r.get("method", ""),
        "ipc": r.get("ipc", ""),
        "student": r.get("student", ""),
        "headline": r.get("headline", "best"),
        "best": r.get("best_mean"),
        "best_std": r.get("best_std"),
        "final": r.get("mean"),
        "final_std": r.get("std"),
        "seeds": len(r.get("seeds", [])),
        "complete": r.get("complete", False),
    }


def _distill_row(job: Path) -> dict | None:
    meta_f = job / "bank" / "meta.json"
    sets = sorted(
        p.parent.relative_to(job / "distilled").as_posix()
        for p in job.glob("distilled/**/set.json")
    )
    if not meta_f.is_file() and not sets:
        return None
    row: dict = {"sets": " ".join(sets)}
    if (job / "bank" / "scores.jsonl").is_file():
        from distill.summary import bank_records

        best = [float(r["scores"][0]) for r in bank_records(job / "bank") if r.get("scores")]
        row["images_scored"] = len(best)
        row["mean_best_relevance"] = round(sum(best) / len(best), 6) if best else None
    from distill.summary import read_json

    loc = read_json(job / "summary.json").get("localisation")
    if loc:
        row["best_patch_iou"] = loc["mean_iou"]
        row["random_patch_iou"] = loc["random_mean_iou"]
    return row


def summarise_sweep(sweep: str | Path) -> Path | None:
    """Write the sweep's comparison; returns the Markdown file (None without any job)."""
    sweep = Path(sweep)
    jobs = sorted(
        (p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
        key=lambda p: (len(p.name), p.name),
    )
    if not jobs:
        return None
    varying = _varying([(p, _overrides(p)) for p in jobs])
    rows = []
    for p in jobs:
        row = _evaluate_row(p) or _distill_row(p) or {}
        rows.append({"job": p.name, "overrides": varying[p], **row})
    keys = ["job", "overrides"] + [
        k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("job", "overrides")
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(sweep / "sweep_summary.csv", buf.getvalue())
    evaluate = any("best" in r for r in rows)
    metric = (
        "best"
        if evaluate
        else "best_patch_iou"
        if any("best_patch_iou" in r for r in rows)
        else "mean_best_relevance"
    )
    lines = [
        f"# Sweep `{sweep}`",
        "",
        f"{len(rows)} jobs; the overrides shown are those that differ between jobs.",
        "",
    ]
    if evaluate:
        lines += [
            "Top-1 %, mean ± std over seeds: best (the paper's headline) and final.",
            "",
            "| job | overrides | method | IPC | student | best | final | seeds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            b = f"{r['best']:.1f} ± {r['best_std']:.1f}" if r.get("best") is not None else "-"
            f = f"{r['final']:.1f} ± {r['final_std']:.1f}" if r.get("final") is not None else "-"
            lines.append(
                f"| {r['job']} | `{r['overrides']}` | {r.get('method', '')} | {r.get('ipc', '')} | "
                f"{r.get('student', '')} | {b} | {f} | {r.get('seeds', '')}{'' if r.get('complete', True) else ' (incomplete)'} |"
            )
    else:
        lines += [
            "| job | overrides | images scored | mean best-patch relevance | best-patch IoU (random) | sets |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            iou = (
                f"{r['best_patch_iou']:.3f} ({r.get('random_patch_iou', float('nan')):.3f})"
                if "best_patch_iou" in r
                else "-"
            )
            rel = r.get("mean_best_relevance")
            lines.append(
                f"| {r['job']} | `{r['overrides']}` | {r.get('images_scored', '-')} | "
                f"{'-' if rel is None else f'{rel:+.5f}'} | {iou} | {r.get('sets', '')} |"
            )
    plot = _plot(rows, metric, sweep / "sweep_summary.png")
    if plot:
        lines += ["", f"![{metric} per job]({plot.name})"]
    path = sweep / "sweep_summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    log.info("sweep summary: %s", path)
    return path


def _plot(rows: list[dict], metric: str, path: Path) -> Path | None:
    vals = [(r["overrides"], r.get(metric)) for r in rows if r.get(metric) is not None]
    if not vals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(vals) + 2), 3.4))
    errs = (
        [r.get("best_std") or 0.0 for r in rows if r.get(metric) is not None]
        if metric == "best"
        else None
    )
    ax.bar(range(len(vals)), [v for _, v in vals], yerr=errs, color="#3b7dd8", capsize=3)
    ax.set_xticks(range(len(vals)), [o[:28] for o, _ in vals], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(
        {"best": "best top-1 (%)", "best_patch_iou": "best-patch IoU with the item"}.get(
            metric, metric
        )
    )
    ax.set_title("sweep: one bar per job", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra is a dependency
    _HydraCallback = object


class SweepSummary(_HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): `summarise_sweep` when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            summarise_sweep(config.hydra.sweep.dir)
        except Exception as e:  # a summary must never turn a finished sweep into a failure
            log.warning("sweep summary not written: %s", e)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(
            "usage: python -m distill.sweep SWEEP_DIR   (writes sweep_summary.md/.csv/.png there)"
        )
        sys.exit(0 if len(sys.argv) == 2 else 2)
    out = summarise_sweep(sys.argv[1])
    print(out.read_text() if out else f"no job folders under {sys.argv[1]}")
