"""`make demo`: the whole method on the embedded default, end to end, on a laptop CPU.

    python -m distill.demo                 # about 6 minutes on 2 CPU cores
    python -m distill.demo teacher=train   # train the teacher instead of the shipped one
    python -m distill.demo seeds=5 epochs=300 out=outputs/my_demo   # the full student protocol

1. ``python -m distill`` (the ``demo`` preset): Fashion-MNIST scenes scored with the project's
   own diffusion model, DIFT, k-means, distilled sets at IPC 1, 10 and 50; and the same
   command with ``selector=random selector.mode=image``: random real images (whole scenes) at
   the same IPCs, the reference DD-Ranking measures a method's gain against;
2. ``python -m evaluate -m experiment=fashion_mnist ipc=1,10,50`` for each: a ConvNet-3
   teacher trained on the real training split (the full-data reference: shipped in
   ``models/fashion-teacher`` and copied into ``paths.cache_dir`` when none is cached, or
   trained there once with ``teacher=train``), then students on each set, validated on the
   real test split;
3. ``python -m evaluate.table``: the method x IPC table with ours' gain over random, printed,
   with the teacher's accuracy, the seeds and where the grids are.

Each step is the command a user would type; this module only chains them and reports.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

# Students train 100 epochs here (RDED's protocol: 300; `make bench-quality` uses it) and are
# validated every 25, so the whole demo fits in a coffee break on a laptop CPU. CPU threads
# are pinned: floating-point sums follow the thread count, and a teacher trained with 1 thread
# instead of 2 moved the students by 2-4 points (README, "Reproducibility"); with the count
# fixed, the table depends on the machine's CPU type only, not on its number of cores.
DEFAULTS = {
    "out": "outputs/demo",
    "seeds": 2,
    "epochs": 100,
    "val_every": 25,
    "threads": 2,
    "ipc": [1, 10, 50],
    "distill_args": [],
    "evaluate_args": [],
    # shipped: copy models/fashion-teacher's checkpoint into the cache when none is there;
    # train: let evaluate train one (3 minutes on 2 cores) when none is cached.
    "teacher": "shipped",
}

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = ROOT / "models" / "fashion-teacher" / "fashion_mnist_convnet3_w32.pt"


def teacher_checkpoint(evaluate_args: list[str]) -> Path:
    """Where ``experiment=fashion_mnist`` reads its teacher, composed as the CLI does."""
    from hydra import compose, initialize_config_dir

    import evaluate  # noqa: F401  (sets DPD_CONF_DIR)

    with initialize_config_dir(config_dir=str(ROOT / "conf" / "evaluate"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate", overrides=["experiment=fashion_mnist", *evaluate_args]
        )
    return Path(str(cfg.teacher.checkpoint))


def seed_teacher(mode: str, evaluate_args: list[str]) -> str:
    """Put the shipped teacher where evaluation looks for one, unless one is there; says what."""
    if mode not in ("shipped", "train"):
        raise SystemExit(f"demo: teacher={mode!r} must be 'shipped' or 'train'")
    target = teacher_checkpoint(evaluate_args)
    if target.is_file():
        return f"teacher: the cached {target}"
    if mode == "train" or not SHIPPED_TEACHER.is_file():
        return f"teacher: none cached at {target}; evaluation trains it first (about 3 min)"
    import shutil

    from distill.io import atomic_path

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(SHIPPED_TEACHER, tmp)
    return f"teacher: the shipped {SHIPPED_TEACHER.relative_to(ROOT)} copied to {target}"


def _run(cmd: list[str], quiet: bool = False) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL if quiet else None)
    if rc != 0:
        raise SystemExit(f"demo: step failed with exit code {rc}: {' '.join(cmd)}")


def reference_lines(eval_dir: Path, seeds: int, epochs: int) -> str:
    """What the table's numbers stand beside: the teacher (a ConvNet-3 trained on all 60,000
    real training items: the full-data reference of the same architecture) and the seeds."""
    import json

    teacher = None
    for f in sorted(eval_dir.rglob("results.json")):
        teacher = json.loads(f.read_text()).get("teacher_acc")
        if teacher is not None:
            break
    got = f"{teacher:.2f} %" if isinstance(teacher, (int, float)) else "see the results.json files"
    return (
        f"teacher / full-data reference: ConvNet-3 trained on all 60,000 real training items, "
        f"{got} top-1 on the test split\n"
        f"students: ConvNet-3, {epochs} epochs, seeds 0..{seeds - 1} per cell (mean ± std over "
        "them); bold: the gain of ours over random real images of the same IPC\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = OmegaConf.merge(
        OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    )
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    root = Path(str(args.out)) / stamp
    run_dir, eval_dir = root / "distill", root / "evaluate"
    ipcs = [int(k) for k in args.ipc]

    def threads(*keys: str) -> list[str]:
        return [f"{k}={int(args.threads)}" for k in keys] if args.threads else []

    t0 = time.perf_counter()
    py = [sys.executable, "-m"]
    ipc_list = f"[{','.join(map(str, ipcs))}]"
    # The method, then DD-Ranking's reference: random real images (whole scenes) at each IPC.
    runs = {
        "ours": (run_dir, []),
        "random_image": (root / "random", ["selector=random", "selector.mode=image"]),
    }
    for folder, extra in runs.values():
        _run(
            [
                *py,
                "distill",
                "experiment=demo",
                f"ipc={ipc_list}",
                f"hydra.run.dir={folder}",
                *extra,
                *threads("scoring.num_threads", "features.num_threads"),
                *args.distill_args,
            ]
        )
    t1 = time.perf_counter()
    print("\n" + seed_teacher(str(args.teacher), list(args.evaluate_args)), flush=True)
    for method, (folder, _) in runs.items():
        _run(
            [
                *py,
                "evaluate",
                "-m",
                "experiment=fashion_mnist",
                f"distilled={folder}",
                f"ipc={','.join(map(str, ipcs))}",
                f"seeds={int(args.seeds)}",
                f"epochs={int(args.epochs)}",
                f"val.every_n_epochs={int(args.val_every)}",
                f"method={method}",
                f"hydra.sweep.dir={eval_dir / method}",
                *threads("num_threads"),
                *args.evaluate_args,
            ]
        )
    t2 = time.perf_counter()
    _run([*py, "evaluate.table", str(eval_dir), "--out", str(root / "tables")], quiet=True)
    table = root / "tables" / "method_ipc.md"
    print("\n" + "=" * 78)
    print(
        f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min "
        f"(distill {(t1 - t0) / 60:.1f}, students {(t2 - t1) / 60:.1f})\n"
    )
    if table.is_file():
        print(table.read_text())
    print(reference_lines(eval_dir, int(args.seeds), int(args.epochs)))
    print(f"distilled images:   {run_dir / 'distilled'}/ipc{{{','.join(map(str, ipcs))}}}/")
    print(f"random baseline:    {root / 'random' / 'distilled'}/ipc{{{','.join(map(str, ipcs))}}}/")
    print(f"image grids:        {run_dir / 'figures'}/ipc*/overview.png, clusters/*.png")
    print(f"Stage I figures:    {run_dir / 'best_patches.png'}, {run_dir / 'score_histograms.png'}")
    print(f"run summary:        {run_dir / 'summary.md'}")
    print(f"student results:    {eval_dir}/*/*/results.json   tables: {root / 'tables'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
