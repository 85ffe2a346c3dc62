"""A sweep ends in one comparison (issue 14, case 3): sweep_summary.md/.csv/.png with a row per
job and only the overrides that differ."""

import csv
import json

from distill.sweep import SweepSummary, summarise_sweep


def job(sweep, n, overrides, results=None):
    d = sweep / str(n)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    return d


def result(best, final, method="ours", ipc=10):
    return {
        "method": method,
        "ipc": ipc,
        "student": "convnet3",
        "headline": "best",
        "best_mean": best,
        "best_std": 1.0,
        "mean": final,
        "std": 2.0,
        "seeds": [0, 1],
        "complete": True,
    }


def test_evaluate_sweep_table_names_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    for n, (t, b) in enumerate([("[0.1,0.3]", 30.0), ("[0.1,0.7]", 36.5), ("[0.3,0.9]", 33.2)]):
        job(
            sweep,
            n,
            ["experiment=fashion_mnist", f"distilled=runs/t{t}", "ipc=10"],
            result(b, b - 1),
        )
    text = summarise_sweep(sweep).read_text()
    rows = [
        ln
        for ln in text.splitlines()
        if ln.startswith("| 0 ") or ln.startswith("| 1 ") or ln.startswith("| 2 ")
    ]
    assert len(rows) == 3
    assert "distilled=runs/t[0.1,0.7]" in rows[1] and "experiment=" not in rows[1]
    assert "36.5 ± 1.0" in rows[1] and "35.5 ± 2.0" in rows[1]
    with open(sweep / "sweep_summary.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [float(r["best"]) for r in got] == [30.0, 36.5, 33.2]
    assert (sweep / "sweep_summary.png").stat().st_size > 1000


def test_distill_sweep_rows_from_the_banks(tmp_path):
    sweep = tmp_path / "sweep"
    for n, scores in enumerate([[0.1, 0.3], [0.2, 0.6]]):
        d = job(sweep, n, [f"scoring.t_range=[0.1,0.{n + 3}]"])
        (d / "bank").mkdir()
        (d / "bank" / "meta.json").write_text("{}")
        (d / "bank" / "scores.jsonl").write_text(
            "".join(json.dumps({"scores": [s]}) + "\n" for s in scores)
        )
        (d / "distilled" / "ipc1").mkdir(parents=True)
        (d / "distilled" / "ipc1" / "set.json").write_text("{}")
    # A job whose summary.json knows the item's box (scene data) shows the IoU beside random's.
    (sweep / "1" / "summary.json").write_text(
        json.dumps({"localisation": {"mean_iou": 0.46, "random_mean_iou": 0.29}})
    )
    text = summarise_sweep(sweep).read_text()
    assert "| 0 | `scoring.t_range=[0.1,0.3]` | 2 | +0.20000 | - | ipc1 |" in text
    assert "| 1 | `scoring.t_range=[0.1,0.4]` | 2 | +0.40000 | 0.460 (0.290) | ipc1 |" in text


def test_callback_never_fails_a_finished_sweep(tmp_path, caplog):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}})
    SweepSummary().on_multirun_end(cfg)
    assert "sweep summary not written" in caplog.text
