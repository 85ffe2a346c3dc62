"""`python -m evaluate` and `python -m evaluate.table` as a user runs them: the smoke preset,
a 2 x 2 teacher x student multirun turned into the three tables, and a clean error exit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from evaluate.table import main as table_main
from tests.conftest import ROOT
from tests.evaluate.conftest import compose_eval, tiny_overrides

ENV = dict(os.environ, HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")


def _cli(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
    )


def test_smoke_preset_writes_results(tmp_path):
    out = _cli("experiment=smoke", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["complete"] and len(res["seeds"]) >= 2 and len(res["acc_final"]) == len(res["seeds"])
    assert res["dataset"] == "smoke" and res["student"] == "convnet3" and res["ipc"] == 2
    assert (tmp_path / "teacher" / "teacher.pt").is_file()  # trained first, then used
    assert (tmp_path / "evaluate.log").is_file()


def test_multirun_grid_and_tables(folders, tmp_path):
    sweep = tmp_path / "sweep"
    job = tiny_overrides(
        folders["data"],
        tmp_path,
        distilled=str(folders["run_a"]),
        ipc=2,
        epochs=1,
        **{
            # One teacher per architecture, trained by the first job that needs it.
            "teacher.checkpoint": f"{tmp_path}/teachers/" + "${teacher.name}.pt",
            "teacher.train_if_missing": True,
            "teacher_fit.epochs": 1,
            "teacher_fit.batch_size": 12,
        },
    )
    # Each job writes its own folder; the grid is the sweep.
    job = [o for o in job if not o.startswith(("paths.output_dir=", "student=", "teacher="))]
    # Hydra composes the defaults (resnet18, no width) before the sweep: add-or-override.
    job = ["++" + o if o.startswith(("student.kwargs", "teacher.kwargs")) else o for o in job]
    out = _cli(
        "-m",
        "teacher=convnet3,convnet4",
        "student=convnet3,convnet4",
        *job,
        f"hydra.sweep.dir={sweep}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(sweep.glob("*/results.json"))
    assert len(jobs) == 4
    assert sorted((tmp_path / "teachers").glob("*.pt")) == [
        tmp_path / "teachers" / "convnet3.pt",
        tmp_path / "teachers" / "convnet4.pt",
    ]
    # Two more real runs for the other tables: another timestep range (run_b) and IPC 1.
    for name, extra in (("b", {"distilled": str(folders["run_b"]), "ipc": 2}), ("c", {"ipc": 1})):
        from evaluate.run import run

        extra = {"distilled": str(folders["run_a"]), **extra, "epochs": 1}
        extra["teacher.checkpoint"] = str(tmp_path / "teachers" / "convnet3.pt")
        run(compose_eval(tiny_overrides(folders["data"], tmp_path / name, **extra)))

    tables = tmp_path / "tables"
    table_main([str(sweep), str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(tables)])

    def rows(name):
        with open(tables / f"{name}.csv", newline="") as f:
            return list(csv.DictReader(f))

    ts = rows("teacher_student")
    grid = {(r["teacher"], r["student"]) for r in ts if r["ipc"] == "2"}
    assert grid == {(t, s) for t in ("convnet3", "convnet4") for s in ("convnet3", "convnet4")}
    md = (tables / "teacher_student.md").read_text()
    assert "| teacher \\ student | convnet3 | convnet4 |" in md and "± " in md
    tr = rows("t_range")
    assert {(r["start"], r["end"]) for r in tr} == {("0.1", "0.7"), ("0.3", "0.7")}
    mi = rows("method_ipc")
    c3 = {(r["method"], r["IPC"]) for r in mi if r["student"] == r["teacher"] == "convnet3"}
    assert c3 == {("diffusion", "1"), ("diffusion", "2")}
    for name in ("teacher_student", "t_range", "method_ipc"):
        png = tables / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_error_is_clean(tmp_path):
    out = _cli("experiment=smoke", f"hydra.run.dir={tmp_path}", f"distilled={tmp_path}/missing")
    assert out.returncode == 2
    assert "error: distilled=" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_smoke_with_wandb_offline(tmp_path):
    env = dict(ENV, WANDB_MODE="offline")
    out = _cli("experiment=smoke", "logger=wandb", f"hydra.run.dir={tmp_path}", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path).rglob("offline-run-*"))
    assert len(runs) >= 2  # one W&B run per student seed (and the teacher's)


@pytest.mark.slow
def test_ddp_cli_and_multirun_with_ddp(tmp_path):
    """trainer=ddp on 2 CPU processes: Lightning relaunches the command per rank; inside a
    multirun each job re-runs itself as a plain run first (distill.pipeline)."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seeds=1", "epochs=2"]
    out = _cli("experiment=smoke", *ddp, f"hydra.run.dir={tmp_path / 'single'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "single" / "train_ddp_process_1.log").is_file()  # a second rank ran
    res = json.loads((tmp_path / "single" / "results.json").read_text())
    assert res["complete"] and res["steps"] == [2]  # global batch 6 split over 2 ranks
    out = _cli(
        "-m",
        "experiment=smoke",
        *ddp,
        "student.kwargs.width=8,16",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for job in (0, 1):
        assert json.loads((tmp_path / "sweep" / str(job) / "results.json").read_text())["complete"]
