"""IoU and centre-hit metrics on hand-made boxes; the random baseline by brute force."""

import numpy as np
import pytest

from distill.localization import box_iou, contains_centre, localisation, random_patch_expectation


@pytest.mark.parametrize(
    "a,b,expect",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # nested
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty
    ],
)
def test_box_iou(a, b, expect):
    assert box_iou(a, b) == pytest.approx(expect)
    assert box_iou(b, a) == pytest.approx(expect)


def test_contains_centre():
    obj = (10, 10, 20, 30)  # centre (15, 20)
    assert contains_centre((0, 0, 32, 32), obj)
    assert contains_centre((15, 20, 40, 40), obj)  # on the boundary
    assert not contains_centre((16, 0, 48, 32), obj)


def test_random_expectation_against_sampling():
    obj = (8, 20, 40, 52)
    iou, hit = random_patch_expectation(obj, 64, 64, 32)
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 33, 20000), rng.integers(0, 33, 20000)
    s_iou = np.mean([box_iou((x, y, x + 32, y + 32), obj) for x, y in zip(xs, ys, strict=True)])
    s_hit = np.mean(
        [contains_centre((x, y, x + 32, y + 32), obj) for x, y in zip(xs, ys, strict=True)]
    )
    assert iou == pytest.approx(s_iou, abs=0.01) and hit == pytest.approx(s_hit, abs=0.01)
    # Centre (24, 36): the patch must start at x in [0, 24] and y in [4, 32] of 33 x 33 places.
    assert hit == pytest.approx((25 / 33) * (29 / 33))


def test_localisation_report():
    truth = {"a": (0, 0, 32, 32), "b": (32, 32, 64, 64)}
    records = [
        {"source": "a", "boxes": [[0, 0, 32, 32]], "orig_size": [64, 64]},  # perfect
        {"source": "b", "boxes": [[0, 0, 32, 32]], "orig_size": [64, 64]},  # disjoint
    ]
    rep = localisation(records, truth, 32)
    assert rep.images == 2 and rep.mean_iou == pytest.approx(0.5) and rep.centre_hit == 0.5
    assert 0 < rep.random_mean_iou < 0.5 and 0 < rep.random_centre_hit < 1
