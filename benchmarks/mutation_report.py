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
import platform
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
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
        return "killed"
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
    all_killed = all_total = 0
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
        killed = counts.get("killed", 0)
        score = 100.0 * killed / total if total else 0.0
        justified = sum(1 for s in survivors if s["reason"])
        summary[module] = {
            "total": total,
            "killed": killed,
            "score": round(score, 1),
            "counts": counts,
            "survivors": survivors,
            "justified": justified,
        }
        all_killed, all_total = all_killed + killed, all_total + total
        rows.append(
            f"| `{module}` | {total} | {killed} | {len(survivors)} | {justified} | "
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
        "that reach it (`[tool.mutmut]` in pyproject.toml). Killed counts timeouts too. "
        f"Target: at least {TARGET:.0f} % killed per module; every survivor that stays has its "
        "one-line reason (`benchmarks/mutation_survivors.toml`).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}; written {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| module | mutants | killed | survivors | justified | score | >= 90 % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        f"| **all** | {all_total} | {all_killed} | | | **{overall:.1f} %** | |",
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


def _order(name: str) -> tuple:
    base, _, n = name.rpartition("__mutmut_")
    return (base, int(n) if n.isdigit() else 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "mutation.md")
    p.add_argument("--reasons", type=Path, default=ROOT / "benchmarks" / "mutation_survivors.toml")
    args = p.parse_args(argv)
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    results = read_results(ROOT, modules)
    if not any(results.values()):
        print("error: no mutmut results under mutants/: run `make mutation`", file=sys.stderr)
        return 2
    md, summary = build_report(results, load_reasons(args.reasons))
    args.out.write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    for m, s in summary["modules"].items():
        print(f"{m:34s} {s['killed']:4d}/{s['total']:<4d} {s['score']:5.1f} %")
    print(f"{'all':34s} {summary['overall']:5.1f} %  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
