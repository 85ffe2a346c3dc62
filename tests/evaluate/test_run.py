"""`evaluate.run` on generated folders: a real tiny evaluation, the alternatives (hard and
stored labels), teacher training and reuse, and every bad input as a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.errors import ConfigError, DataError, DistillError, ModelError
from evaluate.run import run
from tests.evaluate.conftest import CLASSES, compose_eval, tiny_overrides


def _run(folders, tmp_path, **extra):
    extra.setdefault("distilled", str(folders["run_a"]))
    extra.setdefault("ipc", 2)
    cfg = compose_eval(tiny_overrides(folders["data"], tmp_path, **extra))
    run(cfg)
    return json.loads((tmp_path / "results.json").read_text())


def test_student_run_writes_results(folders, teacher_ckpt, tmp_path):
    res = _run(folders, tmp_path, seeds=2, **{"teacher.checkpoint": str(teacher_ckpt)})
    assert res["complete"] and res["seeds"] == [0, 1]
    for key in ("student", "teacher", "dataset", "ipc", "acc_final", "acc_best", "mean", "std"):
        assert key in res
    assert (res["student"], res["teacher"], res["dataset"], res["ipc"]) == (
        "convnet3",
        "convnet3",
        "smoke",
        2,
    )
    assert len(res["acc_final"]) == len(res["acc_best"]) == 2
    assert all(0 <= a <= 100 for a in res["acc_final"] + res["acc_best"])
    assert res["mean"] == pytest.approx(np.mean(res["acc_final"]), abs=1e-3)
    assert res["std"] == pytest.approx(np.std(res["acc_final"], ddof=1), abs=1e-3)
    assert res["steps"] == [2, 2]  # 6 images, RDED batch min(50, 6): one step per epoch
    assert res["t_range"] == [0.1, 0.7] and res["method"] == "diffusion"  # from the distill run
    assert res["teacher_acc"] is not None and res["classes"] == CLASSES
    # The protocol as run, recorded: headline, augmentation factor, class order, numerics.
    assert res["headline"] == "best" and res["headline_mean"] == res["best_mean"]
    assert res["class_order"] == "native" and res["aug_factor"] == 1 == res["distilled_tiles"]
    assert res["crop_scale"] == [1.0, 1.0] and res["shuffle_patches"] == 1
    assert res["numerics"]["threads"] >= 1 and res["numerics"]["torch"] == torch.__version__
    for s in (0, 1):
        assert (tmp_path / f"seed{s}" / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / f"seed{s}" / "csv" / "metrics.csv").is_file()
        assert set(torch.load(tmp_path / f"seed{s}" / "student.pt")) >= {"classifier.weight"}
    assert (tmp_path / "distilled_grid.png").is_file() and (tmp_path / "classes.csv").is_file()
    # Different seeds are different students.
    a, b = (torch.load(tmp_path / f"seed{s}" / "student.pt") for s in (0, 1))
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    # Run again in the same folder: finished seeds are not retrained.
    mtime = (tmp_path / "seed0" / "result.json").stat().st_mtime
    again = _run(folders, tmp_path, seeds=2, **{"teacher.checkpoint": str(teacher_ckpt)})
    assert again["acc_final"] == res["acc_final"]
    assert (tmp_path / "seed0" / "result.json").stat().st_mtime == mtime
    # ... but not under another configuration.
    with pytest.raises(ConfigError, match="another configuration"):
        _run(folders, tmp_path, seeds=2, epochs=3, **{"teacher.checkpoint": str(teacher_ckpt)})


def test_hard_and_stored_labels(folders, teacher_ckpt, tmp_path):
    hard = _run(folders, tmp_path / "hard", **{"labels": "hard", "teacher.checkpoint": "null"})
    assert hard["teacher"] == "none" and hard["labels"] == "hard"
    stored = _run(
        folders,
        tmp_path / "stored",
        **{"labels": "stored", "teacher.checkpoint": str(teacher_ckpt)},
    )
    assert stored["labels"] == "stored"
    assert list((tmp_path / "stored" / "soft_labels").glob("ws1_rank0.pt"))


def test_teacher_trained_once_when_missing(folders, tmp_path):
    ckpt = tmp_path / "cache" / "teacher.pt"
    extra = {
        "teacher.checkpoint": str(ckpt),
        "teacher.train_if_missing": True,
        "teacher_fit.epochs": 1,
        "teacher_fit.batch_size": 12,
        "epochs": 1,
    }
    _run(folders, tmp_path / "a", **extra)
    assert ckpt.is_file()
    meta = torch.load(ckpt)["meta"]
    assert meta["classes"] == CLASSES and meta["arch"] == "convnet3" and meta["input_size"] == 32
    mtime = ckpt.stat().st_mtime
    res = _run(folders, tmp_path / "b", **extra)
    assert ckpt.stat().st_mtime == mtime and not (tmp_path / "b" / "teacher").exists()
    assert res["teacher_checkpoint"] == str(ckpt)


def _error(folders, tmp_path, exc, **extra) -> str:
    with pytest.raises(exc) as e:
        _run(folders, tmp_path, **extra)
    assert isinstance(e.value, DistillError)
    return str(e.value)


def test_bad_inputs_name_both_sides(folders, teacher_ckpt, tmp_path):
    ok = {"teacher.checkpoint": str(teacher_ckpt)}
    msg = _error(folders, tmp_path / "1", DataError, distilled=str(tmp_path / "none"), **ok)
    assert "does not exist" in msg and str(tmp_path / "none") in msg
    (tmp_path / "empty").mkdir()
    msg = _error(
        folders, tmp_path / "2", DataError, distilled=str(tmp_path / "empty"), ipc="null", **ok
    )
    assert "no class folders" in msg and "ellipse_0" in msg
    msg = _error(folders, tmp_path / "3", ConfigError, distilled="null", **ok)
    assert "distilled is not set" in msg
    # The data's classes differ from the distilled set's (only two classes evaluated).
    msg = _error(
        folders, tmp_path / "4", DataError, **{"data.classes": "[ellipse_0,rectangle_1]"}, **ok
    )
    assert "triangle_2" in msg and "data=smoke" in msg
    # A teacher with another number of outputs.
    from evaluate.models import ConvNet

    torch.save(ConvNet(5, width=8).state_dict(), tmp_path / "five.pt")
    msg = _error(
        folders, tmp_path / "5", ModelError, **{"teacher.checkpoint": str(tmp_path / "five.pt")}
    )
    assert "five.pt" in msg and "5 outputs" in msg and "3 classes" in msg
    # A checkpoint that does not load at all, and one of another architecture.
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    msg = _error(
        folders, tmp_path / "6", ModelError, **{"teacher.checkpoint": str(tmp_path / "junk.pt")}
    )
    assert "junk.pt" in msg
    msg = _error(
        folders, tmp_path / "7", ModelError, teacher="convnet4", **{"teacher.kwargs.width": 8}, **ok
    )
    assert "convnet3 teacher but teacher=convnet4" in msg
    # A teacher trained with another class order.
    blob = torch.load(teacher_ckpt)
    blob["meta"]["classes"] = list(reversed(CLASSES))
    torch.save(blob, tmp_path / "reordered.pt")
    msg = _error(
        folders,
        tmp_path / "8",
        ModelError,
        **{"teacher.checkpoint": str(tmp_path / "reordered.pt")},
    )
    assert "class order differs" in msg and "triangle_2" in msg and "data=smoke" in msg
    msg = _error(folders, tmp_path / "9", ConfigError, **{"teacher.checkpoint": "null"})
    assert "teacher=convnet3 has no weights" in msg
    msg = _error(
        folders, tmp_path / "10", ModelError, **{"teacher.checkpoint": str(tmp_path / "absent.pt")}
    )
    assert "absent.pt does not exist" in msg
    msg = _error(folders, tmp_path / "11", DataError, **{"data.val_split": "null"}, **ok)
    assert "no validation split" in msg


def test_mode_teacher_outputs(teacher_ckpt):
    out = teacher_ckpt.parent
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "teacher" and res["checkpoint"] == str(teacher_ckpt)
    assert 0 <= res["acc_final"] <= 100 and res["epochs"] == 3
    blob = torch.load(teacher_ckpt)
    assert blob["meta"]["val_acc"] == res["acc_final"] and "classifier.weight" in blob["state_dict"]
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "classes.csv").is_file()


def test_imagenet_teacher_for_a_subset(tmp_path):
    """teacher.imagenet_outputs: a 1000-way teacher keeps the columns of the subset's WordNet
    IDs, in the data's order; keys that are not WordNet IDs are refused by name."""
    from distill.data import ClassInfo
    from distill.data.classes import imagenet_by_wnid
    from evaluate.models import ConvNet
    from evaluate.teacher import load_teacher

    torch.save(ConvNet(1000, width=8).state_dict(), tmp_path / "in1k.pt")
    woof = ["n02086240", "n02087394", "n02088364"]
    classes = [ClassInfo(i, k, k) for i, k in enumerate(woof)]
    cfg = compose_eval(
        [
            "teacher=convnet3",
            "teacher.kwargs.width=8",
            "teacher.imagenet_outputs=true",
            "input.size=32",
        ]
    )
    t = load_teacher(cfg, classes, str(tmp_path / "in1k.pt"))
    x = torch.randn(2, 3, 32, 32)
    full = t.model.model(x)
    idx = [imagenet_by_wnid()[k].index for k in woof]
    assert idx == [155, 159, 162] and torch.equal(t.model(x), full[:, idx])
    shapes = [ClassInfo(i, k, k) for i, k in enumerate(CLASSES)]
    with pytest.raises(ConfigError, match="not ImageNet-1K WordNet IDs.*ellipse_0"):
        load_teacher(cfg, shapes, str(tmp_path / "in1k.pt"))


def test_wandb_logger_runs(folders, teacher_ckpt, tmp_path, monkeypatch):
    """logger=wandb builds a W&B logger per seed and logs curves, the image grid and the
    results table (WANDB_MODE=disabled here; the slow CLI test uses offline mode)."""
    from lightning.pytorch.loggers import WandbLogger

    import evaluate.run as er

    seen = []
    real_log_table = WandbLogger.log_table

    def spy(self, key, columns=None, data=None, **kw):
        seen.append((key, columns, data))
        return real_log_table(self, key=key, columns=columns, data=data, **kw)

    monkeypatch.setattr(WandbLogger, "log_table", spy)
    built = []
    real_build = er.build_loggers
    monkeypatch.setattr(er, "build_loggers", lambda *a: built.append(real_build(*a)) or built[-1])
    res = _run(
        folders, tmp_path, seeds=2, logger="wandb", **{"teacher.checkpoint": str(teacher_ckpt)}
    )
    assert res["complete"]
    assert [sorted(type(lg).__name__ for lg in b) for b in built] == [
        ["CSVLogger", "WandbLogger"]
    ] * 2
    names = [next(lg for lg in b if isinstance(lg, WandbLogger))._name for b in built]
    assert names[0].endswith("seed0") and names[1].endswith("seed1")
    assert [len(d) for _, _, d in seen] == [1, 2]  # the last seed's run holds the full table
    assert seen[-1][1][:3] == ["seed", "acc_final", "acc_best"]


def test_teacher_keeps_its_own_input_size(folders, teacher_ckpt, tmp_path):
    """A 32 px teacher (its teacher.pt says so) teaches a 64 px student: the teacher's
    ConvNet head is built for 32 and its inputs are resized to 32."""
    res = _run(folders, tmp_path, **{"input.size": 64, "teacher.checkpoint": str(teacher_ckpt)})
    assert res["input_size"] == 64 and res["complete"]
    assert res["teacher_acc"] is not None


def test_load_distilled_reads_the_assembly(folders, tmp_path):
    """set.json, else manifest.csv, tells the evaluation how a set was tiled."""
    import shutil

    from distill.data import ClassInfo
    from evaluate.data import load_distilled, read_set_info
    from tests.evaluate.conftest import CLASSES

    src = folders["run_a"] / "distilled" / "ipc2"
    p = tmp_path / "ipc2"
    shutil.copytree(src, p)
    classes = [ClassInfo(i, k, k) for i, k in enumerate(CLASSES)]
    (p / "set.json").write_text(json.dumps({"tiles": 2, "class_order": "sorted"}))
    ds = load_distilled(p, classes, 32)
    assert ds.tiles == 2 and ds.info["class_order"] == "sorted"
    (p / "set.json").unlink()
    rows = "file,slot\n" + "".join(f"a/{i}.png,{s}\n" for i in range(2) for s in range(4))
    (p / "manifest.csv").write_text(rows)
    assert read_set_info(p)[1] == 2
    (p / "manifest.csv").write_text("file,slot\na/0.png,0\n")
    assert read_set_info(p)[1] == 1
    (p / "manifest.csv").unlink()
    assert read_set_info(p) == ({}, None)


def test_teacher_pt_of_another_order_is_refused(teacher_ckpt):
    """A teacher.pt records its classes and order; data in another order is refused."""
    from distill.data import ClassInfo
    from evaluate.teacher import load_teacher
    from tests.evaluate.conftest import CLASSES

    blob = torch.load(teacher_ckpt, weights_only=False)
    assert blob["meta"]["class_order"] in ("sorted", "native")
    cfg = compose_eval(["teacher=convnet3", "teacher.kwargs.width=8", "input.size=32"])
    flipped = [ClassInfo(i, k, k) for i, k in enumerate(reversed(CLASSES))]
    with pytest.raises(ModelError, match="class order differs"):
        load_teacher(cfg, flipped, str(teacher_ckpt), class_order="listed")
    # The same keys in the same order under another name: the keys decide, it loads.
    same = [ClassInfo(i, k, k) for i, k in enumerate(CLASSES)]
    assert load_teacher(cfg, same, str(teacher_ckpt), class_order="listed").name == "convnet3"


def test_distilled_grid_is_labelled_and_sized_to_the_set():
    """A row per class with its name at IPC > 1 (no empty columns beyond the IPC), and a grid
    of classes ten to a row at IPC 1, not a one-column strip."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from evaluate.run import distilled_grid

    def store(ipc, n_cls, side=32):
        labels = torch.arange(n_cls).repeat_interleave(ipc)
        images = torch.randint(0, 255, (len(labels), 3, side, side), dtype=torch.uint8)
        return SimpleNamespace(labels=labels, images=images)

    names = [f"class{i}" for i in range(12)]
    two = np.asarray(distilled_grid(store(2, 3), names[:3], title="ours - IPC 2"))
    assert two.shape[1] < 3 * 66 + 8 * 40  # two columns of 64-px thumbnails (plus the title)
    one = np.asarray(distilled_grid(store(1, 12), names, title="ours - IPC 1"))
    assert one.shape[1] > 2 * one.shape[0]  # ten classes to a row
    # Labels on dark bands: near-black pixels inside the (bright-noise) thumbnails' corners.
    assert (one[20:30, 2:40].max(axis=-1) < 20).any()
