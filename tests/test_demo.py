"""`make demo` chains the commands a user would type: ours and random real images at the same
IPCs, students for both, one table with the gain (issue 13, case 5). The chain is checked
without running it (the real run is `make demo`, timed in the README)."""

import json

import distill.demo as demo


def test_demo_runs_ours_and_random_then_one_table(tmp_path, monkeypatch, capsys):
    cmds = []
    monkeypatch.setattr(demo, "_run", lambda cmd, quiet=False: cmds.append(cmd))
    monkeypatch.setattr(demo, "teacher_checkpoint", lambda args: tmp_path / "cache" / "t.pt")
    assert demo.main([f"out={tmp_path}", "seeds=2", "epochs=3"]) == 0
    assert (tmp_path / "cache" / "t.pt").read_bytes() == demo.SHIPPED_TEACHER.read_bytes()
    mods = [c[2] for c in cmds]
    assert mods == ["distill", "distill", "evaluate", "evaluate", "evaluate.table"]
    ours, rand = cmds[0], cmds[1]
    assert "selector=random" not in ours and {"selector=random", "selector.mode=image"} <= set(rand)
    for c in (ours, rand):
        assert "experiment=demo" in c and "ipc=[1,10,50]" in c
    methods = [next(a for a in c if a.startswith("method=")) for c in cmds[2:4]]
    assert methods == ["method=ours", "method=random_image"]
    for c in cmds[2:4]:
        assert "seeds=2" in c and "epochs=3" in c
    # Both sweeps lie under the folder the table reads.
    table_dir = cmds[4][3]
    assert all(
        next(a for a in c if a.startswith("hydra.sweep.dir="))
        .split("=", 1)[1]
        .startswith(table_dir)
        for c in cmds[2:4]
    )
    out = capsys.readouterr().out
    assert "seeds 0..1" in out and "full-data reference" in out


def test_reference_lines_report_the_teacher(tmp_path):
    (tmp_path / "ours" / "0").mkdir(parents=True)
    (tmp_path / "ours" / "0" / "results.json").write_text(json.dumps({"teacher_acc": 89.57}))
    text = demo.reference_lines(tmp_path, 2, 100)
    assert "89.57 %" in text and "100 epochs" in text


def test_the_shipped_teacher_is_copied_only_where_none_is_cached(tmp_path, monkeypatch):
    import pytest
    import torch

    target = tmp_path / "teachers" / "t.pt"
    monkeypatch.setattr(demo, "teacher_checkpoint", lambda args: target)
    assert "evaluation trains it first" in demo.seed_teacher("train", [])
    assert not target.exists()
    assert "shipped" in demo.seed_teacher("shipped", []) and target.is_file()
    meta = torch.load(target, map_location="cpu", weights_only=False)["meta"]
    assert meta["format"] == "dpd-teacher-v1" and meta["dataset"] == "fashion_mnist"
    assert meta["val_acc"] == 89.57 and meta["numerics"]["threads"] == 2
    target.write_bytes(b"a user's own teacher")
    assert "cached" in demo.seed_teacher("shipped", []), "an existing teacher is never replaced"
    assert target.read_bytes() == b"a user's own teacher"
    with pytest.raises(SystemExit, match="teacher='maybe'"):
        demo.seed_teacher("maybe", [])


def test_teacher_checkpoint_is_where_evaluate_reads_it():
    import os

    path = demo.teacher_checkpoint([])
    assert path.name == demo.SHIPPED_TEACHER.name
    assert str(path).startswith(os.environ["DISTILL_CACHE"])
