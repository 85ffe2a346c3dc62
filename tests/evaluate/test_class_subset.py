"""A class-subset distilled set (distill's materialise with ``classes=[0,2]``) evaluated with
the full data's teacher: the teacher's outputs, the students' head and the validation split
are all restricted to the subset's classes, and results.json says so."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from distill.data import ClassInfo
from distill.errors import DataError
from evaluate.data import RealData, load_distilled
from evaluate.run import restrict_teacher, run
from evaluate.teacher import load_teacher
from tests.evaluate.conftest import CLASSES, compose_eval, tiny_overrides

SUBSET = ["ellipse_0", "triangle_2"]  # classes=[0,2]
FULL = [ClassInfo(i, k, k) for i, k in enumerate(CLASSES)]


def subset_set(folders, root, declare=True):
    """``root/distilled/ipc2`` as materialise writes a subset: only those class folders, a
    classes.csv of the subset (with each class's index in the bank) and set.json."""
    src = folders["run_a"] / "distilled" / "ipc2"
    p = root / "distilled" / "ipc2"
    for k in SUBSET:
        shutil.copytree(src / k, p / k)
    if declare:
        with open(p / "classes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "key", "name", "source_index"])
            for i, k in enumerate(SUBSET):
                w.writerow([i, k, k, CLASSES.index(k)])
    info = {"ipc": 2, "tiles": 1, "image_size": 32, "class_subset": declare}
    (p / "set.json").write_text(json.dumps(info))
    return p


def test_subset_set_is_read_as_a_subset(folders, tmp_path):
    p = subset_set(folders, tmp_path)
    d = load_distilled(p, FULL, 32, dataset_name="smoke")
    assert d.class_subset and [c.key for c in d.classes] == SUBSET
    assert [c.index for c in d.classes] == [0, 1] and d.counts == [2, 2]
    assert sorted(set(d.store.labels.tolist())) == [0, 1]
    # Only set.json says so (no classes.csv of its own): still a declared subset.
    (p / "classes.csv").unlink()
    (p / "set.json").write_text(json.dumps({"ipc": 2, "class_subset": True}))
    assert load_distilled(p, FULL, 32).class_subset


def test_undeclared_missing_classes_stay_an_error(folders, tmp_path):
    """A set that lost a class folder is not a subset: it does not say it is one."""
    p = subset_set(folders, tmp_path, declare=False)
    with pytest.raises(DataError, match=r"classes differ.*only in data=smoke: \[rectangle_1\]"):
        load_distilled(p, FULL, 32, dataset_name="smoke")


def test_validation_and_teacher_are_restricted(folders, teacher_ckpt, tmp_path):
    cfg = compose_eval(tiny_overrides(folders["data"], tmp_path))
    real = RealData(cfg)
    d = load_distilled(subset_set(folders, tmp_path), real.classes, 32)
    view = real.restricted(d.classes)
    assert view.keys == SUBSET and real.keys == CLASSES  # the full data is left as it was
    images, labels = view.val_set[list(range(len(view.val_set)))]
    all_images, all_labels = real.val_set[list(range(len(real.val_set)))]
    assert len(view.val_set) == 16  # 8 validation images of each of the two classes
    keep = (all_labels == 0) | (all_labels == 2)
    assert torch.equal(images, all_images[keep])
    assert torch.equal(labels, (all_labels[keep] == 2).long())  # 0 -> 0, 2 -> 1
    teacher = load_teacher(cfg, real.classes, str(teacher_ckpt))
    sub = restrict_teacher(teacher, real.keys, SUBSET)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(sub.model(x), teacher.model(x)[:, [0, 2]])
    assert not any(p.requires_grad for p in sub.model.parameters())


def test_student_run_on_a_subset(folders, teacher_ckpt, tmp_path):
    p = subset_set(folders, tmp_path / "sub")
    out = tmp_path / "run"
    cfg = compose_eval(
        tiny_overrides(
            folders["data"], out, distilled=str(p), **{"teacher.checkpoint": str(teacher_ckpt)}
        )
    )
    run(cfg)
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["class_subset"] == SUBSET and res["classes"] == SUBSET
    assert res["teacher_acc"] is not None and res["teacher_acc_subset"] is not None
    assert res["distilled_images"] == 4
    assert torch.load(out / "seed0" / "student.pt")["classifier.weight"].shape[0] == 2
    with open(out / "classes.csv", newline="") as f:
        assert [r["key"] for r in csv.DictReader(f)] == SUBSET
