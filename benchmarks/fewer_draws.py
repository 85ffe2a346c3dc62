"""Fewer U-Net calls for the same picks? The equal-picks speed-up of each timestep scheme.

    python benchmarks/fewer_draws.py          # reads results/timestep_schemes.json (seconds)

Stage I costs 2N U-Net calls per image. `benchmarks/timestep_schemes.py` measures how often
each scheme's best patch matches a 64-draw reference's at N = 2, 4, 8. This reads those
measurements and asks, per scheme, for the smallest N whose agreement reaches the paper's
default (``iid`` at N = 8) within the seed spread (mean + std >= iid N=8's mean - its std);
the equal-picks speed-up is then 8 / N (1.0 when no smaller N does). Writes
``results/fewer_draws.json``; the presets change only if some scheme reaches a ratio above 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.io import atomic_write_json  # noqa: E402

BASE_SCHEME, BASE_N = "iid", 8


def equal_picks(results: list[dict]) -> dict:
    """{scheme: {"smallest_n", "speedup", "agreement_pct"}} against iid at N = 8."""
    by = {(r["scheme"], int(r["num_draws"])): r["agreement_pct"] for r in results}
    base = by[(BASE_SCHEME, BASE_N)]
    bar = base["mean"] - base["std"]
    out = {}
    for scheme in sorted({s for s, _ in by}):
        ns = sorted(n for s, n in by if s == scheme)
        reach = [n for n in ns if by[(scheme, n)]["mean"] + by[(scheme, n)]["std"] >= bar]
        n = min(reach) if reach else None
        out[scheme] = {
            "smallest_n_reaching_iid8": n,
            "speedup_at_equal_picks": (BASE_N / n) if n else 1.0,
            "agreement_pct": {str(k): by[(scheme, k)]["mean"] for k in ns},
        }
    return {"baseline": {"scheme": BASE_SCHEME, "num_draws": BASE_N, **base}, "schemes": out}


def main(argv: list[str] | None = None) -> int:
    src = ROOT / "results" / "timestep_schemes.json"
    if not src.is_file():
        print(f"error: {src} is missing; run `make bench-timesteps` first", file=sys.stderr)
        return 2
    data = json.loads(src.read_text())
    report = {
        "source": str(src.relative_to(ROOT)),
        "measured": {k: data[k] for k in ("command", "date", "machine", "settings")},
        **equal_picks(data["results"]),
    }
    best = max(report["schemes"].items(), key=lambda kv: kv[1]["speedup_at_equal_picks"])
    report["best"] = {"scheme": best[0], **best[1]}
    atomic_write_json(ROOT / "results" / "fewer_draws.json", report)
    print(
        "equal-picks speed-up over iid N=8: "
        + ", ".join(
            f"{s} {v['speedup_at_equal_picks']:.1f}x (N={v['smallest_n_reaching_iid8']})"
            for s, v in report["schemes"].items()
        )
        + f" (from {report['source']}, {data['date']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
