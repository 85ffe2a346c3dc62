"""The command line a user meets first: help that opens with examples and lists only the
app's own groups, one copy of each error, no noise lines, a warning for ``+key=`` typos
(issue 14, case 6)."""

import logging

import pytest

from distill.cli import help_text, log_to_files, maybe_help, warn_added_keys
from distill.runtime import _DropTips
from tests.conftest import compose


def test_distill_help_lists_its_own_groups_with_examples():
    import distill.__main__ as app

    text = help_text("distill", app.__doc__)
    assert text.startswith("`python -m distill`") and "experiment=smoke" in text
    groups = {ln.split()[0] for ln in text.splitlines() if ln.startswith("  ") and ln.split()}
    assert {
        "data",
        "scoring",
        "features",
        "cluster",
        "selector",
        "assemble",
        "experiment",
    } <= groups
    assert not groups & {"student", "teacher", "optim", "labels", "evaluate"}
    assert "demo" in next(ln for ln in text.splitlines() if ln.startswith("  experiment"))


def test_evaluate_help_lists_its_own_groups_with_examples():
    import evaluate.__main__ as app

    text = help_text("evaluate", app.__doc__)
    assert "python -m evaluate experiment=smoke" in text
    groups = {ln.split()[0] for ln in text.splitlines() if ln.startswith("  ") and ln.split()}
    assert {"student", "teacher", "optim", "labels", "data", "trainer", "experiment"} <= groups
    assert not groups & {"scoring", "features", "cluster", "selector", "assemble", "diffusion"}
    experiment = next(ln for ln in text.splitlines() if ln.startswith("  experiment"))
    assert "cross_arch" in experiment and "sweep" not in experiment
    assert "_base" not in next(ln for ln in text.splitlines() if ln.startswith("  teacher"))


def test_help_flag_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        maybe_help("distill", "usage", ["prog", "--help"])
    assert e.value.code == 0 and "Config groups" in capsys.readouterr().out
    maybe_help("distill", "usage", ["prog", "ipc=10"])  # no flag: nothing happens


def test_plus_key_typo_is_warned_with_a_suggestion(caplog):
    cfg = compose("distill", ["experiment=smoke", "+scoring.num_draw=3"])
    msgs = warn_added_keys(cfg, ["+scoring.num_draw=3", "scoring.topk=2"], logging.getLogger("t"))
    assert len(msgs) == 1 and "nothing reads it" in msgs[0] and "scoring.num_draws" in msgs[0]
    assert (
        warn_added_keys(cfg, ["++scoring.topk=2", "+hydra.job.env_set.X=1"], logging.getLogger("t"))
        == []
    )


def test_errors_go_to_the_log_file_only(tmp_path, capsys):
    root = logging.getLogger()
    fh = logging.FileHandler(tmp_path / "run.log")
    root.addHandler(fh)
    try:
        log_to_files(logging.getLogger("distill"), "error: ipc=0: bad")
    finally:
        root.removeHandler(fh)
        fh.close()
    assert "error: ipc=0: bad" in (tmp_path / "run.log").read_text()
    captured = capsys.readouterr()
    assert "ipc=0" not in captured.out + captured.err


@pytest.mark.parametrize(
    "msg,kept",
    [
        ("GPU available: False, used: False", False),
        ("TPU available: False, using: 0 TPU cores", False),
        ("💡 Tip: For seamless cloud uploads ...", False),
        ("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.", True),
        ("Restoring states from the checkpoint path", True),
    ],
)
def test_lightning_noise_is_dropped_and_warnings_kept(msg, kept):
    rec = logging.LogRecord("lightning", logging.INFO, __file__, 0, msg, None, None)
    assert _DropTips().filter(rec) is kept


def test_key_value_tools_refuse_bad_arguments_in_one_line():
    from distill.cli import read_kv_args
    from distill.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        read_kv_args(["ipc=[1"], {"ipc": None})
    assert "\n" not in str(e.value) and "ipc=[1" in str(e.value)
    with pytest.raises(ConfigError, match=r"unknown arguments \['ipcs'\]"):
        read_kv_args(["ipcs=1"], {"ipc": None})
    assert read_kv_args(["ipc=[1,2]"], {"ipc": None}).ipc == [1, 2]
