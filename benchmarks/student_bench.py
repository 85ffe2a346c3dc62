"""Student-training speed: steps/s of one training step through Lightning, with the online
teacher (RDED) vs stored soft labels (FKD), ResNet-18 at 224 px and the CIFAR-stem ResNet-18
at 32 px, batch 50 (RDED's IPC-10 batch) from an in-memory distilled set of 10 classes.

.venv/bin/python benchmarks/student_bench.py                 # CPU or the first GPU
.venv/bin/python benchmarks/student_bench.py --steps 20 --warmup 5

Also times the data path alone (uint8 batch -> augmented, CutMix-ed float batch) to show it
does not bound a step. Prints a table; writes results/student_bench.json (atomically) with
the device, torch version, thread count and the raw per-step times.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.io import atomic_write_json  # noqa: E402
from distill.runtime import cpu_flags  # noqa: E402
from evaluate.augment import BatchAugment  # noqa: E402
from evaluate.data import ImageStore, StoreDataset  # noqa: E402
from evaluate.models import create_model  # noqa: E402
from evaluate.module import Classifier  # noqa: E402

OPTIM = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01}
NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
SETTINGS = [("resnet18", 224), ("resnet18_cifar", 32)]


class StepTimer(Callback):
    """Wall time of each training step (forward, backward, optimiser), device-synchronised."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def _sync(self, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._t)


def distilled_set(n: int, size: int, classes: int) -> StoreDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return StoreDataset(ImageStore(images, torch.arange(n) % classes))


def bench(name: str, size: int, labels: str, args, accelerator: str) -> dict:
    classes, ipc, batch = 10, 10, 50
    n = classes * ipc
    steps_per_epoch = n // batch
    total = args.warmup + args.steps
    epochs = -(-total // steps_per_epoch)
    torch.manual_seed(0)
    student = create_model(name, classes, image_size=size)
    teacher = create_model(name, classes, image_size=size)
    aug = BatchAugment(size, scale=(0.5, 1.0), shuffle_patches=2 if size >= 128 else 1)
    module = Classifier(
        student,
        distilled_set(n, size, classes),
        distilled_set(batch, size, classes),
        epochs=epochs,
        global_batch=batch,
        val_batch=batch,
        norm=NORM,
        aug=aug,
        optimizer=OPTIM,
        schedule={"name": "rded_cosine"},
        plan_seed=0,
        targets=labels,
        teacher=teacher,
        teacher_norm=NORM,
        temperature=20.0,
        cutmix_beta=1.0,
        stored_epochs=epochs if labels == "stored" else None,
    )
    precompute = []
    if labels == "stored":  # time the one-off labelling pass (inside fit, before step 1)
        inner = module._stored_labels

        def timed_labels():
            t = time.perf_counter()
            out = inner()
            precompute.append(time.perf_counter() - t)
            return out

        module._stored_labels = timed_labels
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=total,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.fit(module)
    wall = time.perf_counter() - t0
    timed = timer.times[args.warmup :]
    # The data path alone: fetch, augment, CutMix (what a step does before the networks).
    module.to(trainer.strategy.root_device)
    data_times = []
    for s in range(args.steps):
        t = time.perf_counter()
        images, _ = module.train_set[module._plan.batch(0, s % steps_per_epoch)]
        x, _ = module.augment_batch(images.to(module.device, non_blocking=True), 0, s)
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        data_times.append(time.perf_counter() - t)
    step = float(np.mean(timed))
    return {
        "model": name,
        "size": size,
        "labels": labels,
        "batch": batch,
        "steps_timed": len(timed),
        "step_s": round(step, 5),
        "steps_per_s": round(1.0 / step, 3),
        "data_path_ms": round(1000 * float(np.mean(data_times)), 3),
        "fit_wall_s": round(wall, 2),
        "stored_labels_precompute_s": round(precompute[0], 3) if precompute else None,
        "step_times_s": [round(t, 5) for t in timed],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 GPU, 1 CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "student_bench.json")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    accelerator = "gpu" if cuda else "cpu"
    if cuda:
        torch.set_float32_matmul_precision("high")
    device = (
        torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    rows = []
    for name, size in SETTINGS:
        for labels in ("online", "stored"):
            r = bench(name, size, labels, args, accelerator)
            rows.append(r)
            print(
                f"{name:>15} {size:>4}px {labels:>7}: {r['steps_per_s']:8.3f} steps/s "
                f"({r['step_s'] * 1000:9.1f} ms/step, data path {r['data_path_ms']:7.2f} ms)",
                flush=True,
            )
    print()
    print("| model | px | labels | steps/s | ms/step | data path ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['size']} | {r['labels']} | {r['steps_per_s']} | "
            f"{r['step_s'] * 1000:.1f} | {r['data_path_ms']} |"
        )
    report = {
        "benchmark": "student_training_step",
        "device": device,
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "threads": torch.get_num_threads(),
        "precision": "32-true",
        "python": platform.python_version(),
        "warmup_steps": args.warmup,
        "rows": rows,
    }
    atomic_write_json(args.out, report)
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
