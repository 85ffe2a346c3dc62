"""The evidence benchmarks' statistics: spread over set draws and over seeds kept apart, the
gain over the right random baseline, and the 2-standard-deviation bar (a wrong statistic here
would make the report silently wrong)."""

import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import ROOT


def load(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


lowres = load("lowres_evidence")
scene = load("scene_evidence")


def test_summarise_separates_sets_from_seeds():
    # Two sets of three seeds: set means 10 and 14; seed stds 1 and 2.
    per = {"ours": {10: [[9.0, 10.0, 11.0], [12.0, 14.0, 16.0]]}}
    r = lowres.summarise(per)["ours"][10]
    assert r["mean"] == pytest.approx(12.0)
    assert r["std_over_sets"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
    assert r["std_over_seeds"] == pytest.approx(1.5)
    assert r["set_means"] == pytest.approx([10.0, 14.0])
    assert "gain_over_random" not in r  # no random row to compare with


def test_the_bar_needs_more_than_two_pooled_sds_over_sets():
    base = [[50.0], [52.0], [54.0]]  # mean 52, sd 2
    close = [[53.0], [55.0], [57.0]]  # +3 < 2 * 2
    far = [[57.0], [59.0], [61.0]]  # +7 > 2 * 2
    rep = lowres.summarise({"random": {10: base}, "a": {10: close}, "b": {10: far}})
    assert rep["a"][10]["gain_over_random"] == pytest.approx(3.0)
    assert rep["a"][10]["beats_random_2sd"] is False
    assert rep["b"][10]["beats_random_2sd"] is True
    one = lowres.summarise({"random": {10: [[50.0]]}, "a": {10: [[60.0]]}})
    assert one["a"][10]["beats_random_2sd"] is None  # one set: no spread to judge by


def test_scene_methods_are_compared_with_the_random_crops_of_their_own_assembly():
    per = {
        "random_crop_c": {10: [[40.0], [42.0], [44.0]]},
        "random_crop_s": {10: [[60.0], [61.0], [62.0]]},
        "ours_c": {10: [[45.0], [47.0], [49.0]]},
        "ours_s": {10: [[59.0], [60.0], [61.0]]},
    }
    rep = lowres.summarise(per, scene.BASELINE)
    assert rep["ours_c"][10]["baseline"] == "random_crop_c"
    assert rep["ours_c"][10]["gain_over_random"] == pytest.approx(5.0)
    assert rep["ours_c"][10]["beats_random_2sd"] is True  # 5 > 2 * 2
    assert rep["ours_s"][10]["baseline"] == "random_crop_s"
    assert rep["ours_s"][10]["gain_over_random"] == pytest.approx(-1.0)
    assert rep["ours_s"][10]["beats_random_2sd"] is False
    assert "baseline" not in rep["random_crop_c"][10]


report = load("fashion_report")


def test_the_report_pairs_each_protocol_with_its_own_random_and_keeps_the_bar():
    def r(mean, sd, beats=None):
        return {"mean": mean, "std_over_sets": sd, "sets": 3, "beats_random_2sd": beats}

    parts = {
        "lowres": {"report": {"ours": {"10": r(75.3, 1.1, False)}, "random": {"10": r(75.4, 0.8)}}},
        "scenes": {
            "report": {
                "ours_c": {"10": r(50.0, 1.0, True)},
                "random_crop_c": {"10": r(45.0, 1.0)},
                "ours_s": {"10": r(60.0, 1.0, False)},
                "random_crop_s": {"10": r(61.0, 1.0)},
            }
        },
    }
    rows = {
        (x["protocol"].split(",")[0], x["ipc"], x["ours"]["mean"]): x
        for x in report.verdict_rows(parts)
    }
    assert len(rows) == 3
    low = rows[("low resolution", 10, 75.3)]
    assert low["gain"] == pytest.approx(-0.1) and low["beats_random_2sd"] is False
    conc = rows[("scenes", 10, 50.0)]
    assert conc["random"]["mean"] == 45.0 and conc["beats_random_2sd"] is True
    single = rows[("scenes", 10, 60.0)]
    assert single["random"]["mean"] == 61.0 and single["gain"] == pytest.approx(-1.0)
    assert report.demote("# A\ntext\n## B") == "## A\ntext\n### B"


heldout = load("heldout_variants")


def test_the_heldout_choice_and_its_verdict_row(tmp_path):
    sel = {"ours": {"mean": 70.0}, "ours_k10": {"mean": 72.0}, "ours_k32": {"mean": 72.0}}
    assert heldout.choose({**sel, "random": {"mean": 90.0}}) == "ours_k10"  # random is no variant
    assert heldout.choose({"ours": {"mean": 70.0}, "ours_t_low": {"mean": 70.0}}) == "ours"
    # A figure validated on another split than the step's stops the run.
    run = tmp_path / "0"
    run.mkdir()
    (run / "results.json").write_text('{"val_split": "test"}')
    heldout.check_validated_on(tmp_path, "test")
    with pytest.raises(SystemExit, match="validated on 'test', not 'holdout'"):
        heldout.check_validated_on(tmp_path, "holdout")
    parts = {
        "heldout": {
            "chosen": "ours_k10",
            "report": {
                "ours_k10": {"10": {"mean": 76.0, "std_over_sets": 0.5, "sets": 3}},
                "random": {"10": {"mean": 75.4, "std_over_sets": 0.8, "sets": 3}},
            },
        }
    }
    (row,) = report.verdict_rows(parts)
    assert row["ours"]["mean"] == 76.0 and row["gain"] == pytest.approx(0.6)


def test_the_heldout_report_marks_the_choice_and_tests_it_against_random():
    from omegaconf import OmegaConf

    per_sel = {
        "ours": {10: [[70.0, 71.0], [72.0, 73.0]]},
        "ours_k10": {10: [[74.0, 75.0], [76.0, 77.0]]},
        "random": {10: [[71.0, 71.0], [73.0, 73.0]]},
    }
    sel = lowres.summarise(per_sel)
    chosen = heldout.choose({m: r[10] for m, r in sel.items()})
    test = lowres.summarise({chosen: {10: [[76.0], [77.0], [78.0]]}, "random": {10: [[75.0]] * 3}})
    crop = lowres.summarise({"ours": {10: [[70.0], [72.0]]}, "random": {10: [[74.0], [74.0]]}})
    md = heldout.markdown(
        sel, test, chosen, OmegaConf.create(heldout.DEFAULTS), 1.0, {"crop": crop}
    )
    # Each augmentation's gain is over random under the same augmentation.
    assert "| crop `aug.scale=[0.5,1]` | 71.0 ± 1.4, -3.0 | - | 74.0 ± 0.0 |" in md
    assert "| ours_k10 **chosen** | `cluster.num_centers=10` | 75.5 ± 1.4 [0.7] | +3.5 |" in md
    assert "| ours | (default) | 71.5 ± 1.4 [0.7] | -0.5 |" in md
    # 2.0 > 2 x the pooled 0.71 over sets: the bar is met.
    assert "| ours_k10 | 77.0 ± 1.0 [0.0], gain +2.0 ✓ |" in md


def test_scene_twins_share_students_only_when_their_files_are_the_same(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "0").mkdir(parents=True)
        (d / "0" / "x.png").write_bytes(b"same")
        (d / "set.json").write_text("{}")
    assert scene.same_files(a, b)
    (b / "0" / "x.png").write_bytes(b"other")
    assert not scene.same_files(a, b)
    (b / "0" / "x.png").write_bytes(b"same")
    (b / "0" / "y.png").write_bytes(b"more")
    assert not scene.same_files(a, b) and not scene.same_files(a, tmp_path / "missing")
