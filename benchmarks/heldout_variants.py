"""Issue 13, part 4: Stage I's timestep range and the cluster count, chosen on a held-out part
of the training split and only then measured on the test split.

    python benchmarks/heldout_variants.py                       # after lowres_evidence.py
    python benchmarks/heldout_variants.py select_sets=1 select_seeds=2   # quicker choice

The low-resolution protocol of ``lowres_evidence.py`` (whole 32 px Fashion-MNIST items, the same
distill and evaluate settings, its teacher) at IPC 10, the bar's IPC, with
``data.holdout_per_class`` items per class reserved out of the training split: no pool holds
one, whatever its draw. Two steps:

1. *Choice.* Every variant of ours (one setting moved from the default at a time) and random
   real items are distilled from ``select_sets`` pool draws and ``select_seeds`` students each
   are validated on the held-out items (``data.val_split=holdout``), never on the test split.
   The variant with the best mean held-out top-1 is chosen.
2. *Test.* The chosen variant and random in the low-resolution protocol itself (its ``sets``
   pools of the whole training split, ``seeds`` students each, validated on the test split,
   gain and the 2-sd bar as in ``lowres_evidence.py``, whose runs are reused: random's always,
   ours' when the default is chosen).

The teacher is the protocol's, trained on the full training split (held-out items included):
it labels the students' images, it never sees a held-out item as a student input, and every
variant shares it. Writes ``results/heldout_variants.{md,json}``; reruns skip finished runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lowres_evidence as lowres  # noqa: E402
from lowres_evidence import evaluate_missing, method_table, reused, run, summarise  # noqa: E402

from distill.io import atomic_write_json, atomic_write_text  # noqa: E402
from distill.runtime import machine_name, numerics  # noqa: E402

DEFAULTS = {
    **lowres.DEFAULTS,
    "work": "outputs/bench_heldout",
    "ipc": [10],
    "holdout_per_class": 100,
    "select_sets": 2,
    "select_seeds": 2,
    "sets": 3,
    "seeds": 5,
    "augment": True,
}
# One setting moved from the default at a time (conf/scoring: t_range [0.1, 0.7]; the demo's
# cluster.num_centers 16, top_clusters 10). k10: as many centres as kept clusters, i.e. one
# pick from each of IPC clusters with no relevance ranking of the clusters themselves.
VARIANTS = {
    "ours": [],
    "ours_t_low": ["scoring.t_range=[0.02,0.3]"],
    "ours_t_high": ["scoring.t_range=[0.4,0.9]"],
    "ours_k10": ["cluster.num_centers=10"],
    "ours_k32": ["cluster.num_centers=32"],
}
# Variants that change only what follows Stage I reuse the default's bank (its scores).
SHARES_BANK = ("ours_k10", "ours_k32")
# Students' augmentation (evaluate overrides), measured on the held-out items only, on the
# same sets: does a stronger or a weaker augmentation move ours against random? (The
# protocol's: RDED's low-resolution factor 1, i.e. flips and CutMix.)
AUGMENT = {
    "crop": ["aug.scale=[0.5,1]"],
    "no_cutmix": ["aug.cutmix_beta=0"],
}


def distill_cmd(a, m: str, draw: int, teacher: Path) -> tuple[list[str], Path]:
    work = ROOT / str(a.work) / f"set{draw}"
    run_dir = work / m
    bank = work / "ours" / "bank" if m in SHARES_BANK else None
    base = "random" if m == "random" else "ours"
    cmd = [
        sys.executable,
        "-m",
        "distill",
        *lowres.distill_args(a, base, draw, teacher, bank),
        *VARIANTS.get(m, []),
        f"data.holdout_per_class={int(a.holdout_per_class)}",
        f"paths.output_dir={run_dir}",
    ]
    return cmd, run_dir


def distilled(a, m: str, draw: int, teacher: Path) -> Path:
    cmd, run_dir = distill_cmd(a, m, draw, teacher)
    if all((run_dir / "distilled" / f"ipc{int(k)}" / "set.json").is_file() for k in a.ipc):
        reused(cmd)
    else:
        run(cmd)
    return run_dir


def check_validated_on(sweep: Path, split: str) -> None:
    """Every student of ``sweep`` was validated on ``split`` (a choice made on the test split,
    or a test figure from held-out items, would be silently wrong)."""
    for f in sweep.glob("*/results.json"):
        got = json.loads(f.read_text()).get("val_split")
        if got != split:
            raise SystemExit(f"{f}: validated on {got!r}, not {split!r}")


def test_runs(a, chosen: str, teacher: Path) -> dict:
    """The chosen variant and random in the low-resolution protocol itself (its pools, seeds
    and test evaluations, ``lowres_evidence.py``'s runs reused): only a chosen variant other
    than the default is distilled and evaluated anew, into ``work/test_set<d>``."""
    proto = ROOT / str(lowres.DEFAULTS["work"])
    done = ROOT / str(a.out) / "lowres_evidence.json"
    if not done.is_file():
        raise SystemExit(f"{done} missing: run benchmarks/lowres_evidence.py first")
    theirs = json.loads(done.read_text())["args"]
    for k in ("images_per_class", "short_edge", "seeds", "epochs", "val_every", "threads"):
        if theirs.get(k) != a[k]:
            raise SystemExit(f"{k}={a[k]} differs from lowres_evidence's {theirs.get(k)}")
    ipc = int(a.ipc[0])
    per: dict = {}
    for draw in range(int(a.sets)):
        # The default beside the chosen variant: the same pools, so their difference is the
        # setting's alone (both reused from lowres_evidence when the default is chosen).
        for m in dict.fromkeys((chosen, "ours", "random")):
            if m in ("ours", "random"):
                got = lowres.collect(proto / f"set{draw}" / f"eval_{m}")
                if ipc not in got:
                    raise SystemExit(f"lowres_evidence has no IPC {ipc} for {m}, set {draw}")
                reused(["python", "benchmarks/lowres_evidence.py"])
            else:
                run_dir = ROOT / str(a.work) / f"test_set{draw}" / m
                cmd = [
                    sys.executable,
                    "-m",
                    "distill",
                    *lowres.distill_args(a, "ours", draw, teacher, None),
                    *VARIANTS[m],
                    f"paths.output_dir={run_dir}",
                ]
                if (run_dir / "distilled" / f"ipc{ipc}" / "set.json").is_file():
                    reused(cmd)
                else:
                    run(cmd)
                sweep = ROOT / str(a.work) / f"test_set{draw}" / f"eval_{m}"
                got = evaluate_missing(a, m, draw, run_dir, sweep)
                check_validated_on(sweep, "test")
            per.setdefault(m, {}).setdefault(ipc, []).append(got[ipc])
    return per


def choose(sel: dict) -> str:
    """The variant with the best mean held-out top-1 (the first listed on a tie)."""
    ours = [m for m in VARIANTS if m in sel]
    return max(ours, key=lambda m: sel[m]["mean"])


def augment_table(sel: dict, aug: dict, chosen: str, ipc: int) -> list[str]:
    """Held-out top-1 of ours, the chosen variant and random under each augmentation, with
    each method's gain over random under the same augmentation."""
    methods = list(dict.fromkeys(("ours", chosen, "random")))
    lines = [
        "| students' augmentation | " + " | ".join(methods) + " |",
        "|" + " --- |" * (len(methods) + 1),
    ]
    for name, rep in [("protocol's (flips, CutMix)", sel), *aug.items()]:
        cells = []
        for m in methods:
            r = rep.get(m, {}).get(ipc)
            if not r:
                cells.append("-")
                continue
            gain = f", {r['gain_over_random']:+.1f}" if "gain_over_random" in r else ""
            cells.append(f"{r['mean']:.1f} ± {r['std_over_sets']:.1f}{gain}")
        over = " ".join(f"`{x}`" for x in AUGMENT.get(name, []))
        label = f"{name} {over}".strip()
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(sel: dict, test: dict, chosen: str, a, minutes: float, aug: dict | None = None) -> str:
    ipc = int(a.ipc[0])
    lines = [
        "# Settings chosen on held-out training items (issue 13, part 4)",
        "",
        f"Machine: {machine_name()}; torch {numerics()['torch']}, {numerics()['threads']} threads, "
        f"CPU capability {numerics()['cpu_capability']}. This invocation: {minutes:.0f} min "
        "(the runs it reused are listed at the end).",
        f"Command: `{' '.join(['python benchmarks/heldout_variants.py', *sys.argv[1:]])}`",
        "",
        f"Low-resolution protocol (`lowres_evidence.py`'s settings) at IPC {ipc}, with "
        f"{int(a.holdout_per_class)} training items per class held out (`data.holdout_per_class`"
        f"): pools of {int(a.images_per_class)} items per class drawn from the rest.",
        "",
        f"## 1. Choice: validated on the held-out items ({int(a.select_sets)} draws x "
        f"{int(a.select_seeds)} students)",
        "",
        "| variant | overrides | held-out top-1 | gain over random |",
        "| --- | --- | --- | --- |",
    ]
    for m in [*VARIANTS, "random"]:
        r = sel.get(m, {}).get(ipc)
        if not r:
            continue
        over = " ".join(f"`{x}`" for x in VARIANTS.get(m, [])) or (
            "(default)" if m == "ours" else "`selector=random`"
        )
        gain = f"{r['gain_over_random']:+.1f}" if "gain_over_random" in r else ""
        mark = " **chosen**" if m == chosen else ""
        lines.append(
            f"| {m}{mark} | {over} | {r['mean']:.1f} ± {r['std_over_sets']:.1f} "
            f"[{r['std_over_seeds']:.1f}] | {gain} |"
        )
    lines += [
        "",
        "Cells: best top-1 %, mean ± std over draws [mean std over seeds].",
        "",
    ]
    if aug:
        lines += [
            "Students' augmentation on the same sets and held-out items (a diagnosis: nothing "
            "is chosen from it, and it never reaches the test split); cells: mean ± std over "
            "draws, gain over random under the same augmentation:",
            "",
            *augment_table(sel, aug, chosen, ipc),
            "",
        ]
    lines += [
        f"## 2. Test: {chosen} against random on the test split ({int(a.sets)} draws x "
        f"{int(a.seeds)} students)",
        "",
        "In the low-resolution protocol itself: its pools (drawn from the whole training split), "
        "its seeds, its random and default runs (`results/lowres_evidence.md`); only the chosen "
        "variant is new. Nothing is chosen here.",
        "",
        *method_table(test, list(dict.fromkeys((chosen, "ours", "random"))), [ipc]),
        "",
        "✓ when the gain exceeds 2 pooled standard deviations over set draws.",
    ]
    r = test.get(chosen, {}).get(ipc, {})
    if "pooled_std_over_sets" in r:
        bar = 2 * r["pooled_std_over_sets"]
        verdict = "met" if r["beats_random_2sd"] else "not met"
        lines += [
            "",
            f"{chosen} against random: gain {r['gain_over_random']:+.2f}, bar {bar:.2f} "
            f"(2 x the pooled {r['pooled_std_over_sets']:.2f} over set draws): {verdict}.",
        ]
    if chosen != "ours" and ipc in test.get("ours", {}):
        pairs = zip(r["set_means"], test["ours"][ipc]["set_means"], strict=True)
        diffs = [x - y for x, y in pairs]
        lines.append(
            "Over the default on the same pools, set by set: "
            + ", ".join(f"{d:+.2f}" for d in diffs)
            + f" (mean {sum(diffs) / len(diffs):+.2f})."
        )
    lines += lowres.commands_section()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = OmegaConf.merge(
        OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    )
    if len(a.ipc) != 1:
        raise SystemExit("heldout_variants: one IPC (ipc=[10]); the choice is made per IPC")
    teacher = lowres.teacher_path()
    if not teacher.is_file():
        raise SystemExit(f"{teacher} missing: run benchmarks/lowres_evidence.py first")
    t0 = time.perf_counter()
    work = ROOT / str(a.work)
    held_eval = [
        f"data.holdout_per_class={int(a.holdout_per_class)}",
        "data.val_split=holdout",
    ]
    picking = OmegaConf.merge(a, {"seeds": int(a.select_seeds)})
    per_sel: dict = {}
    for draw in range(int(a.select_sets)):
        for m in [*VARIANTS, "random"]:
            run_dir = distilled(a, m, draw, teacher)
            sweep = work / f"set{draw}" / f"heldout_{m}"
            got = evaluate_missing(picking, m, draw, run_dir, sweep, held_eval)
            check_validated_on(sweep, "holdout")
            for ipc, accs in got.items():
                per_sel.setdefault(m, {}).setdefault(ipc, []).append(accs)
    sel = summarise(per_sel)
    ipc = int(a.ipc[0])
    chosen = choose({m: r[ipc] for m, r in sel.items()})
    print(f"\nchosen on the held-out items: {chosen}", flush=True)
    aug: dict = {}
    for name, over in AUGMENT.items() if a.augment else ():
        per: dict = {}
        for draw in range(int(a.select_sets)):
            for m in dict.fromkeys(("ours", chosen, "random")):
                run_dir = distilled(a, m, draw, teacher)
                sweep = work / f"set{draw}" / f"heldout_{m}_{name}"
                got = evaluate_missing(picking, m, draw, run_dir, sweep, [*held_eval, *over])
                check_validated_on(sweep, "holdout")
                per.setdefault(m, {}).setdefault(ipc, []).append(got[ipc])
        aug[name] = summarise(per)
    per_test = test_runs(a, chosen, teacher)
    test = summarise(per_test)
    minutes = (time.perf_counter() - t0) / 60
    out = ROOT / str(a.out)
    atomic_write_json(
        out / "heldout_variants.json",
        {
            "args": OmegaConf.to_container(a),
            "machine": machine_name(),
            "numerics": numerics(),
            "variants": VARIANTS,
            "selection": sel,
            "chosen": chosen,
            "augment": {"overrides": AUGMENT, "results": aug},
            "report": test,  # the chosen variant and random on the test split
            "commands": lowres.COMMANDS,
            "reused": lowres.REUSED,
        },
    )
    md = markdown(sel, test, chosen, a, minutes, aug)
    atomic_write_text(out / "heldout_variants.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
