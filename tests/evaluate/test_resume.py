"""A killed evaluation resumes mid-seed exactly, and a damaged checkpoint is named, set
aside and replaced by the epoch before it (or a fresh start), never loaded and never a crash:
a real ``python -m evaluate`` killed with SIGKILL, and truncated or gutted checkpoint files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from evaluate.run import run
from evaluate.training import SaveLast, fit, prev_checkpoint
from tests.conftest import ROOT
from tests.evaluate.conftest import compose_eval, tiny_overrides
from tests.evaluate.test_training import Interrupt, make_module, trainer

EPOCHS = 4


def _weights(module) -> dict:
    return {k: v.clone() for k, v in module.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Results and final weights of the tiny module trained without a break (one thread, as
    every test here: module fixtures start before the per-test `one_thread`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("straight")
        m = make_module(epochs=EPOCHS)
        res = fit(m, trainer(tmp, EPOCHS), tmp / "last.ckpt", resume=True)
        return res, _weights(m)
    finally:
        torch.set_num_threads(before)


def _killed_after(tmp_path, epochs_done: int):
    """A run interrupted after ``epochs_done`` epochs: last.ckpt holds that epoch, prev.ckpt
    the one before."""
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    t = trainer(tmp_path, EPOCHS, [SaveLast(ckpt), Interrupt(epochs_done)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        t.fit(make_module(epochs=EPOCHS))
    return ckpt


def _resume(tmp_path, ckpt):
    m = make_module(epochs=EPOCHS)
    t = trainer(tmp_path, EPOCHS, [SaveLast(ckpt)])
    return fit(m, t, ckpt, resume=True), _weights(m), t


def test_rotation_keeps_the_epoch_before(tmp_path):
    ckpt = _killed_after(tmp_path, 3)
    last = torch.load(ckpt, weights_only=False)
    prev = torch.load(prev_checkpoint(ckpt), weights_only=False)
    assert (last["epoch"], prev["epoch"]) == (2, 1)
    assert prev_checkpoint(ckpt) == ckpt.parent / "prev.ckpt"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt", "prev.ckpt"]


def test_truncated_last_checkpoint_falls_back_to_prev(tmp_path, uninterrupted, caplog):
    ckpt = _killed_after(tmp_path, 3)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # a copy cut short
    with caplog.at_level(logging.INFO, logger="evaluate.training"):
        res, weights, t = _resume(tmp_path, ckpt)
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(ckpt) in damaged[0] and "prev.ckpt instead" in damaged[0]
    assert any(f"resuming from {prev_checkpoint(ckpt)}" in r.getMessage() for r in caplog.records)
    assert (ckpt.parent / "last.ckpt.damaged").read_bytes() == data[: len(data) // 2]
    assert t.global_step == EPOCHS * 3
    assert res == uninterrupted[0] and _same(weights, uninterrupted[1])
    assert torch.load(ckpt, weights_only=False)["epoch"] == EPOCHS - 1  # rotation goes on


def test_no_sound_checkpoint_trains_from_scratch(tmp_path, uninterrupted, caplog):
    ckpt = _killed_after(tmp_path, 3)
    ckpt.write_bytes(b"\x00" * 100)  # garbage
    gutted = torch.load(prev_checkpoint(ckpt), weights_only=False)
    del gutted["optimizer_states"]  # loads, but cannot resume the optimiser
    torch.save(gutted, prev_checkpoint(ckpt))
    with caplog.at_level(logging.WARNING, logger="evaluate.training"):
        res, weights, _ = _resume(tmp_path, ckpt)
    msgs = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(msgs) == 2 and all("training this run from scratch" in m for m in msgs)
    assert str(ckpt) in msgs[0] and "cannot be loaded" in msgs[0]
    assert "prev.ckpt" in msgs[1] and "optimizer_states" in msgs[1]
    assert res == uninterrupted[0] and _same(weights, uninterrupted[1])


def test_checkpoint_of_another_model_is_not_resumed(tmp_path, uninterrupted, caplog):
    """Weights of other shapes (or missing ones) are damage too: a clear line, then a fresh
    start, instead of Lightning's load error halfway through a sweep."""
    ckpt = _killed_after(tmp_path, 2)
    blob = torch.load(ckpt, weights_only=False)
    blob["state_dict"]["model.classifier.weight"] = torch.zeros(7, 2)
    torch.save(blob, ckpt)
    prev_checkpoint(ckpt).unlink()
    with caplog.at_level(logging.WARNING, logger="evaluate.training"):
        res, weights, _ = _resume(tmp_path, ckpt)
    assert any("other shapes" in r.getMessage() for r in caplog.records)
    assert res == uninterrupted[0] and _same(weights, uninterrupted[1])


def test_resume_false_drops_old_checkpoints(tmp_path, uninterrupted):
    """A deliberate fresh start must not keep an older run's file as its fallback."""
    ckpt = _killed_after(tmp_path, 3)
    m = make_module(epochs=EPOCHS)
    t = trainer(tmp_path, EPOCHS, [SaveLast(ckpt), Interrupt(1)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(m, t, ckpt, resume=False)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0
    assert not prev_checkpoint(ckpt).exists()


# ----------------------------------------------------------------------------- a real kill

# Runs `python -m evaluate` and SIGKILLs itself right after seed 1's checkpoint of epoch 2
# is on disk: no Python clean-up, no atexit, as a pre-emption or an OOM killer would.
KILLER = """
import os, runpy, signal, sys
from evaluate import training
save = training.SaveLast.on_train_epoch_end
def save_then_die(self, trainer, pl_module):
    save(self, trainer, pl_module)
    if "seed1" in self.path and trainer.current_epoch + 1 == 2:
        os.kill(os.getpid(), signal.SIGKILL)
training.SaveLast.on_train_epoch_end = save_then_die
sys.argv = ["evaluate", *sys.argv[1:]]
runpy.run_module("evaluate", run_name="__main__", alter_sys=True)  # as `python -m evaluate`
"""


def test_sigkill_mid_seed_resumes_to_the_same_results(folders, teacher_ckpt, tmp_path):
    def overrides(out):
        return [
            *tiny_overrides(
                folders["data"],
                out,
                distilled=str(folders["run_a"]),
                ipc=2,
                seeds=2,
                epochs=EPOCHS,
                num_threads=1,
                **{"teacher.checkpoint": str(teacher_ckpt)},
            ),
            f"hydra.run.dir={out}",
        ]

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, *overrides(killed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (killed / "seed0" / "result.json").is_file()  # seed 0 done, seed 1 mid-way
    assert not (killed / "seed1" / "result.json").exists()
    state = torch.load(killed / "seed1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 1
    assert not json.loads((killed / "results.json").read_text())["complete"]

    # The same command again (in this process), and a run that was never interrupted.
    run(compose_eval(overrides(killed)[:-1]))
    straight = tmp_path / "straight"
    run(compose_eval(overrides(straight)[:-1]))
    a, b = (json.loads((d / "results.json").read_text()) for d in (killed, straight))
    assert a["complete"] and b["complete"]
    for r in (a, b):
        del r["train_time_s"]  # wall-clock time, the one field that may differ
    assert a == b
    for s in (0, 1):
        wa, wb = (torch.load(d / f"seed{s}" / "student.pt") for d in (killed, straight))
        assert _same(wa, wb), f"seed {s}: other weights after the kill"
