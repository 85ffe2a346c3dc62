"""`make demo` chains the commands a user would type: ours and random real images at the same
IPCs, students for both, one table with the gain (issue 13, case 5). The chain is checked
without running it (the real run is `make demo`, timed in the README)."""

import json

import distill.demo as demo


def test_demo_runs_ours_and_random_then_one_table(tmp_path, monkeypatch, capsys):
    cmds = []
    monkeypatch.setattr(demo, "_run", lambda cmd, quiet=False: cmds.append(cmd))
    assert demo.main([f"out={tmp_path}", "seeds=2", "epochs=3"]) == 0
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
