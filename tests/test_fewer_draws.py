"""The equal-picks ratio: the smallest N of a scheme that reaches iid N=8's agreement."""

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("fewer", ROOT / "benchmarks" / "fewer_draws.py")
fewer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fewer)


def rows(table):
    return [
        {"scheme": s, "num_draws": n, "agreement_pct": {"mean": m, "std": sd}}
        for s, n, m, sd in table
    ]


def test_a_scheme_that_reaches_iid8_with_half_the_draws_is_2x():
    r = fewer.equal_picks(
        rows(
            [
                ("iid", 2, 10, 1),
                ("iid", 4, 15, 1),
                ("iid", 8, 30, 2),
                ("grid", 2, 12, 1),
                ("grid", 4, 27.5, 0.6),  # 28.1 >= 30 - 2
                ("grid", 8, 33, 1),
            ]
        )
    )
    assert r["schemes"]["grid"]["smallest_n_reaching_iid8"] == 4
    assert r["schemes"]["grid"]["speedup_at_equal_picks"] == 2.0
    assert r["schemes"]["iid"]["speedup_at_equal_picks"] == 1.0


def test_no_scheme_reaching_it_is_1x():
    r = fewer.equal_picks(
        rows([("iid", 4, 15, 1), ("iid", 8, 30, 1), ("grid", 4, 20, 1), ("grid", 8, 28.5, 0.4)])
    )
    assert r["schemes"]["grid"]["smallest_n_reaching_iid8"] is None  # 28.9 < 30 - 1
    assert r["schemes"]["grid"]["speedup_at_equal_picks"] == 1.0
