"""Stage I timestep schemes (``scoring.t_sampling``): iid (the paper, default), stratified, grid.

Each scheme is checked against what it promises: iid is bit-identical to the formula used
before the option existed, stratified puts one draw in each equal sub-interval, grid gives
the midpoints, the noise never depends on the scheme, and the bank hash tells them apart
while a bank made before the option (no key) still matches under iid.
"""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from distill.bank import config_hash, prepare_stage
from distill.data.classes import ClassInfo
from distill.errors import BankMismatchError, ConfigError
from distill.scoring.module import ScoringModule
from distill.scoring.relevance import (
    T_SAMPLING,
    check_t_sampling,
    draw_noise,
    stable_seed,
    stratum_bounds,
)
from distill.scoring.stage import score_spec
from tests.conftest import compose, scoring_cfg

SHAPE = (4, 3, 5)
# (lo, hi, N): the default range, N = 1, lo == hi, N > hi - lo + 1, N == hi - lo + 1, odd M.
CASES = [(100, 700, 8), (100, 700, 1), (500, 500, 4), (10, 12, 7), (0, 4, 5), (3, 9, 3)]


def old_draw_noise(seed, source, num_draws, latent_shape, t_lo, t_hi):
    """The formula before ``t_sampling`` existed, one draw at a time (the iid reference)."""
    ts, eps = [], []
    for i in range(num_draws):
        g = torch.Generator()
        g.manual_seed(stable_seed(seed, source, i))
        ts.append(int(torch.randint(t_lo, t_hi + 1, (1,), generator=g)[0]))
        eps.append(torch.randn(latent_shape, generator=g))
    return torch.tensor(ts, dtype=torch.long), torch.stack(eps)


def overlaps(t: int, i: int, n: int, lo: int, hi: int) -> bool:
    """Whether the unit cell [t, t + 1) meets sub-interval i of [lo, hi + 1) (exact integers)."""
    m = hi - lo + 1
    # [t - lo, t - lo + 1) meets [i m / n, (i + 1) m / n)  <=>  both strict inequalities below.
    return (t - lo) * n < (i + 1) * m and (t - lo + 1) * n > i * m


@pytest.mark.parametrize("lo,hi,n", CASES)
def test_iid_default_is_bit_identical_to_the_old_formula(lo, hi, n):
    for seed, src in ((0, "a/1.jpg"), (7, "shirt/00042"), (123456789, "x")):
        want_t, want_e = old_draw_noise(seed, src, n, SHAPE, lo, hi)
        for got_t, got_e in (
            draw_noise(seed, src, n, SHAPE, lo, hi),
            draw_noise(seed, src, n, SHAPE, lo, hi, "iid"),
        ):
            assert got_t.dtype == torch.long and torch.equal(got_t, want_t)
            assert torch.equal(got_e, want_e)  # bitwise, not allclose


@pytest.mark.parametrize("scheme", ["stratified", "grid"])
@pytest.mark.parametrize("lo,hi,n", CASES)
def test_noise_is_the_same_under_every_scheme(scheme, lo, hi, n):
    """Only the timesteps change: eps_i still comes from (seed, source, i) as before."""
    _, want = old_draw_noise(3, "img", n, SHAPE, lo, hi)
    _, got = draw_noise(3, "img", n, SHAPE, lo, hi, scheme)
    assert torch.equal(got, want)


@pytest.mark.parametrize("scheme", T_SAMPLING)
@pytest.mark.parametrize("lo,hi,n", CASES)
def test_every_scheme_stays_within_bounds(scheme, lo, hi, n):
    for src in range(40):
        ts, eps = draw_noise(1, f"s{src}", n, SHAPE, lo, hi, scheme)
        assert ts.shape == (n,) and eps.shape == (n, *SHAPE) and ts.dtype == torch.long
        assert int(ts.min()) >= lo and int(ts.max()) <= hi


@pytest.mark.parametrize("lo,hi,n", CASES)
def test_stratified_puts_one_draw_in_each_sub_interval(lo, hi, n):
    for src in range(60):
        ts = draw_noise(5, f"s{src}", n, SHAPE, lo, hi, "stratified")[0].tolist()
        for i, t in enumerate(ts):
            assert overlaps(t, i, n, lo, hi), (src, i, t)
            a, b = stratum_bounds(i, n, lo, hi)
            assert a <= t <= b
        assert ts == sorted(ts)  # strata are ordered, so are their draws


def test_stratum_bounds_tile_the_range():
    for lo, hi, n in CASES:
        cells = [stratum_bounds(i, n, lo, hi) for i in range(n)]
        assert cells[0][0] == lo and cells[-1][1] == hi
        for (a, b), (c, _) in zip(cells, cells[1:], strict=False):
            assert a <= b and c in (b, b + 1)  # contiguous; shared cell when M / N not whole
        for i, (a, b) in enumerate(cells):
            assert all(overlaps(t, i, n, lo, hi) for t in range(a, b + 1))
            assert not overlaps(a - 1, i, n, lo, hi) and not overlaps(b + 1, i, n, lo, hi)


def test_stratified_is_seeded_and_random_within_strata():
    a = draw_noise(0, "a/1.jpg", 8, SHAPE, 100, 700, "stratified")
    b = draw_noise(0, "a/1.jpg", 8, SHAPE, 100, 700, "stratified")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # reproducible
    c = draw_noise(1, "a/1.jpg", 8, SHAPE, 100, 700, "stratified")
    d = draw_noise(0, "a/2.jpg", 8, SHAPE, 100, 700, "stratified")
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    # Not a grid in disguise: the position inside stratum 0 varies from image to image.
    firsts = {
        int(draw_noise(0, f"s{k}", 8, SHAPE, 100, 700, "stratified")[0][0]) for k in range(50)
    }
    assert len(firsts) > 25 and min(firsts) >= 100 and max(firsts) <= 100 + 601 // 8


def test_stratified_marginal_is_uniform():
    """A random draw of the stratified scheme is U{lo..hi}, like iid: the mean over draws
    estimates the same expectation. 7 timesteps, 3 strata (7/3 not whole: the boundary
    cells are shared between neighbouring strata with the right weights)."""
    lo, hi, n, k = 20, 26, 3, 7000
    counts = torch.zeros(hi - lo + 1)
    for src in range(k // n):
        ts = draw_noise(9, f"u{src}", n, (1, 1, 1), lo, hi, "stratified")[0]
        counts += torch.bincount(ts - lo, minlength=hi - lo + 1)
    expect = counts.sum() / (hi - lo + 1)
    assert float((counts - expect).abs().max() / expect) < 0.1, counts.tolist()


def test_grid_is_the_documented_midpoints():
    ts = draw_noise(0, "a", 4, SHAPE, 100, 700, "grid")[0]
    # M = 601 timesteps; midpoints lo + floor((i + 1/2) 601 / 4) = 175.125, 325.375, ...
    assert ts.tolist() == [175, 325, 475, 625]
    # Li et al. (2023) on [0, T): range(T // N // 2, T, T // N).
    assert draw_noise(0, "a", 8, SHAPE, 0, 999, "grid")[0].tolist() == list(range(62, 1000, 125))
    assert draw_noise(0, "a", 10, SHAPE, 0, 999, "grid")[0].tolist() == list(range(50, 1000, 100))
    # Deterministic: no dependence on seed or image.
    for seed, src in ((1, "a"), (0, "b"), (99, "c/d")):
        assert torch.equal(draw_noise(seed, src, 4, SHAPE, 100, 700, "grid")[0], ts)
    # Evenly spaced up to the integer floor.
    steps = torch.diff(draw_noise(0, "a", 16, SHAPE, 100, 700, "grid")[0])
    assert int(steps.min()) >= 601 // 16 and int(steps.max()) <= 601 // 16 + 1


@pytest.mark.parametrize(
    "lo,hi,n,grid",
    [
        (100, 700, 1, [400]),  # N = 1: the middle of [lo, hi]
        (500, 500, 4, [500] * 4),  # lo == hi
        (10, 12, 7, [10, 10, 11, 11, 11, 12, 12]),  # N > M: repeats, noise still differs
        (0, 4, 5, [0, 1, 2, 3, 4]),  # N == M: every timestep once
    ],
)
def test_edge_cases(lo, hi, n, grid):
    g_t, g_e = draw_noise(2, "e", n, SHAPE, lo, hi, "grid")
    assert g_t.tolist() == grid
    s_t, s_e = draw_noise(2, "e", n, SHAPE, lo, hi, "stratified")
    if n == hi - lo + 1:
        assert s_t.tolist() == grid  # one integer per stratum: no room for jitter
    if lo == hi:
        assert s_t.tolist() == [lo] * n
    if n > 1:
        assert not torch.equal(g_e[0], g_e[1])  # repeated timesteps get their own noise
    assert torch.equal(g_e, s_e)


@pytest.mark.parametrize("bad", ["uniform", "IID", "", None, 3])
def test_bad_value_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"scoring\.t_sampling.*iid, stratified, grid"):
        check_t_sampling(bad)
    with pytest.raises(ConfigError, match=r"scoring\.t_sampling"):
        draw_noise(0, "a", 2, SHAPE, 100, 700, bad)


STUB_BACKEND = SimpleNamespace(num_train_timesteps=1000, vae_factor=8)
CLASSES = [ClassInfo(0, "a", "apple")]


@pytest.mark.parametrize("scheme", T_SAMPLING)
def test_scoring_module_threads_the_scheme(scheme):
    cfg = (
        scoring_cfg(num_draws=4) if scheme == "iid" else scoring_cfg(num_draws=4, t_sampling=scheme)
    )
    m = ScoringModule(STUB_BACKEND, CLASSES, cfg, 64)
    t, eps = m.draws(["a/1", "a/2"], SHAPE)
    for b, src in enumerate(["a/1", "a/2"]):
        want_t, want_e = draw_noise(0, src, 4, SHAPE, 100, 700, scheme)
        assert torch.equal(t[b], want_t) and torch.equal(eps[b], want_e)


def test_scoring_module_rejects_a_bad_scheme():
    with pytest.raises(ConfigError, match=r"scoring\.t_sampling='bogus'"):
        ScoringModule(STUB_BACKEND, CLASSES, scoring_cfg(num_draws=4, t_sampling="bogus"), 64)


class StubBackend:
    def fingerprint(self):
        return {"name": "stub", "weights": "0" * 8}


STUB_SOURCE = SimpleNamespace(
    classes=CLASSES,
    items=[SimpleNamespace(source="a/1", label=0, size=(64, 64))],
)
# The hashed scoring keys before t_sampling existed.
OLD_SCORING_KEYS = (
    "t_range",
    "num_draws",
    "seed",
    "prompt",
    "null_prompt",
    "patch",
    "stride",
    "topk",
    "shard_size",
)


def spec_for(*overrides):
    cfg = compose("distill", ["experiment=smoke", *overrides])
    return score_spec(cfg, STUB_SOURCE, StubBackend())


def test_default_is_iid_and_keeps_old_bank_hashes():
    cfg = compose("distill", ["experiment=smoke"])
    assert cfg.scoring.t_sampling == "iid"
    spec = spec_for()
    assert "t_sampling" not in spec["scoring"]
    scoring = OmegaConf.to_container(cfg.scoring, resolve=True)
    old = dict(spec, scoring={k: scoring.get(k) for k in OLD_SCORING_KEYS})
    assert config_hash(spec) == config_hash(old)  # a pre-option bank still matches
    assert config_hash(spec_for("scoring.t_sampling=iid")) == config_hash(spec)


def test_bank_hash_changes_with_the_scheme(tmp_path):
    hashes = {s: config_hash(spec_for(f"scoring.t_sampling={s}")) for s in T_SAMPLING}
    assert len(set(hashes.values())) == 3
    assert spec_for("scoring.t_sampling=grid")["scoring"]["t_sampling"] == "grid"
    # An iid bank is refused under stratified, with the difference spelled out.
    prepare_stage(tmp_path / "bank", "score", spec_for())
    prepare_stage(tmp_path / "bank", "score", spec_for("scoring.t_sampling=iid"))  # same bank
    with pytest.raises(BankMismatchError, match=r"scoring\.t_sampling: <absent> -> stratified"):
        prepare_stage(tmp_path / "bank", "score", spec_for("scoring.t_sampling=stratified"))


def test_score_stage_rejects_a_bad_scheme_before_loading_anything(tmp_path):
    from distill.scoring.stage import run_score

    cfg = compose(
        "distill",
        ["experiment=smoke", f"paths.output_dir={tmp_path}", "scoring.t_sampling=uniform"],
    )
    with pytest.raises(ConfigError, match=r"scoring\.t_sampling='uniform' must be one of"):
        run_score(cfg)
    assert not (tmp_path / "bank").exists()


def test_stratified_matches_a_slow_reference():
    """Draw i of `stratified`: the generator of (seed, source, i) yields the iid timestep,
    the noise, then one float64 uniform u; t_i = lo + floor((i + u) / N * M), clamped to the
    stratum. Written out here step by step, independently of draw_noise."""
    import math

    from distill.scoring.relevance import stable_seed, stratum_bounds

    lo, hi, n, shape = 100, 700, 8, (2, 3, 3)
    ts, _ = draw_noise(5, "img/7.png", n, shape, lo, hi, "stratified")
    m = hi - lo + 1
    for i in range(n):
        g = torch.Generator().manual_seed(stable_seed(5, "img/7.png", i))
        torch.randint(lo, hi + 1, (1,), generator=g)
        torch.randn(shape, generator=g)
        u = (i + float(torch.rand(1, generator=g, dtype=torch.float64))) / n
        a, b = stratum_bounds(i, n, lo, hi)
        assert int(ts[i]) == min(max(lo + math.floor(u * m), a), b)
