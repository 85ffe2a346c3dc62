"""Why the method does not beat random real items: what each distilled set is made of.

    python benchmarks/evidence_diagnosis.py        # after benchmarks/lowres_evidence.py

Reads the low-resolution protocol's sets (``outputs/bench_evidence/set*/<method>/distilled``)
and their candidate pools, and measures each set with the ConvNet-3 teacher on the training
pool only (no test item is looked at, so nothing here can tune on the test split):

- ``p_true``: the teacher's probability of the item's class, mean over the set (easy, typical
  items score high; RDED-style teacher selection maximises it);
- ``coverage``: mean distance from each pool item of a class to its nearest picked item of that
  class, in the teacher's penultimate feature space, relative to random's (lower = the set
  covers the pool better; k-center minimises the maximum of it);
- ``spread``: mean pairwise distance among a class's picks, relative to random's;
- and over every pool item, the Spearman correlation of Stage I's relevance (``image_score``)
  with ``p_true`` and with the distance to the class mean (atypicality), per class, averaged.

Beside them, each set's student accuracy from the protocol's own results (best top-1, mean of
its seeds). Writes ``results/evidence_diagnosis.{md,json}``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.bank import read_jsonl  # noqa: E402
from distill.coreset import embed  # noqa: E402
from distill.data import build_source  # noqa: E402
from distill.io import atomic_write_json, atomic_write_text  # noqa: E402
from distill.runtime import machine_name  # noqa: E402
from distill.teacher_selector import load_classifier  # noqa: E402

DEFAULTS = {
    "work": "outputs/bench_evidence",
    "out": "results",
    "teacher": "models/fashion-teacher/fashion_mnist_convnet3_w32.pt",
    "methods": ["ours", "ours_no_cluster", "random", "herding", "kcenter", "teacher"],
    "ipc": [1, 10, 50],
}


def student_acc(sweep: Path) -> dict[int, float]:
    out = {}
    for f in sweep.glob("*/results.json"):
        r = json.loads(f.read_text())
        if r.get("acc_best"):
            out[int(r["ipc"])] = float(np.mean(r["acc_best"]))
    return out


def picks_of(manifest: Path, index_of: dict[str, int]) -> list[int]:
    with open(manifest, newline="") as f:
        return [index_of[r["source"]] for r in csv.DictReader(f)]


def set_stats(picks: list[int], labels, feats, p_true) -> dict:
    cov, spread = [], []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        mine = [i for i in picks if labels[i] == c]
        if not mine:
            continue
        d = np.linalg.norm(feats[pool][:, None, :] - feats[mine][None, :, :], axis=2)
        cov.append(float(d.min(axis=1).mean()))
        if len(mine) > 1:
            pd = np.linalg.norm(feats[mine][:, None, :] - feats[mine][None, :, :], axis=2)
            spread.append(float(pd[np.triu_indices(len(mine), 1)].mean()))
    return {
        "p_true": float(np.mean(p_true[picks])),
        "coverage": float(np.mean(cov)),
        "spread": float(np.mean(spread)) if spread else float("nan"),
        "distinct": len(set(picks)),
    }


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    a = OmegaConf.merge(
        OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    )
    work = ROOT / str(a.work)
    rows: dict = {}
    corr = []
    for set_dir in sorted(work.glob("set*")):
        bank = set_dir / "ours" / "bank"
        if not (bank / "scores.jsonl").is_file():
            continue
        meta = json.loads((bank / "meta.json").read_text())
        source = build_source(OmegaConf.create(meta["data_cfg"]))
        index_of = {it.source: i for i, it in enumerate(source.items)}
        model, size, mean, std = load_classifier(
            str(ROOT / str(a.teacher)), [c.key for c in source.classes]
        )
        items = list(range(len(source.items)))
        feats = embed(source, items, model, size, mean, std)
        labels = np.array([it.label for it in source.items])
        # Logits from the penultimate features through the head (one pass, no second model run).
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        logits = head(torch.from_numpy(feats).float())
        p_true = torch.softmax(logits, 1)[torch.arange(len(labels)), torch.from_numpy(labels)]
        p_true = p_true.numpy()
        rel = np.full(len(labels), np.nan)
        for r in read_jsonl(bank / "scores.jsonl"):
            rel[index_of[r["source"]]] = float(r["image_score"])
        for c in np.unique(labels):
            m = (labels == c) & np.isfinite(rel)
            centre = feats[labels == c].mean(0)
            atyp = np.linalg.norm(feats[m] - centre, axis=1)
            corr.append(
                {
                    "set": set_dir.name,
                    "class": int(c),
                    "rel_vs_p_true": float(spearmanr(rel[m], p_true[m]).statistic),
                    "rel_vs_atypicality": float(spearmanr(rel[m], atyp).statistic),
                }
            )
        for meth in a.methods:
            acc = student_acc(set_dir / f"eval_{meth}")
            for k in a.ipc:
                man = set_dir / meth / "distilled" / f"ipc{int(k)}" / "manifest.csv"
                if not man.is_file():
                    continue
                s = set_stats(picks_of(man, index_of), labels, feats, p_true)
                s["student_top1"] = acc.get(int(k))
                rows.setdefault(meth, {}).setdefault(int(k), []).append(s)
    if not rows:
        raise SystemExit(f"no sets under {work}: run benchmarks/lowres_evidence.py first")

    def avg(lst, key):
        v = [x[key] for x in lst if x.get(key) is not None and np.isfinite(x[key])]
        return float(np.mean(v)) if v else None

    table = {
        m: {
            k: {key: avg(v, key) for key in ("p_true", "coverage", "spread", "student_top1")}
            | {"sets": len(v)}
            for k, v in by.items()
        }
        for m, by in rows.items()
    }
    summary_corr = {
        "rel_vs_p_true": float(np.mean([c["rel_vs_p_true"] for c in corr])),
        "rel_vs_atypicality": float(np.mean([c["rel_vs_atypicality"] for c in corr])),
    }
    lines = [
        "# What the low-resolution sets are made of (issue 13, diagnosis)",
        "",
        f"Machine: {machine_name()}. Command: `python benchmarks/evidence_diagnosis.py "
        f"{' '.join(sys.argv[1:])}`".rstrip()
        + ".",
        "",
        "Measured with the ConvNet-3 teacher on the candidate pools only (training items; no "
        "test item). Means over the set draws. `coverage` and `spread` are in the teacher's "
        "penultimate feature space, relative to random's at the same IPC (coverage: mean "
        "distance of a pool item to the nearest pick of its class, lower covers better; "
        "spread: mean distance between picks of a class). Student top-1: the protocol's best "
        "top-1 (mean over seeds, then sets).",
        "",
        "| IPC | method | student top-1 | teacher p(class) | coverage vs random | spread vs random |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in [int(x) for x in a.ipc]:
        base = table.get("random", {}).get(k, {})
        for m in a.methods:
            r = table.get(m, {}).get(k)
            if not r:
                continue

            def rel(key, r=r, base=base):
                if r[key] is None or not base.get(key):
                    return "-"
                return f"{r[key] / base[key]:.3f}"

            acc = f"{r['student_top1']:.1f}" if r["student_top1"] is not None else "-"
            lines.append(
                f"| {k} | {m} | {acc} | {r['p_true']:.3f} | {rel('coverage')} | {rel('spread')} |"
            )
    lines += [
        "",
        "Across the methods at each IPC (Spearman over their set-mean rows, descriptive: "
        "one point per method):",
        "",
    ]
    across = {}
    for k in [int(x) for x in a.ipc]:
        pts = [table[m][k] for m in a.methods if k in table.get(m, {})]
        pts = [r for r in pts if r["student_top1"] is not None]
        if len(pts) >= 3:
            acc = [r["student_top1"] for r in pts]
            across[k] = {
                "coverage": float(spearmanr([r["coverage"] for r in pts], acc).statistic),
                "p_true": float(spearmanr([r["p_true"] for r in pts], acc).statistic),
                "methods": len(pts),
            }
            lines.append(
                f"- IPC {k} ({len(pts)} methods): student top-1 vs coverage "
                f"{across[k]['coverage']:+.2f}, vs teacher p(class) {across[k]['p_true']:+.2f}"
            )
    lines += [
        "",
        "Stage I's relevance against the teacher, over every pool item (Spearman, per class, "
        f"mean over {len(corr)} class x set pools): with the teacher's p(class) "
        f"**{summary_corr['rel_vs_p_true']:+.3f}**, with the distance to the class mean "
        f"(atypicality) **{summary_corr['rel_vs_atypicality']:+.3f}**.",
        "",
    ]
    out = ROOT / str(a.out)
    atomic_write_json(
        out / "evidence_diagnosis.json",
        {
            "machine": machine_name(),
            "args": OmegaConf.to_container(a),
            "table": table,
            "per_set": rows,
            "relevance_correlations": corr,
            "summary": summary_corr,
        },
    )
    atomic_write_text(out / "evidence_diagnosis.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
