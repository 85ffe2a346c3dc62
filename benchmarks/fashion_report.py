"""`results/fashion.md`: the Fashion-MNIST reproduction in one report, from its parts.

    python benchmarks/fashion_report.py       # last step of `make bench-quality`

Gathers what the steps of ``make bench-quality`` wrote (each reuses its own finished runs):
the embedded model's probe (``fashion_probe``), the paper's low-resolution protocol on whole
items (``lowres_evidence``), the scene protocol at the paper's geometry (``scene_evidence``)
the diagnosis of the sets (``evidence_diagnosis``) and the settings chosen on held-out training
items (``heldout_variants``). It writes a verdict table, ours
against random at each IPC with the spread over set draws and the bar (more than 2 pooled
standard deviations over set draws), then each part's own report with its commands, run and
reused. A missing part is named, not skipped silently. Writes ``results/fashion.{md,json}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.io import atomic_write_json, atomic_write_text  # noqa: E402
from distill.runtime import machine_name  # noqa: E402

PARTS = [
    ("probe", "fashion_probe", "python benchmarks/fashion_probe.py"),
    ("lowres", "lowres_evidence", "python benchmarks/lowres_evidence.py"),
    ("scenes", "scene_evidence", "python benchmarks/scene_evidence.py"),
    ("diagnosis", "evidence_diagnosis", "python benchmarks/evidence_diagnosis.py"),
    ("heldout", "heldout_variants", "python benchmarks/heldout_variants.py"),
]
# (protocol, its JSON part, our method, its random reference)
VERDICTS = [
    ("low resolution, whole items", "lowres", "ours", "random"),
    ("scenes, concatenated (Ours^C)", "scenes", "ours_c", "random_crop_c"),
    ("scenes, single patch (Ours^S)", "scenes", "ours_s", "random_crop_s"),
    # The variant chosen on held-out training items (its part names it), on the test split.
    ("low resolution, settings chosen on held-out items", "heldout", "{chosen}", "random"),
]


def demote(md: str) -> str:
    """A part's markdown under this report's headings: '#' becomes '##' and so on."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines())


def cell(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{r['mean']:.1f} ± {r['std_over_sets']:.1f} (n = {r['sets']} sets)"


def verdict_rows(parts: dict) -> list[dict]:
    rows = []
    for name, part, ours, base in VERDICTS:
        rep = (parts.get(part) or {}).get("report", {})
        ours = ours.format(chosen=(parts.get(part) or {}).get("chosen"))
        ipcs = sorted({int(k) for k in rep.get(ours, {})} | {int(k) for k in rep.get(base, {})})
        for k in ipcs:
            o = rep.get(ours, {}).get(str(k))  # JSON keys: the IPC as a string
            b = rep.get(base, {}).get(str(k))
            rows.append(
                {
                    "protocol": name,
                    "ipc": k,
                    "ours": o,
                    "random": b,
                    "gain": (o["mean"] - b["mean"]) if o and b else None,
                    "beats_random_2sd": o.get("beats_random_2sd") if o else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    res = ROOT / "results"
    parts, missing = {}, []
    for key, stem, cmd in PARTS:
        f = res / f"{stem}.json"
        if f.is_file():
            parts[key] = json.loads(f.read_text())
        else:
            missing.append(f"`{stem}` (run `{cmd}`)")
    rows = verdict_rows(parts)
    lines = [
        "# Fashion-MNIST: a small-scale reproduction",
        "",
        f"Assembled on {machine_name()}, {time.strftime('%Y-%m-%d %H:%M')}, by "
        "`python benchmarks/fashion_report.py` (the last step of `make bench-quality`) from the "
        "parts below; each part states its own machine, command, wall time and what it reused. "
        "Raw figures in `fashion.json`.",
        "",
        "## Verdict: ours against random at each IPC",
        "",
        "Best top-1 % on the real test split, mean ± std over independently drawn sets (each "
        "set's value is the mean of its student seeds). The bar: the gain exceeds 2 pooled "
        "standard deviations over set draws.",
        "",
        "| protocol | IPC | ours | random | gain | bar met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        bar = {True: "yes", False: "no", None: "-"}[r["beats_random_2sd"]]
        gain = f"{r['gain']:+.1f}" if r["gain"] is not None else "-"
        lines.append(
            f"| {r['protocol']} | {r['ipc']} | {cell(r['ours'])} | {cell(r['random'])} | "
            f"{gain} | {bar} |"
        )
    if missing:
        lines += ["", "Not in this report (no results yet): " + ", ".join(missing) + "."]
    for key, stem, _ in PARTS:
        md = res / f"{stem}.md"
        if key in parts and md.is_file():
            lines += ["", demote(md.read_text().strip())]
    lines.append("")
    atomic_write_json(
        res / "fashion.json",
        {"machine": machine_name(), "verdict": rows, "parts": parts, "missing": missing},
    )
    atomic_write_text(res / "fashion.md", "\n".join(lines))
    print("\n".join(lines[: 14 + len(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
