"""Our exports read by DD-Ranking's own code (`make ddranking-check`; no GPU, no ImageNet).

    .venv/bin/python benchmarks/ddranking_check.py [WORKDIR]

Two halves. Under the project's venv it builds two small ImageWoof-like distilled sets (one
in this project's default ``sorted`` order, one in ``minimax``), exports them with
`distill.export`, and lays out a stand-in ImageNet (``train/`` and ``val/``, 1000 sorted
WordNet-ID folders) whose ten ImageWoof folders hold our distilled images. Then it runs
itself under ``.venv-ddranking`` (``pip install ddranking``, which pins numpy<2 and so
cannot share the project's venv), where, with DD-Ranking 0.2.0's code only:

1. ``LabelRobustScoreHard(dataset="ImageWoof", ...)`` is built over the stand-in ImageNet:
   its ``get_dataset`` (ImageNet subset selection, ``class_map``, ``ToTensor, Normalize,
   Resize, CenterCrop``) and loaders run as in a real evaluation.
2. ``compute_metrics(image_tensor=torch.load("images.pt"), syn_lr=...)`` derives the hard
   labels its own way (``[i] * ipc``); they are captured and compared with ours, and its
   ``_compute_hard_label_metrics`` trains a ConvNet-3 on its ``TensorDataset`` of our
   tensor and validates it on its val split (our same images, labelled through its
   ``class_map``): near 100 % means images.pt's blocks are DD-Ranking's classes; the same
   tensor in the set's sorted order is the control and lands near chance.
3. Each of DD-Ranking's val images (through its transform) equals our tensor's row for the
   same file: the normalisation and layout are the ones its real data has.
4. Its ``image_path`` reader, ``torchvision.datasets.ImageFolder(root)``, numbers the rded
   and imagefolder exports of the minimax set as DD-Ranking's ImageWoof classes.

Prints ``ddranking-check: ok`` and a JSON summary, exit 0; anything else fails (exit 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DDRANKING_PY = ROOT / ".venv-ddranking" / "bin" / "python"
IPC = 2
SIZE = 32


def woof_orders() -> tuple[list[str], list[str]]:
    """ImageWoof's sorted classes and its minimax order, from the project's preset (read in
    the project's half only: DD-Ranking's venv has no omegaconf)."""
    from omegaconf import OmegaConf

    woof = OmegaConf.load(ROOT / "conf" / "data" / "imagewoof.yaml")
    return list(woof.classes), list(woof.class_orders.minimax)


# ------------------------------------------------------------------ the project's half


def _make_set(run: Path, keys: list[str], order_name: str) -> Path:
    """A distilled set as distill writes it; each class a colour, each image its noise."""
    import csv

    import numpy as np
    from PIL import Image

    set_dir = run / "distilled" / f"ipc{IPC}"
    set_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in keys:
        (set_dir / k).mkdir()
        i = woof_orders()[0].index(k)
        base = np.array([(37 * i) % 256, 255 - 25 * i, 128])
        for j in range(IPC):
            px = np.clip(base + rng.normal(0, 30, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(set_dir / k / f"{j:04d}.png")
    for p in (set_dir / "classes.csv", run / "classes.csv"):
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "key", "name", "source_index"])
            w.writerows([i, k, k, i] for i, k in enumerate(keys))
    info = {
        "format": "dpd-distilled-set-v1",
        "ipc": IPC,
        "tiles": 1,
        "image_size": SIZE,
        "dataset": "imagewoof",
        "class_order": order_name,
        "class_subset": False,
    }
    (set_dir / "set.json").write_text(json.dumps(info))
    (set_dir / "manifest.csv").write_text("file,slot,class_index\n")
    return set_dir


def _fake_imagenet(root: Path, woof_set: Path) -> None:
    """train/ and val/ with ImageNet's 1000 sorted WordNet-ID folders (ImageFolder index =
    ImageNet index, as DD-Ranking's get_dataset assumes); ImageWoof's hold our images."""
    from PIL import Image

    from distill.data.classes import imagenet_classes

    dot = root / "dot.png"
    root.mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE)).save(dot)
    for split in ("train", "val"):
        for c in imagenet_classes():
            d = root / split / c.wnid
            d.mkdir(parents=True)
            if (woof_set / c.wnid).is_dir():
                for f in sorted((woof_set / c.wnid).iterdir()):
                    shutil.copyfile(f, d / f.name)
            else:
                os.link(dot, d / "0.png")


def prepare(work: Path) -> dict:
    from distill.export import export

    woof_sorted, woof_minimax = woof_orders()
    sorted_set = _make_set(work / "run_sorted", woof_sorted, "sorted")
    minimax_set = _make_set(work / "run_minimax", woof_minimax, "minimax")
    [(ddr, _)] = export(sorted_set, "ddranking")  # dataset=auto: set.json's imagewoof
    [(ddr_raw, _)] = export(sorted_set, "ddranking", dataset="none", out=work / "set_order")
    [(rded, _)] = export(minimax_set, "rded")
    [(folder, _)] = export(minimax_set, "imagefolder")
    _fake_imagenet(work / "imagenet", sorted_set)
    return {
        "ddranking": str(ddr),
        "ddranking_set_order": str(ddr_raw),
        "rded": str(rded),
        "imagefolder": str(folder),
        "imagenet": str(work / "imagenet"),
        "sorted_set": str(sorted_set),
        "work": str(work),
    }


# --------------------------------------------------------------- DD-Ranking's half


def inside(paths: dict) -> dict:
    import numpy as np
    import torch
    from ddranking.metrics import LabelRobustScoreHard
    from ddranking.utils import build_model
    from ddranking.utils.data import ImageNetSubsets
    from torchvision import datasets

    class Stop(Exception):
        pass

    class Capture(LabelRobustScoreHard):
        """compute_metrics as DD-Ranking runs it, stopped after the synthetic-data step
        (the full-data and random-baseline steps need the real ImageNet)."""

        def _compute_hard_label_metrics_helper(
            self, image_tensor, image_path, hard_labels, lr, mode, hyper_param_search=False
        ):
            self.captured = (image_tensor, hard_labels)
            torch.manual_seed(0)
            model = build_model(
                model_name=self.model_name,
                num_classes=self.num_classes,
                im_size=self.im_size,
                pretrained=False,
                device=self.device,
            )
            self.acc = self._compute_hard_label_metrics(
                model, image_tensor, image_path, lr, hard_labels, mode
            )
            raise Stop

    work = Path(paths["work"])
    ev = Capture(
        dataset="ImageWoof",
        real_data_path=paths["imagenet"],
        ipc=IPC,
        model_name="ConvNet-3",
        data_aug_func="none",
        aug_params={},
        optimizer="sgd",
        lr_scheduler="step",
        step_size=1000,
        im_size=(SIZE, SIZE),
        num_epochs=40,
        real_batch_size=8,
        syn_batch_size=8,
        num_workers=0,
        device="cpu",
        save_path=str(work / "ddr_results" / "scores.csv"),
        random_data_path=str(work / "ddr_random"),
    )
    out = {"num_classes": ev.num_classes, "class_map": {int(k): v for k, v in ev.class_map.items()}}
    exp = json.loads((Path(paths["ddranking"]) / "export.json").read_text())
    ours = {c["imagenet_index"]: c["label"] for c in exp["classes"]}
    assert ev.num_classes == exp["num_classes"] == 10, out
    assert ours == out["class_map"], (ours, out["class_map"])
    assert [c["imagenet_index"] for c in exp["classes"]] == ImageNetSubsets.imagewoof

    accs = {}
    for name in ("ddranking", "ddranking_set_order"):
        images = torch.load(os.path.join(paths[name], "images.pt"), map_location="cpu")
        with contextlib.suppress(Stop):  # raised once the synthetic-data step is done
            ev.compute_metrics(image_tensor=images, syn_lr=0.01)
        got_images, got_labels = ev.captured
        want = torch.tensor(np.array([np.ones(IPC) * i for i in range(10)]), dtype=torch.long)
        assert torch.equal(got_labels, want.view(-1)), got_labels
        assert torch.equal(got_labels, torch.load(os.path.join(paths[name], "hard_labels.pt")))
        assert got_images is images and tuple(images.shape) == (10 * IPC, 3, SIZE, SIZE)
        accs[name] = float(ev.acc)
    out["val_acc"] = accs
    assert accs["ddranking"] >= 90, accs
    assert accs["ddranking_set_order"] <= 50, accs

    # Its real-data pipeline on our files gives our tensor's rows (normalisation, layout).
    images = torch.load(os.path.join(paths["ddranking"], "images.pt"), map_location="cpu")
    row_of = {}
    for c in exp["classes"]:
        for j in range(IPC):
            row_of[(c["key"], f"{j:04d}.png")] = c["label"] * IPC + j
    sub = ev.test_loader_syn.dataset  # Subset of ImageFolder(val) with DD-Ranking's transform
    worst = 0.0
    for i, idx in enumerate(sub.indices):
        path, target = sub.dataset.samples[idx]
        x, _ = sub[i]
        row = row_of[(Path(path).parent.name, Path(path).name)]
        assert ev.class_map[target] == row // IPC
        worst = max(worst, float((x - images[row]).abs().max()))
    out["max_abs_diff_vs_its_transform"] = worst
    assert len(sub.indices) == 10 * IPC and worst < 1e-5, worst

    # image_path: DD-Ranking reads a folder with torchvision's ImageFolder.
    woof = ImageNetSubsets.imagewoof
    from_key = {}
    for c in json.loads((Path(paths["rded"]) / "export.json").read_text())["classes"]:
        from_key[c["key"]] = c["imagenet_index"]
    for name in ("rded", "imagefolder"):
        ds = datasets.ImageFolder(root=paths[name])
        e = json.loads((Path(paths[name]) / "export.json").read_text())
        key_of_folder = {c["folder"]: c["key"] for c in e["classes"]}
        for path, label in ds.samples:
            key = key_of_folder[Path(path).parent.name]
            assert woof[label] == from_key[key], (name, path, label)
        out[f"{name}_class_to_idx"] = ds.class_to_idx
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--inside"]:
        paths = json.loads(Path(argv[1]).read_text())
        try:
            out = inside(paths)
        except AssertionError as e:
            print(f"ddranking-check: FAILED: {e!r}")
            return 1
        print(json.dumps(out, indent=1, default=str))
        print("ddranking-check: ok")
        return 0
    if not DDRANKING_PY.exists():
        print(
            f"{DDRANKING_PY} not found: python3 -m venv .venv-ddranking && "
            ".venv-ddranking/bin/pip install ddranking",
            file=sys.stderr,
        )
        return 2
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="ddranking-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        paths = prepare(work)
        (work / "paths.json").write_text(json.dumps(paths))
        r = subprocess.run(
            [str(DDRANKING_PY), __file__, "--inside", str(work / "paths.json")],
            env={**os.environ, "PYTHONPATH": ""},
            cwd=work,  # DD-Ranking writes ./random_data and its results below its cwd
        )
    finally:
        if not argv:
            shutil.rmtree(work, ignore_errors=True)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
