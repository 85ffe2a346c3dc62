"""`make bench-ablations`: the older scene benchmark and its ablations (32 px patches, 16 px tiles).

Its last results, from the previous embedded model and before the faithful-protocol defaults,
are kept in ``results/fashion_ablations_prev_model.md``; ``make bench-quality`` now writes
``results/fashion.md`` from the protocols at the paper's settings (``fashion_report.py``).

    python benchmarks/fashion_quality.py                      # seeds=5, about 3.5 hours on 2 CPU cores
    python benchmarks/fashion_quality.py seeds=2 epochs=100   # a quicker look

Distils Fashion-MNIST *scenes* (one labelled item among distractors, its box known) at IPC 1,
10 and 50 with the project's own diffusion model, and with the baselines, then trains
students of the same protocol (ConvNet-3, KL to a ConvNet-3 teacher, RDED's recipe) on each
set and validates them on the real Fashion-MNIST test split:

- ``ours``: Stage I relevance + DIFT k-means + quotas (the method);
- ``ours_no_cluster``: the same bank, patches by relevance only (paper Table 5);
- ``random_crop``: random patch-size crops of random scenes;
- ``random_scene``: random whole scenes (random real images of the distilled dataset);
- ``random_item``: random real single items (the test distribution itself);
- ``teacher_crop``: RDED-style crops, the teacher's most confident of 5 per scene;
- ``full``: every real training item (60,000), the upper bound, ``full_epochs`` epochs;
- ``ours_hard``, ``random_crop_hard``: the same students with hard labels (no teacher);
- ``ours_single``, ``random_crop_single``: the same selections, one patch per image (no 2x2
  tiles) at ``single_patch_ipc``;
- ``ours_late_t`` (and ``ours_late_t_single``): the method with Stage I's timesteps drawn
  from ``late_t_range`` instead of the default [0.1, 0.7];
- ``{method}_set{seed}``: ``set_seed_methods`` redistilled at ``set_seed_ipc`` from each of
  ``set_seeds`` (new scenes, noise and picks), since student seeds alone hide how much the
  one distilled set moves the result.

It also measures Stage I localisation on the scenes: the IoU of each scene's selected patch
with the labelled item's box and the share of selections containing its centre, against a
uniformly random patch and against the teacher's crops, and what each distilled set is made
of (patch IoU with the item, the teacher's agreement with each patch's label). Writes
``results/fashion_ablations.md`` and ``results/fashion_ablations.json``; every command it runs is printed and
recorded. Rerunning it skips finished student sweeps and resumes the distill runs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.bank import read_jsonl  # noqa: E402
from distill.data import build_source  # noqa: E402
from distill.data.sources import fashion_arrays  # noqa: E402
from distill.io import atomic_write_json, atomic_write_text  # noqa: E402
from distill.localization import localisation  # noqa: E402
from distill.runtime import machine_name  # noqa: E402

DEFAULTS = {
    "work": "outputs/bench_quality",
    "out": "results",  # relative to the repository
    "seeds": 5,
    "epochs": 300,
    # Validation every 50 epochs: "best" then counts epochs 250 and 300 (RDED: last 20%).
    "val_every": 50,
    "full_epochs": 5,
    "full_seeds": 5,  # each seed is ~6 minutes per 5 epochs on 2 cores (60,000 items + teacher)
    "ipc": [1, 10, 50],
    "images_per_class": 100,
    # Stage I localisation over the paper's Table 7 timestep ranges (images per class).
    "t_ranges": [
        [0.1, 0.3],
        [0.1, 0.5],
        [0.1, 0.7],
        [0.1, 0.9],
        [0.3, 0.5],
        [0.3, 0.7],
        [0.3, 0.9],
        [0.5, 0.7],
        [0.5, 0.9],
        [0.7, 0.9],
    ],
    "t_range_images_per_class": 30,
    # The same students with hard labels (cross-entropy, no teacher): does selection matter
    # more when the label cannot say what a patch shows?
    "hard_label_methods": ["ours", "random_crop"],
    "hard_label_ipc": [1, 10],
    # Below IPC 10 the method tiles 4 half-size patches per image; the ConvNet teacher, trained
    # on whole single items, reads such tiles poorly. The same selections without tiles
    # (one patch per image) separate the selection from the assembly.
    "single_patch_ipc": [10],
    # The method again with Stage I's timesteps drawn from this range (the grid's best
    # localising range on this model), tiled and untiled: does better localisation teach
    # better? null: skip.
    "late_t_range": [0.5, 0.9],
    # Students' seeds vary only the student; the distilled set is one draw. Redistil from
    # these extra seeds (new scenes, noise and picks; 0 is the main run) at ``set_seed_ipc``
    # to see how much the set itself moves the result.
    "set_seeds": [1, 2],
    "set_seed_ipc": 1,
    "set_seed_methods": ["ours", "ours_late_t", "random_crop"],
    "report_only": False,
    "methods": [
        "ours",
        "ours_no_cluster",
        "random_crop",
        "random_scene",
        "random_item",
        "teacher_crop",
        "full",
    ],
}

COMMANDS: list[str] = []


REPORT_ONLY = False  # report_only=true: write the report from what earlier runs left


def run(cmd: list[str]) -> None:
    if REPORT_ONLY:
        print(f"(report only, not run) {' '.join(cmd)}", flush=True)
        return
    COMMANDS.append(" ".join(cmd))
    print(f"\n$ {' '.join(cmd)}", flush=True)
    if subprocess.call(cmd, cwd=ROOT) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")


def teacher_path() -> Path:
    cache = os.environ.get(
        "DISTILL_CACHE",
        os.path.join(os.environ.get("HOME", "."), ".cache", "diffusion-patch-distill"),
    )
    return Path(cache) / "teachers" / "fashion_mnist_convnet3_w32.pt"


def write_full_train(folder: Path) -> None:
    """The whole real training split as an ImageFolder (the upper bound's 'distilled set')."""
    if (folder / "classes.csv").is_file():
        return
    from PIL import Image

    from distill.data.sources import FASHION_CLASSES

    images, labels, _ = fashion_arrays(
        OmegaConf.create({"root": "/usr/share/datasets/fashion-mnist"}), "train"
    )
    tmp = folder.with_name(folder.name + ".tmp")
    for key, _ in FASHION_CLASSES:
        (tmp / key).mkdir(parents=True, exist_ok=True)
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(im).convert("RGB").save(tmp / FASHION_CLASSES[int(y)][0] / f"{i:05d}.png")
    with open(tmp / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "key", "name"])
        w.writerows([k, key, name] for k, (key, name) in enumerate(FASHION_CLASSES))
    tmp.rename(folder)


def main(argv: list[str] | None = None) -> int:
    a = OmegaConf.merge(
        OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    )
    work, out = Path(str(a.work)), ROOT / str(a.out)
    global REPORT_ONLY
    REPORT_ONLY = bool(a.report_only)
    ipcs = ",".join(str(int(k)) for k in a.ipc)
    ipc_list = f"[{ipcs}]"
    py = [sys.executable, "-m"]
    common = [
        "experiment=demo",
        f"ipc={ipc_list}",
        f"data.images_per_class={int(a.images_per_class)}",
    ]
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    sets: dict[str, Path] = {}

    def step(name: str, fn) -> None:
        s = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - s

    methods = list(a.methods)
    if "ours" in methods or "ours_no_cluster" in methods:
        step(
            "distill:ours", lambda: run([*py, "distill", *common, f"hydra.run.dir={work / 'ours'}"])
        )
        sets["ours"] = work / "ours"
    if "ours_no_cluster" in methods:
        step(
            "distill:ours_no_cluster",
            lambda: run(
                [
                    *py,
                    "distill.materialize",
                    f"bank_dir={work / 'ours'}",
                    f"ipc={ipc_list}",
                    "cluster=none",
                    f"out_dir={work / 'ours_no_cluster' / 'distilled'}",
                ]
            ),
        )
        sets["ours_no_cluster"] = work / "ours_no_cluster"
    # The distill overrides of each variant (beyond ``common``).
    variant_args = {
        "ours": [],
        "ours_late_t": [f"scoring.t_range=[{','.join(str(v) for v in a.late_t_range or [])}]"],
        "random_crop": ["selector=random", "selector.mode=crop"],
        "random_scene": ["selector=random", "selector.mode=image"],
        "random_item": [
            "selector=random",
            "selector.mode=image",
            "data=fashion_mnist",
            "scoring.patch=null",
            "data.short_edge=32",
        ],
    }
    for name in ("random_crop", "random_scene", "random_item"):
        extra = variant_args[name]
        if name in methods:
            step(
                f"distill:{name}",
                lambda n=name, e=extra: run(
                    [*py, "distill", *common, *e, f"hydra.run.dir={work / n}"]
                ),
            )
            sets[name] = work / name

    def evaluate(
        name: str, folder: Path, ipc_arg: str, extra: list[str] = (), seeds: int | None = None
    ) -> Path:
        sweep = work / f"eval_{name}"
        want = int(a.seeds if seeds is None else seeds)

        def finished(r: dict) -> bool:  # every seed asked for ran (not a shorter earlier run)
            return bool(r.get("complete", False)) and len(r.get("seeds", [])) >= want

        # Complete only when every IPC's job wrote all its seeds (a killed or shorter sweep is
        # rerun; evaluate resumes it seed by seed).
        done = sum(finished(json.loads(f.read_text())) for f in sweep.glob("*/results.json"))
        if not (sweep / "multirun.yaml").is_file() or done < len(ipc_arg.split(",")):
            run(
                [
                    *py,
                    "evaluate",
                    "-m",
                    "experiment=fashion_mnist",
                    f"distilled={folder}",
                    f"ipc={ipc_arg}",
                    f"seeds={want}",
                    f"method={name}",
                    f"hydra.sweep.dir={sweep}",
                    *extra,
                ]
            )
        return sweep

    student_args = [f"epochs={int(a.epochs)}", f"val.every_n_epochs={int(a.val_every)}"]
    sweeps = {}
    for name in [m for m in methods if m in sets]:
        # Each set is laid out as a distill run: <set>/distilled/ipc{K}.
        step(
            f"evaluate:{name}",
            lambda n=name, f=sets[name]: sweeps.__setitem__(n, evaluate(n, f, ipcs, student_args)),
        )
    if "teacher_crop" in methods:  # needs the teacher the first evaluation trained and cached
        step(
            "distill:teacher_crop",
            lambda: run(
                [
                    *py,
                    "distill",
                    *common,
                    "selector=teacher",
                    f"selector.checkpoint={teacher_path()}",
                    f"hydra.run.dir={work / 'teacher_crop'}",
                ]
            ),
        )
        sets["teacher_crop"] = work / "teacher_crop"
        step(
            "evaluate:teacher_crop",
            lambda: sweeps.__setitem__(
                "teacher_crop",
                evaluate("teacher_crop", sets["teacher_crop"], ipcs, student_args),
            ),
        )
    single = ",".join(str(int(k)) for k in a.single_patch_ipc)

    def untiled(bank: str) -> None:
        """``{bank}_single``: the bank's selections at ``single_patch_ipc``, no 2x2 tiles."""
        step(
            f"distill:{bank}_single",
            lambda: run(
                [
                    *py,
                    "distill.materialize",
                    f"bank_dir={work / bank}",
                    f"ipc=[{single}]",
                    "concat_max_ipc=0",
                    f"out_dir={work / f'{bank}_single' / 'distilled'}",
                ]
            ),
        )
        sets[f"{bank}_single"] = work / f"{bank}_single"

    if single and "ours" in sets:
        untiled("ours")
    if single and "random_crop" in sets:
        step(
            "distill:random_crop_single",
            lambda: run(
                [
                    *py,
                    "distill",
                    *common[:1],
                    f"ipc=[{single}]",
                    *common[2:],
                    *variant_args["random_crop"],
                    "assemble.concat_max_ipc=0",
                    f"hydra.run.dir={work / 'random_crop_single'}",
                ]
            ),
        )
        sets["random_crop_single"] = work / "random_crop_single"
    if a.late_t_range is not None and "ours" in methods:
        step(
            "distill:ours_late_t",
            lambda: run(
                [
                    *py,
                    "distill",
                    *common,
                    *variant_args["ours_late_t"],
                    f"hydra.run.dir={work / 'ours_late_t'}",
                ]
            ),
        )
        sets["ours_late_t"] = work / "ours_late_t"
        step(
            "evaluate:ours_late_t",
            lambda: sweeps.__setitem__(
                "ours_late_t", evaluate("ours_late_t", sets["ours_late_t"], ipcs, student_args)
            ),
        )
        if single:
            untiled("ours_late_t")
    for name in [
        n for n in ("ours_single", "random_crop_single", "ours_late_t_single") if n in sets
    ]:
        step(
            f"evaluate:{name}",
            lambda n=name: sweeps.__setitem__(n, evaluate(n, sets[n], single, student_args)),
        )
    hard_ipcs = ",".join(str(int(k)) for k in a.hard_label_ipc)
    for name in [m for m in a.hard_label_methods if m in sets]:
        step(
            f"evaluate:{name}_hard",
            lambda n=name: sweeps.__setitem__(
                f"{n}_hard",
                evaluate(f"{n}_hard", sets[n], hard_ipcs, [*student_args, "labels=hard"]),
            ),
        )
    if "full" in methods:
        full = work / "full" / "distilled" / "ipc6000"
        step("write:full", lambda: write_full_train(full))
        step(
            "evaluate:full",
            lambda: sweeps.__setitem__(
                "full",
                evaluate(
                    "full",
                    full,
                    "6000",
                    [f"epochs={int(a.full_epochs)}", "val.every_n_epochs=1"],
                    seeds=int(a.full_seeds),
                ),
            ),
        )

    set_sweeps: dict[str, dict[int, Path]] = {}
    k1 = int(a.set_seed_ipc)
    for name in [m for m in a.set_seed_methods if m in sets]:
        set_sweeps[name] = {0: sweeps[name]} if name in sweeps else {}
        extra = variant_args[name]
        for seed in (int(v) for v in a.set_seeds):
            d = work / f"{name}_set{seed}"
            step(
                f"distill:{name}_set{seed}",
                lambda d=d, e=extra, sd=seed: run(
                    [
                        *py,
                        "distill",
                        *common[:1],
                        f"ipc=[{k1}]",
                        *common[2:],
                        *e,
                        f"seed={sd}",
                        f"hydra.run.dir={d}",
                    ]
                ),
            )
            step(
                f"evaluate:{name}_set{seed}",
                lambda n=f"{name}_set{seed}", d=d, nm=name, sd=seed: set_sweeps[nm].__setitem__(
                    sd, evaluate(n, d, str(k1), student_args)
                ),
            )

    t_loc = {}
    for lo, hi in a.t_ranges:
        d = work / f"t_range_{lo}_{hi}"
        step(
            f"t_range:{lo}-{hi}",
            lambda d=d, lo=lo, hi=hi: run(
                [
                    *py,
                    "distill",
                    "experiment=demo",
                    "stages=[score]",
                    f"scoring.t_range=[{lo},{hi}]",
                    f"data.images_per_class={int(a.t_range_images_per_class)}",
                    f"hydra.run.dir={d}",
                ]
            ),
        )
        if (d / "bank" / "scores.jsonl").is_file():
            t_loc[f"{lo}-{hi}"] = stage1_localisation(d)

    tables = work / "tables"
    sweeps = {k: v for k, v in sweeps.items() if v.is_dir()}
    subprocess.call(
        [*py, "evaluate.table", *map(str, sweeps.values()), "--out", str(tables)], cwd=ROOT
    )
    results = collect(sweeps)
    loc = localisation_report(work, a)
    diagnostics = patch_diagnostics(work, sets, [int(k) for k in a.ipc])
    report = {
        "machine": machine_name(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "settings": OmegaConf.to_container(a),
        "students": results,
        "set_seeds": {
            name: {str(sd): collect({name: sw}).get(name, {}).get(str(k1)) for sd, sw in by.items()}
            for name, by in set_sweeps.items()
        },
        "localisation": loc,
        "t_range_localisation": t_loc,
        "patch_diagnostics": diagnostics,
        "timings_s": timings,
        "total_minutes": (time.perf_counter() - t0) / 60,
        "commands": COMMANDS,
        "sweep_commands": {
            **{k: sweep_command(v) for k, v in sweeps.items()},
            **{
                f"{name}_set{sd}": sweep_command(sw)
                for name, by in set_sweeps.items()
                for sd, sw in by.items()
                if sd != 0
            },
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "fashion_ablations.json", report)
    atomic_write_text(out / "fashion_ablations.md", markdown(report, tables))
    print((out / "fashion_ablations.md").read_text())
    return 0


def sweep_command(sweep: Path) -> str:
    """The command that made a student sweep, from the overrides Hydra recorded for it."""
    f = sweep / "multirun.yaml"
    if not f.is_file():
        return f"(no multirun.yaml in {sweep})"
    overrides = OmegaConf.load(f).hydra.overrides
    return " ".join(["python -m evaluate -m", *overrides.task, f"hydra.sweep.dir={sweep}"])


def collect(sweeps: dict[str, Path]) -> dict:
    """Per method and IPC: final and best top-1 per seed, mean and std."""
    out: dict = {}
    for name, sweep in sweeps.items():
        for f in sorted(sweep.glob("*/results.json")):
            r = json.loads(f.read_text())
            out.setdefault(name, {})[str(r["ipc"])] = {
                "acc_final": r["acc_final"],
                "acc_best": r["acc_best"],
                "mean": r["mean"],
                "std": r["std"],
                "seeds": r["seeds"],
                "teacher_acc": r.get("teacher_acc"),
                "file": str(f),
            }
    return out


def patch_diagnostics(work: Path, sets: dict[str, Path], ipcs: list[int]) -> dict:
    """What each distilled set is made of, per method and IPC, patch by patch (the manifest):

    - ``mean_iou`` / ``centre_hit``: each patch against its scene's labelled item (scenes
      only; a whole-scene "patch" scores the item's area share);
    - ``teacher_top1`` / ``teacher_p``: the teacher's agreement with the patch's label, and
      its mean probability for it, on the patch alone at the teacher's input size;
    - ``sources``: distinct source images behind the set's patches (its diversity).

    Students learn from the teacher's soft labels, so a patch the teacher finds ambiguous is
    not wasted; these figures say why one selection teaches better than another.
    """
    from distill.assembly import PatchRef, load_crops
    from distill.localization import box_iou, contains_centre
    from distill.teacher_selector import load_classifier
    from evaluate.data import read_distill_config

    if not teacher_path().is_file():
        return {}
    out: dict = {}
    sources: dict[str, tuple] = {}  # one source and one teacher per data config
    for name, run_dir in sets.items():
        cfg = read_distill_config(run_dir) or read_distill_config(work / "ours")
        key = json.dumps(cfg.get("data"), sort_keys=True)
        if key not in sources:
            src = build_source(OmegaConf.create(cfg).data)  # resolves ${seed} etc.
            sources[key] = (src, load_classifier(str(teacher_path()), [c.key for c in src.classes]))
        source, (model, size, mean, std) = sources[key]
        index = {it.source: i for i, it in enumerate(source.items)}
        truth = getattr(source, "boxes", None)
        for k in ipcs:
            manifest = run_dir / "distilled" / f"ipc{k}" / "manifest.csv"
            if not manifest.is_file():
                continue
            with manifest.open(newline="") as f:
                rows = list(csv.DictReader(f))
            refs = [
                PatchRef(
                    index[r["source"]],
                    r["source"],
                    tuple(int(r[c]) for c in ("x0", "y0", "x1", "y1")),
                )
                for r in rows
            ]
            labels = torch.tensor([int(r["class_index"]) for r in rows])
            crops = load_crops(source, refs, size)
            x = torch.from_numpy(np.stack([np.asarray(c.convert("RGB")) for c in crops]))
            x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
            with torch.no_grad():
                prob = torch.cat([model(b).softmax(1) for b in x.split(256)])
            # The written images themselves (2x2 tiles up to IPC 10), as a student sees them.
            files = sorted({r["file"] for r in rows})
            by_file = {r["file"]: int(r["class_index"]) for r in rows}
            xi = torch.from_numpy(
                np.stack(
                    [
                        np.asarray(
                            Image.open(manifest.parent / f).convert("RGB").resize((size, size))
                        )
                        for f in files
                    ]
                )
            )
            xi = (xi.permute(0, 3, 1, 2).float() / 255 - mean) / std
            with torch.no_grad():
                pred_i = torch.cat([model(b).argmax(1) for b in xi.split(256)])
            image_top1 = float((pred_i == torch.tensor([by_file[f] for f in files])).float().mean())
            row = {
                "images": len(files),
                "teacher_top1_image": image_top1,
                "patches": len(rows),
                "sources": len({r["source"] for r in rows}),
                "teacher_top1": float((prob.argmax(1) == labels).float().mean()),
                "teacher_p": float(prob[torch.arange(len(labels)), labels].mean()),
            }
            if truth is not None:
                boxes = [truth[ref.item] for ref in refs]
                row["mean_iou"] = float(
                    np.mean([box_iou(r.box, b) for r, b in zip(refs, boxes, strict=True)])
                )
                row["centre_hit"] = float(
                    np.mean([contains_centre(r.box, b) for r, b in zip(refs, boxes, strict=True)])
                )
            out.setdefault(name, {})[str(k)] = row
    return out


def stage1_localisation(run_dir: Path) -> dict:
    """Stage I's best patch per scene of one run against the labelled item's box."""
    meta = json.loads((run_dir / "bank" / "meta.json").read_text())
    source = build_source(OmegaConf.create(meta["data_cfg"]))
    truth = {it.source: box for it, box in zip(source.items, source.boxes, strict=True)}
    patch = int(meta["stages"]["score"]["spec"]["scoring"]["patch"])
    return localisation(read_jsonl(run_dir / "bank" / "scores.jsonl"), truth, patch).as_dict()


def localisation_report(work: Path, a) -> dict:
    """Stage I (ours) and the teacher's crops against the labelled item's box."""
    if not (work / "ours" / "bank" / "scores.jsonl").is_file():
        return {}
    meta = json.loads((work / "ours" / "bank" / "meta.json").read_text())
    source = build_source(OmegaConf.create(meta["data_cfg"]))
    truth = {it.source: box for it, box in zip(source.items, source.boxes, strict=True)}
    patch = int(meta["stages"]["score"]["spec"]["scoring"]["patch"])
    rep = {
        "stage1": localisation(
            read_jsonl(work / "ours" / "bank" / "scores.jsonl"), truth, patch
        ).as_dict()
    }
    if (work / "ours_late_t" / "bank" / "scores.jsonl").is_file():
        rep["stage1_late_t"] = stage1_localisation(work / "ours_late_t")
    for name in ("teacher_crop", "random_crop"):
        man = work / name / "distilled" / f"ipc{max(int(k) for k in a.ipc)}" / "manifest.csv"
        if man.is_file():
            with open(man, newline="") as f:
                rows = list(csv.DictReader(f))
            recs = [
                {
                    "source": r["source"],
                    "boxes": [[int(r[k]) for k in ("x0", "y0", "x1", "y1")]],
                    "orig_size": [64, 64],
                }
                for r in rows
                if r["note"] != "reused"
            ]
            rep[name] = localisation(recs, truth, patch).as_dict()
    return rep


def markdown(rep: dict, tables: Path) -> str:
    s = rep["settings"]
    lines = [
        "# Fashion-MNIST: a small-scale reproduction",
        "",
        (
            f"Report rebuilt on {rep['date']} from the outputs of earlier runs (`report_only=true`;"
            " their commands are in their Hydra folders); raw figures in `fashion_ablations.json`."
            if s.get("report_only")
            else f"Written on {rep['machine']}, {rep['date']}, by `make bench-quality`; this "
            f"invocation took {rep['total_minutes']:.0f} minutes and ran the commands listed at "
            "the end. Student sweeps already complete in its work folder were reused, not rerun; "
            "every sweep's own command is listed too. Raw figures in `fashion_ablations.json`."
        ),
        "",
        f"Distilled from Fashion-MNIST scenes ({s['images_per_class']} training items per class, each drawn "
        "at a random place and scale on a 64x64 canvas among 1-2 smaller distractors) with the project's "
        "own diffusion model (`models/fashion-ldm`). Students: ConvNet-3 (width 32, 32 px), KL to a "
        f"ConvNet-3 teacher, RDED's recipe, {s['epochs']} epochs ({s['full_epochs']} for `full`), "
        f"{s['seeds']} seeds, top-1 (%) on the real test split (10,000 items), final epoch, mean +- std.",
        "",
        "| method | " + " | ".join(f"IPC {k}" for k in s["ipc"]) + " |",
        "| --- | " + " | ".join("---" for _ in s["ipc"]) + " |",
    ]
    for name, by_ipc in rep["students"].items():
        if name == "full":
            r = next(iter(by_ipc.values()))
            lines.append(
                f"| full training set (60,000; {s['full_epochs']} epochs, {len(r['seeds'])} seeds) "
                f"| {r['mean']:.1f} +- {r['std']:.1f} (all IPC) |" + " |" * (len(s["ipc"]) - 1)
            )
            continue
        cells = []
        for k in s["ipc"]:
            r = by_ipc.get(str(k))
            n = len(r["acc_final"]) if r else 0
            part = f" (n={n})" if r and n != int(s["seeds"]) else ""  # a sweep cut short
            cells.append(f"{r['mean']:.1f} +- {r['std']:.1f}{part}" if r else "-")
        label = name.replace("_hard", " (hard labels)").replace("_single", " (no tiles)")
        if name.startswith("ours_late_t") and s.get("late_t_range"):
            label = label.replace("ours_late_t", f"ours, t in {list(s['late_t_range'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    teacher = next(
        (
            r["teacher_acc"]
            for by in rep["students"].values()
            for r in by.values()
            if r.get("teacher_acc") is not None
        ),
        None,
    )
    if teacher is not None:
        lines += [
            "",
            f"Teacher (ConvNet-3 on the full training split): {teacher:.1f} % test top-1.",
        ]
    if any(rep.get("set_seeds", {}).values()):
        seeds = sorted({int(sd) for by in rep["set_seeds"].values() for sd in by})
        lines += [
            "",
            f"## How much the distilled set itself moves the result (IPC {s['set_seed_ipc']})",
            "",
            "The table above varies only the student: its seeds train on one distilled set. Here "
            "each set is distilled again from other seeds (`seed=`: new scenes, noise and "
            f"picks; 0 is the set above); each cell is the mean of {s['seeds']} students.",
            "",
            "| method | "
            + " | ".join(f"set seed {sd}" for sd in seeds)
            + " | mean +- std over sets |",
            "| --- | " + " | ".join("---" for _ in seeds) + " | --- |",
        ]
        for name, by in rep["set_seeds"].items():
            means = [by[str(sd)]["mean"] if by.get(str(sd)) else None for sd in seeds]
            got = [m for m in means if m is not None]
            tail = (
                f"{np.mean(got):.1f} +- {np.std(got, ddof=1):.1f} (n={len(got)})"
                if len(got) > 1
                else "-"
            )
            label = name.replace("ours_late_t", f"ours, t in {list(s['late_t_range'] or [])}")
            lines.append(
                f"| {label} | "
                + " | ".join("-" if m is None else f"{m:.1f}" for m in means)
                + f" | {tail} |"
            )
    if rep["localisation"]:
        lines += [
            "",
            "## Stage I localisation on the scenes",
            "",
            "| selection | images | mean IoU with the item's box | contains the item's centre |",
            "| --- | --- | --- | --- |",
        ]
        st = rep["localisation"]["stage1"]
        lines.append(
            f"| ours (Stage I best patch) | {st['images']} | {st['mean_iou']:.3f} | {st['centre_hit']:.1%} |"
        )
        lines.append(
            f"| random patch (exact expectation) | {st['images']} | {st['random_mean_iou']:.3f} | {st['random_centre_hit']:.1%} |"
        )
        if "stage1_late_t" in rep["localisation"]:
            r = rep["localisation"]["stage1_late_t"]
            lines.append(
                f"| ours, t in {list(s['late_t_range'])} (Stage I best patch) | {r['images']} | "
                f"{r['mean_iou']:.3f} | {r['centre_hit']:.1%} |"
            )
        for name in ("teacher_crop", "random_crop"):
            if name in rep["localisation"]:
                r = rep["localisation"][name]
                lines.append(
                    f"| {name} (selected crops) | {r['images']} | {r['mean_iou']:.3f} | {r['centre_hit']:.1%} |"
                )
    if rep.get("t_range_localisation"):
        lines += [
            "",
            "## Stage I localisation by timestep range (paper Table 7's grid)",
            "",
            f"{s['t_range_images_per_class']} scenes per class; best patch vs the item's box.",
            "",
            "| t_range | mean IoU | contains the centre |",
            "| --- | --- | --- |",
        ]
        for k, r in rep["t_range_localisation"].items():
            lines.append(
                f"| [{k.replace('-', ', ')}] | {r['mean_iou']:.3f} | {r['centre_hit']:.1%} |"
            )
        r = next(iter(rep["t_range_localisation"].values()))
        lines.append(
            f"| random patch | {r['random_mean_iou']:.3f} | {r['random_centre_hit']:.1%} |"
        )
    if rep.get("patch_diagnostics"):
        lines += [
            "",
            "## What the distilled sets are made of",
            "",
            "Per patch of each set (its manifest): IoU with the scene's labelled item and whether "
            "it holds the item's centre (scenes only), the teacher's top-1 agreement with the "
            "patch's label and its mean probability for that label (the patch alone, 32 px), "
            "and the number of distinct source images; last, the teacher's top-1 on the written "
            "images (2x2 tiles up to IPC 10) as a student sees them.",
            "",
            "| method | IPC | patches | sources | mean IoU | centre | teacher top-1 | teacher p(label) "
            "| teacher top-1, image |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, by_ipc in rep["patch_diagnostics"].items():
            for k, r in by_ipc.items():
                iou = f"{r['mean_iou']:.3f}" if "mean_iou" in r else "-"
                hit = f"{r['centre_hit']:.1%}" if "centre_hit" in r else "-"
                lines.append(
                    f"| {name} | {k} | {r['patches']} | {r['sources']} | {iou} | {hit} | "
                    f"{r['teacher_top1']:.1%} | {r['teacher_p']:.3f} | "
                    f"{r['teacher_top1_image']:.1%} |"
                )
    lines += [
        "",
        f"Tables by `python -m evaluate.table`: `{tables}`.",
        "",
        "Each student sweep's command (from its `multirun.yaml`):",
        "",
        "```",
        *rep.get("sweep_commands", {}).values(),
        "```",
        "",
        "Commands this invocation ran:",
        "",
        "```",
    ]
    lines += rep["commands"] + ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
