"""`python -m evaluate.table outputs/evaluate`, as the README writes it, finds the results of
`make demo` (which `distill.demo` writes to ``outputs/demo/<time>/evaluate/<job>/``), and a
class-subset run never shares a cell with a full-dataset run."""

from __future__ import annotations

import json
import logging

import pytest

from evaluate.table import find_results, main, resolve_dirs


def _result(path, ipc, acc, **extra):
    res = {
        "mode": "student",
        "dataset": "fashion_mnist",
        "ipc": ipc,
        "method": "ours",
        "student": "convnet3",
        "teacher": "convnet3",
        "labels": "online",
        "acc_final": [acc, acc + 2],
        "acc_best": [acc + 1, acc + 3],
        **extra,
    }
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(res))


def _demo(outputs):
    """Where `make demo` puts its students: a multirun sweep per demo run."""
    sweep = outputs / "demo" / "2026-12-01_10-00-00" / "evaluate"
    for job, ipc in enumerate((1, 10, 50)):
        _result(sweep / str(job), ipc, 10.0 * (job + 1))
    (outputs / "demo" / "2026-12-01_10-00-00" / "distill").mkdir()
    return sweep


def test_readme_command_finds_the_demo(tmp_path, caplog, capsys):
    outputs = tmp_path / "outputs"
    sweep = _demo(outputs)
    with caplog.at_level(logging.WARNING, logger="evaluate.table"):
        main([str(outputs / "evaluate")])  # does not exist: the demo wrote elsewhere
    assert any(str(sweep) in r.getMessage() for r in caplog.records)
    md = (outputs / "evaluate" / "tables" / "method_ipc.md").read_text()
    assert "| ours | 12.0 ± 1.4 (11.0 ± 1.4, n=2) | 22.0" in md and "32.0 ± 1.4" in md
    assert "3 results" in capsys.readouterr().out
    # Now outputs/evaluate exists (its tables/) but still holds no results: the same.
    main([str(outputs / "evaluate")])
    # A results-holding outputs/evaluate is read as it is, the demo left out.
    _result(outputs / "evaluate" / "runs" / "t0", 10, 70.0)
    assert resolve_dirs([outputs / "evaluate"]) == [outputs / "evaluate"]
    main([str(outputs / "evaluate")])
    md = (outputs / "evaluate" / "tables" / "method_ipc.md").read_text()
    assert "72.0 ± 1.4" in md and "12.0" not in md


def test_nothing_anywhere_is_still_an_error(tmp_path, capsys):
    (tmp_path / "outputs").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "outputs" / "evaluate")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


def test_class_subset_runs_get_their_own_rows(tmp_path):
    _result(tmp_path / "full", 10, 50.0)
    _result(tmp_path / "sub", 10, 80.0, class_subset=["sandal", "bag"])
    ds = sorted(r["dataset"] for r in find_results([tmp_path]))
    assert ds == ["fashion_mnist", "fashion_mnist[sandal, bag]"]


def test_gain_over_random_is_a_column_of_every_table(tmp_path):
    """DD-Ranking's view: each method's headline minus random real images' at the same IPC
    (random crops when no random images were run), in the Markdown cells and the CSVs."""
    from evaluate.table import make_tables

    _result(tmp_path / "a", 10, 40.0)  # ours: best 41, 43 -> 42
    _result(tmp_path / "b", 10, 30.0, method="random_image")  # best 31, 33 -> 32
    _result(tmp_path / "c", 1, 20.0)  # no random at IPC 1: no gain
    _result(tmp_path / "d", 1, 15.0, method="random_crop")  # the fallback reference
    files = make_tables([tmp_path], tmp_path / "tables")
    md = files["method_ipc"][0].read_text()
    assert "**+10.0** vs random_image" in md and "**+5.0** vs random_crop" in md
    rows = [ln.split(",") for ln in files["method_ipc"][1].read_text().splitlines()]
    head = rows[0]
    gain = {
        (r[head.index("method")], r[head.index("IPC")]): r[head.index("gain_over_random")]
        for r in rows[1:]
    }
    assert gain[("ours", "10")] == "10.0" and gain[("ours", "1")] == "5.0"
    assert gain[("random_image", "10")] == ""
    # The teacher x student table has the method in its group: the same cell of the random group.
    ts = files["teacher_student"][0].read_text()
    assert "**+10.0** vs random_image" in ts
