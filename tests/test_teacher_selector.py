"""The RDED-style baseline: each scene keeps its teacher-preferred crop, classes take their
most confident crops, and the manifest's scores are the teacher's log-probabilities."""

import csv

import numpy as np
import pytest
import torch

from distill.assembly import crop_patch
from distill.data import build_source
from distill.errors import ConfigError
from distill.pipeline import run
from distill.teacher_selector import load_classifier
from tests.conftest import compose


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory):
    from evaluate.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet3", 3, image_size=32, width=8)
    keys = [c.key for c in build_source(compose("distill", ["experiment=smoke"]).data).classes]
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "meta": {
                "arch": "convnet3",
                "kwargs": {"width": 8},
                "classes": keys,
                "input_size": 32,
                "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3},
            },
        },
        path,
    )
    return path


def test_teacher_selector_picks_confident_crops(teacher_pt, tmp_path):
    cfg = compose(
        "distill",
        [
            "experiment=smoke",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "selector=teacher",
            f"selector.checkpoint={teacher_pt}",
            "ipc=[12]",
        ],
    )
    run(cfg)
    assert not (tmp_path / "bank").exists()
    with open(tmp_path / "distilled" / "ipc12" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    source = build_source(cfg.data)
    index_of = {it.source: i for i, it in enumerate(source.items)}
    model, size, mean, std = load_classifier(str(teacher_pt), [c.key for c in source.classes])
    for label in range(3):
        mine = [r for r in rows if r["class_index"] == str(label)]
        scores = [float(r["score"]) for r in mine]
        assert len(mine) == 12 and scores == sorted(scores, reverse=True)
        assert len({r["source"] for r in mine}) == 12, "one crop per image"
        for r in mine[:3]:
            im = source.load(index_of[r["source"]])
            box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
            x = (
                torch.from_numpy(np.asarray(crop_patch(im, box, size), np.float32)).permute(
                    2, 0, 1
                )[None]
                / 255
            )
            with torch.no_grad():
                logp = torch.log_softmax(model((x - mean) / std), 1)[0, label]
            assert float(r["score"]) == pytest.approx(float(logp), abs=1e-4)
            assert box[2] > box[0] and box[3] > box[1]


def test_teacher_with_other_classes_is_refused(teacher_pt):
    with pytest.raises(ConfigError, match="orders must match"):
        load_classifier(str(teacher_pt), ["a", "b", "c"])
