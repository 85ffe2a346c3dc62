"""Materialise at scale (issue 16): figures for a sample of classes, sets written by forked
workers; neither setting changes a byte of the set.

The bank is the scale benchmark's synthetic one (real JPEGs, the project's own bank writers,
features merge and clustering; no U-Net), at a few classes.
"""

import json
from pathlib import Path

import pytest

from distill.errors import ConfigError, DataError
from distill.materialize import (
    class_chunks,
    figure_mode,
    figure_sample,
    main,
    materialize,
    resolve_workers,
    write_set_parallel,
)
from tests.conftest import load_benchmark

bench = load_benchmark("scale_bench")
CLASSES, PER_CLASS = 5, 12
IPCS = [2, 11]  # tiled 2x2 and single patches


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("scale")
    pool = bench.write_pool(work / "pool", 4, seed=0)
    cfg = bench.build_bank(work / "run", CLASSES, PER_CLASS, pool, dim=16, seed=0)
    bench.step_merge(cfg, {})
    bench.step_cluster(cfg, {})
    return Path(cfg.paths.bank_dir)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def sets(out: Path) -> dict[str, bytes]:
    """Every file of the distilled sets under ``out`` (not the figures)."""
    got = {}
    for ipc in IPCS:
        got.update({f"ipc{ipc}/{k}": v for k, v in files(out / f"ipc{ipc}").items()})
    return got


def test_workers_write_the_serial_path_s_bytes(bank, tmp_path, monkeypatch):
    import distill.materialize as mat

    forked = []
    real = mat.write_set_parallel
    monkeypatch.setattr(
        mat, "write_set_parallel", lambda *a, **k: forked.append(a[4]) or real(*a, **k)
    )
    serial = materialize(bank, IPCS, tmp_path / "serial", workers=1, figures="none")
    assert forked == []
    parallel = materialize(bank, IPCS, tmp_path / "parallel", workers=3, figures="none")
    assert forked == [3, 3]  # one pool of three workers per IPC
    a, b = sets(tmp_path / "serial"), sets(tmp_path / "parallel")
    assert sorted(a) == sorted(b) and a == b
    assert len([k for k in a if k.endswith(".png")]) == CLASSES * sum(IPCS)
    for ipc in IPCS:
        assert serial[ipc] == parallel[ipc]
        info = json.loads(a[f"ipc{ipc}/set.json"])
        assert info["num_classes"] == CLASSES and info["images"] == CLASSES * ipc
    assert not list((tmp_path / "parallel").rglob(".parts"))


def test_figures_setting_never_changes_the_set(bank, tmp_path):
    for mode in ("all", "sample", "none"):
        materialize(bank, IPCS, tmp_path / mode, figures=mode, figure_classes=2, workers=2)
    assert sets(tmp_path / "all") == sets(tmp_path / "sample") == sets(tmp_path / "none")
    keys = json.loads((tmp_path / "all" / "ipc2" / "set.json").read_text())["settings"]["classes"]
    grids = lambda m: sorted(p.name for p in (tmp_path / m / "figures" / "ipc2").iterdir())  # noqa: E731
    sheets = lambda m: sorted(p.stem for p in (tmp_path / m / "figures" / "clusters").iterdir())  # noqa: E731
    assert grids("all") == sorted(["overview.png", *(f"{k}.png" for k in keys)])
    # Two of five classes, evenly spread: the first and the third.
    assert grids("sample") == sorted(["overview.png", f"{keys[0]}.png", f"{keys[2]}.png"])
    assert sheets("sample") == sorted([keys[0], keys[2]]) and sheets("all") == sorted(keys)
    assert not (tmp_path / "none" / "figures").exists()


def test_figure_sample_is_spread_and_deterministic():
    classes = [{"index": i} for i in range(1000)]
    picked = [c["index"] for c in figure_sample(classes, "sample", 10)]
    assert picked == list(range(0, 1000, 100))
    assert figure_sample(classes[:7], "sample", 10) == classes[:7]
    assert figure_sample(classes, "all", 10) == classes and figure_sample(classes, "none", 10) == []
    with pytest.raises(ConfigError, match="figure_classes=0"):
        figure_sample(classes, "sample", 0)
    assert [figure_mode(v) for v in (True, False, "ALL", "none", "sample")] == [
        "all",
        "none",
        "all",
        "none",
        "sample",
    ]
    with pytest.raises(ConfigError, match="must be one of sample, all, none"):
        figure_mode("some")


def test_workers_setting_and_chunks():
    assert resolve_workers(3) == 3 and resolve_workers("2") == 2 and resolve_workers("auto") >= 1
    for bad in (0, "two", 1.5):
        with pytest.raises(ConfigError, match="workers="):
            resolve_workers(bad)
    classes = [{"index": i} for i in range(10)]
    chunks = class_chunks(classes, 2)
    assert [c for ch in chunks for c in ch] == classes and len(chunks) == 8
    assert class_chunks(classes[:3], 4) == [[c] for c in classes[:3]]


class BrokenSource:
    """Items whose file a worker cannot read."""

    class Item:
        path, source = "/nowhere/x.JPEG", "x"

    items = [Item()]

    def load(self, i):
        from distill.data.images import UnreadableImage

        raise UnreadableImage("truncated")


def test_a_worker_s_error_is_the_serial_path_s_message(tmp_path):
    from distill.assembly import PatchRef

    classes = [{"index": i, "key": f"c{i}", "name": f"c{i}", "source_index": i} for i in range(2)]
    refs = {i: [PatchRef(0, "x", (0, 0, 8, 8))] for i in range(2)}
    kw = {"ipc": 1, "tiles": 1, "image_size": 8}
    with pytest.raises(DataError, match=r"cannot read /nowhere/x.JPEG for a distilled patch"):
        write_set_parallel(tmp_path / "set", classes, refs, BrokenSource(), 2, **kw)
    assert not (tmp_path / "set").exists() and not list(tmp_path.iterdir())


def test_cli_takes_figures_and_workers(bank, tmp_path, capsys):
    args = [f"bank_dir={bank}", "ipc=[2]", f"out_dir={tmp_path}/out"]
    assert main([*args, "figures=sample", "figure_classes=1", "workers=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "figures" / "ipc2").iterdir()) == [
        "n01440764.png",
        "overview.png",
    ]
    assert main([*args, "figures=some"]) == 2
    assert "figures='some' must be one of sample, all, none" in capsys.readouterr().err
    assert main([*args, "workers=0"]) == 2
    assert "workers=0 must be 'auto' or an integer >= 1" in capsys.readouterr().err


def test_the_assemble_stage_reads_its_settings(tmp_path, monkeypatch):
    """conf/assemble/default.yaml's figures, figure_classes and workers reach materialise."""
    import distill.materialize as mat
    from tests.conftest import compose

    seen = {}
    monkeypatch.setattr(mat, "materialize", lambda *a, **k: seen.update(k) or {})
    cfg = compose(
        "distill",
        [
            "experiment=smoke",
            "selector=random",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "assemble.figure_classes=3",
            "assemble.workers=2",
        ],
    )
    mat.run_assemble(cfg)
    assert (seen["figures"], seen["figure_classes"], seen["workers"]) == ("sample", 3, 2)
