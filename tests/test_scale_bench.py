"""The scale benchmark (benchmarks/scale_bench.py) runs end to end at a tiny size, writes
the report the issue asks for, and projects materialise the way its docstring says."""

import json
import os

import pytest

from tests.conftest import load_benchmark

bench = load_benchmark("scale_bench")
TINY = ["sizes=[2,3]", "images_per_class=8", "ipcs=[1,2]", "pool=3", "dim=16"]


def test_tiny_run_writes_the_report(tmp_path):
    out = tmp_path / "out"
    argv = [*TINY, "isolate=false", f"out={out}", f"work={tmp_path / 'work'}"]
    assert bench.main(argv) == 0
    report = json.loads((out / "scale_bench.json").read_text())
    assert report["device"] and isinstance(report["cpu_flags"], list)
    assert report["decoder"] == "fast", "the default: the setting the README gives for this scale"
    assert [s["classes"] for s in report["sizes"]] == [2, 3]
    for s in report["sizes"]:
        assert set(s["steps"]) == {
            "listing_first",
            "listing_indexed",
            "merge",
            "cluster",
            "load",
            "materialize_ipc1",
            "materialize_ipc2",
        }
        assert all(v["seconds"] >= 0 and v["peak_rss_gib"] > 0 for v in s["steps"].values())
        assert all(0 < v["peak_anon_gib"] <= v["peak_rss_gib"] for v in s["steps"].values())
        assert s["bank_bytes"]["features.npy"] > 0 and "shards/features" not in s["bank_bytes"]
    p = report["projection_1p3m"]
    for key in ("peak_rss_gib", "bank_gb", "listing_s", "materialize_ipc10_s"):
        assert key in p and key in p["targets"] and key in p["met"]
    assert p["materialize_ipc10_s"] is None and p["met"]["materialize_ipc10_s"] is False
    assert "| 3 x 8 |" in (out / "scale_bench.md").read_text()
    assert not list((tmp_path / "work").glob("size-*"))  # each size's bank is removed


def test_a_step_in_its_own_process_reports_its_peak_rss(tmp_path):
    pool = bench.write_pool(tmp_path / "pool", 2, seed=0)
    cfg = bench.build_bank(tmp_path / "run", 2, 4, pool, dim=8, seed=0)
    from distill.bank import _HELD

    # The bank's lock is let go, as a stage does, so the steps can take it. (Only this bank:
    # other tests of the session may hold theirs.)
    assert os.path.realpath(tmp_path / "run" / "bank") not in _HELD
    res = bench.run_step_isolated("listing_first", cfg, {"ipcs": [1], "workers": 1})
    assert res["seconds"] > 0 and res["peak_rss_gib"] >= res["base_rss_gib"] > 0
    assert 0 < res["peak_anon_gib"] <= res["peak_rss_gib"]
    assert (tmp_path / "run" / "bank" / "listing").is_dir()


def size(classes, per_class, listing, prelude, mat10):
    """A measured size, as `measure_size` reports it (only what `projection` reads)."""
    step = {"seconds": listing, "peak_rss_gib": 0.5, "peak_anon_gib": 0.4}
    step["workers_peak_rss_gib"] = None
    return {
        "classes": classes,
        "images": classes * per_class,
        "steps": {
            "listing_first": step,
            "listing_indexed": step,
            "load": {**step, "prelude_s": prelude},
            "materialize_ipc10": {**step, "seconds": mat10, "workers_peak_rss_gib": 1.0},
        },
        "bank_bytes": {"total": classes * per_class * 4000},
    }


def test_projection_splits_materialise_into_images_and_classes():
    """Reading grows with the images (1.3M), writing the sets with the classes (1000)."""
    sizes = [size(10, 300, 1.0, 0.3, 2.3), size(100, 300, 10.0, 3.0, 23.0)]
    p = bench.projection(sizes, [10])
    assert p["listing_s"] == pytest.approx(1300 * 1000 / 3000 * 1.0)
    prelude = 0.3 * 1_300_000 / 3000
    assert p["materialize_ipc10_s"] == pytest.approx(prelude + 2.0 * 1000 / 10)
    assert p["bank_gb"] == pytest.approx(1_300_000 * 4000 / 1e9)
    assert p["peak_rss_gib"] == 1.0  # flat memory: the largest measured, workers included
    assert p["peak_anon_gib"] == pytest.approx(0.4)
    assert p["met"] == {
        "peak_rss_gib": True,
        "peak_anon_gib": True,
        "bank_gb": False,
        "listing_s": False,
        "materialize_ipc10_s": False,
    }
