"""The held-out part of the training split (``data.holdout_per_class``): settings are chosen on
it instead of the test split, so it must never overlap a pool or change with the pool's draw."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from distill.data import build_source
from distill.errors import ConfigError, DataError
from distill.scoring.stage import hashed_data
from distill.validate import check_data
from tests.test_sources import WOOF, data_cfg, make_tree, write_idx


@pytest.fixture()
def fashion_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def ids(src) -> set[str]:
    return {it.source for it in src.items}


def test_holdout_is_disjoint_from_every_pool_and_fixed(fashion_root):
    base = dict(kind="fashion_mnist", root=str(fashion_root), min_side=8, holdout_per_class=5)
    everything = ids(build_source(data_cfg(kind="fashion_mnist", root=str(fashion_root))))
    held = build_source(data_cfg(**base), "holdout")
    assert held.split == "holdout" and held.counts() == [5] * 10
    rest = build_source(data_cfg(**base))
    assert rest.counts() == [15] * 10
    assert ids(held) | ids(rest) == everything and not ids(held) & ids(rest)
    # Pools of any size and draw come from the rest; the held-out items never move.
    for per, seed in ((4, 0), (4, 1), (10, 2), (None, 3)):
        cfg = data_cfg(**base, images_per_class=per, subsample_seed=seed)
        pool = build_source(cfg)
        assert ids(pool) <= ids(rest) and not ids(pool) & ids(held)
        assert ids(build_source(cfg, "holdout")) == ids(held)
    # The labels travel with the items; the test split is untouched.
    assert all(int(it.source.split("/")[1]) % 10 == it.label for it in held.items)
    assert len(build_source(data_cfg(**base), "test")) == 50
    other = build_source(data_cfg(**base, holdout_seed=1), "holdout")
    assert ids(other) != ids(held) and other.counts() == [5] * 10


def test_holdout_on_a_folder_tree(tmp_path):
    make_tree(tmp_path, WOOF[:2], n=6)
    cfg = data_cfg(root=str(tmp_path), classes=WOOF[:2], holdout_per_class=2, images_per_class=3)
    held, pool = build_source(cfg, "holdout"), build_source(cfg)
    assert held.counts() == [2, 2] and pool.counts() == [3, 3]
    assert not {it.path for it in held.items} & {it.path for it in pool.items}


def test_holdout_errors_name_the_setting(fashion_root):
    plain = data_cfg(kind="fashion_mnist", root=str(fashion_root), min_side=8)
    with pytest.raises(ConfigError, match="data.holdout_per_class"):
        build_source(plain, "holdout")
    too_many = data_cfg(kind="fashion_mnist", root=str(fashion_root), holdout_per_class=20)
    with pytest.raises(DataError, match="holdout_per_class=20 leaves nothing of class"):
        build_source(too_many)
    with pytest.raises(ConfigError, match="data.holdout_per_class=0"):
        check_data(OmegaConf.create({"short_edge": 8, "min_side": 8, "holdout_per_class": 0}))
    with pytest.raises(ConfigError, match="val_split=holdout needs"):
        check_data(OmegaConf.create({"short_edge": 8, "min_side": 8, "val_split": "holdout"}))
    for bad in (0, -3, "many"):  # evaluate reads sources without distill's config check
        with pytest.raises(ConfigError, match="must be an integer >= 1"):
            build_source(
                data_cfg(kind="fashion_mnist", root=str(fashion_root), holdout_per_class=bad)
            )
    with pytest.raises(ConfigError, match="synthetic"):
        build_source(data_cfg(kind="synthetic", holdout_per_class=1))


def test_holdout_enters_the_bank_hash_only_when_set():
    data = {"name": "t", "split": "train", "images_per_class": 300, "subsample_seed": 0}
    none = {**data, "holdout_per_class": None, "holdout_seed": 0}
    assert hashed_data(none) == hashed_data(data)
    held = hashed_data({**data, "holdout_per_class": 100, "holdout_seed": 0})
    assert held["holdout_per_class"] == 100 and held != hashed_data(data)
