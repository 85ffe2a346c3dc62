"""`make mutation`'s report: the mutation score per module from mutmut's results, and every
surviving mutant with its diff and the one-line reason it may stay (results/mutation.md).

    python benchmarks/mutation_report.py            # after `mutmut run` (make mutation)

A mutant is one small change to the code (a flipped operator, a changed constant, a dropped
argument); a test suite that asserts behaviour fails on it ("killed"). Survivors are either
gaps in the tests or equivalent mutants (changes that cannot alter behaviour); the latter are
listed with their reason in ``benchmarks/mutation_survivors.toml``, keyed by mutant name and
checked against the mutated line, so a stale reason shows up instead of hiding a new gap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Protocol drifts that mutmut's operators do not write, made by hand: each replaces one piece
# of a module and must make the named tests fail (the issue found the first two passing).
HAND_MUTANTS = [
    (
        "clusters ranked by mean relevance instead of median",
        "distill/clustering.py",
        "medians = {c: float(np.median(scores[assign == c])) for c in used}",
        "medians = {c: float(np.mean(scores[assign == c])) for c in used}",
        ["tests/test_selection.py"],
    ),
    (
        "RDED's half cosine replaced by a full cosine",
        "evaluate/schedule.py",
        "return 0.5 * (1.0 + math.cos(math.pi * e / n / 2))",
        "return 0.5 * (1.0 + math.cos(math.pi * e / n))",
        ["tests/evaluate/test_protocol.py"],
    ),
    (
        "k-means on L2-normalised features by default",
        "distill/clustering.py",
        "    normalize: bool = False,\n) -> dict:",
        "    normalize: bool = True,\n) -> dict:",
        ["tests/evaluate/test_protocol.py"],
    ),
    (
        "best top-1 over every validation from 0.8 E on (the one after 240 of 300 included)",
        "evaluate/protocol.py",
        "return math.floor(float(best_after) * int(epochs)) + 2",
        "return math.ceil(float(best_after) * int(epochs))",
        ["tests/evaluate/test_protocol.py"],
    ),
    (
        "2x2 tiles at low resolution (tile_min_size ignored)",
        "distill/materialize.py",
        "if concat_max_ipc > 0 and image_size < tile_min_size:",
        "if False:",
        ["tests/evaluate/test_protocol.py"],
    ),
]
KILLED = {1: "killed", 3: "killed", 36: "timeout", 37: "caught by type check"}
KILLED.update({-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})
TARGET = 90.0


def read_results(root: Path, modules: list[str]) -> dict[str, dict[str, int | None]]:
    """Exit code per mutant name, per module path, from mutmut's ``mutants/*.py.meta``."""
    out = {}
    for m in modules:
        meta = root / "mutants" / f"{m}.meta"
        out[m] = json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}
    return out


def status(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return KILLED[code] if KILLED[code] == "timeout" else "killed"
    return {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}.get(code, "suspicious")


def mutant_diff(name: str) -> str:
    """The ``+``/``-`` lines of ``mutmut show NAME``."""
    r = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "show", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in r.stdout.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    return "\n".join(lines)


def load_reasons(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return tomllib.loads(path.read_text()).get("survivor", {})


def build_report(results: dict, reasons: dict, diff=mutant_diff) -> tuple[str, dict]:
    """Markdown and a JSON-able summary (per module: counts, score, survivors)."""
    summary: dict = {}
    rows, details = [], []
    all_killed = all_total = all_timeouts = 0
    for module, codes in results.items():
        counts: dict[str, int] = {}
        survivors = []
        for name, code in sorted(codes.items(), key=lambda kv: _order(kv[0])):
            st = status(code)
            counts[st] = counts.get(st, 0) + 1
            if st in ("survived", "no tests", "suspicious"):
                d = diff(name)
                why = reasons.get(name, {})
                plus = why.get("line", "")
                stale = bool(why) and plus.strip() not in d
                survivors.append(
                    {
                        "name": name,
                        "status": st,
                        "diff": d,
                        "reason": why.get("reason") if why and not stale else None,
                        "stale": stale,
                    }
                )
        total = sum(counts.values())
        # A timeout (the tests ran more than 4x longer) counts as killed, as mutmut counts it.
        timeouts = counts.get("timeout", 0)
        killed = counts.get("killed", 0) + timeouts
        score = 100.0 * killed / total if total else 0.0
        justified = sum(1 for s in survivors if s["reason"])
        summary[module] = {
            "total": total,
            "killed": killed,
            "timeouts": timeouts,
            "score": round(score, 1),
            "counts": counts,
            "survivors": survivors,
            "justified": justified,
        }
        all_killed, all_total = all_killed + killed, all_total + total
        all_timeouts += timeouts
        rows.append(
            f"| `{module}` | {total} | {killed} | {timeouts} | {len(survivors)} | {justified} | "
            f"**{score:.1f} %** | {'yes' if score >= TARGET else 'no'} |"
        )
        for s in survivors:
            head = f"- `{s['name']}` ({s['status']})"
            if s["reason"]:
                head += f": {s['reason']}"
            elif s["stale"]:
                head += ": **reason on file no longer matches this mutant**"
            else:
                head += ": **not justified**"
            details.append((module, head, s["diff"]))
    overall = 100.0 * all_killed / all_total if all_total else 0.0
    md = [
        "# Mutation testing",
        "",
        "`make mutation` runs [mutmut](https://github.com/boxed/mutmut) over the modules that "
        "carry the method's and the protocol's arithmetic; each mutant runs the unit tests "
        "that reach it (`[tool.mutmut]` in pyproject.toml). Killed counts timeouts too (a mutant "
        "that makes its tests run more than 4x longer, mostly loops that no longer stop early "
        "in the patch picks and the augmentation's crop search). "
        f"Target: at least {TARGET:.0f} % killed per module; every survivor that stays has its "
        "one-line reason (`benchmarks/mutation_survivors.toml`).",
        "",
        f"Machine: {_machine()}, Python {platform.python_version()}; written "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| module | mutants | killed | of which timeouts | survivors | justified | score | >= 90 % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        f"| **all** | {all_total} | {all_killed} | {all_timeouts} | | | **{overall:.1f} %** | |",
        "",
        "## Survivors",
        "",
    ]
    last = None
    for module, head, d in details:
        if module != last:
            md += ["", f"### `{module}`", ""]
            last = module
        md.append(head)
        if d:
            md += ["", "  ```diff", *[f"  {ln}" for ln in d.splitlines()], "  ```"]
    if not details:
        md.append("None.")
    return "\n".join(md) + "\n", {"overall": round(overall, 1), "modules": summary}


def _machine() -> str:
    try:
        from distill.runtime import machine_name

        return machine_name()
    except Exception:  # the report still works without the project importable
        return platform.processor() or platform.machine()


def run_hand_mutants(mutants=HAND_MUTANTS) -> list[dict]:
    """Apply each hand-made mutant to the working tree, run its tests, restore the file."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    out = []
    for what, rel, old, new, tests in mutants:
        path = ROOT / rel
        text = path.read_text()
        if text.count(old) != 1:
            out.append({"what": what, "file": rel, "result": "not applied (code changed)"})
            continue
        try:
            path.write_text(text.replace(old, new))
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
        finally:
            path.write_text(text)
        failed = [ln.split(" ")[1] for ln in r.stdout.splitlines() if ln.startswith("FAILED ")]
        out.append(
            {
                "what": what,
                "file": rel,
                "result": "killed" if r.returncode != 0 else "survived",
                "by": failed[:3],
            }
        )
    return out


def hand_section(results: list[dict]) -> list[str]:
    md = [
        "",
        "## Hand-made protocol drifts",
        "",
        "Changes mutmut does not write, applied one at a time to the working tree with the",
        "named tests run against them (`benchmarks/mutation_report.py`, `HAND_MUTANTS`):",
        "",
        "| drift | file | result | failing test |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        by = ", ".join(f"`{t}`" for t in r.get("by", [])) or "-"
        md.append(f"| {r['what']} | `{r['file']}` | {r['result']} | {by} |")
    return md


def _order(name: str) -> tuple:
    base, _, n = name.rpartition("__mutmut_")
    return (base, int(n) if n.isdigit() else 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "mutation.md")
    p.add_argument("--reasons", type=Path, default=ROOT / "benchmarks" / "mutation_survivors.toml")
    p.add_argument("--no-hand", action="store_true", help="skip the hand-made protocol drifts")
    args = p.parse_args(argv)
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    results = read_results(ROOT, modules)
    if not any(results.values()):
        print("error: no mutmut results under mutants/: run `make mutation`", file=sys.stderr)
        return 2
    md, summary = build_report(results, load_reasons(args.reasons))
    if not args.no_hand:
        hand = run_hand_mutants()
        summary["hand_mutants"] = hand
        md += "\n".join(hand_section(hand)) + "\n"
        for h in hand:
            print(f"hand-made: {h['what']}: {h['result']}")
    args.out.write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    for m, s in summary["modules"].items():
        print(f"{m:34s} {s['killed']:4d}/{s['total']:<4d} {s['score']:5.1f} %")
    print(f"{'all':34s} {summary['overall']:5.1f} %  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
