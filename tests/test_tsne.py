"""Paper Figure 10: one t-SNE map of the teacher's features, a panel per distilled set."""

import numpy as np
import pytest
from PIL import Image

from distill.errors import ConfigError
from distill.pipeline import run
from distill.tsne import main, tsne_figure
from tests.conftest import compose
from tests.test_teacher_selector import teacher_pt  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    out = {}
    for name, extra in (("ours", []), ("random", ["selector=random", "selector.mode=image"])):
        d = tmp_path_factory.mktemp(name)
        run(
            compose(
                "distill",
                ["experiment=smoke", f"paths.output_dir={d}", "logger=none", "ipc=[1]", *extra],
            )
        )
        out[name] = d / "distilled" / "ipc1"
    return out


def test_one_panel_per_set(two_sets, teacher_pt, tmp_path):  # noqa: F811
    png = tsne_figure(
        str(teacher_pt),
        list(two_sets.values()),
        list(two_sets),
        tmp_path / "t.png",
        real_per_class=8,
    )
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[1] > 1.6 * im.shape[0]  # two panels side by side
    assert (
        main(
            [
                f"teacher={teacher_pt}",
                f"sets=[{two_sets['ours']}]",
                f"out={tmp_path / 'cli.png'}",
                "real_per_class=6",
            ]
        )
        == 0
    )
    assert (tmp_path / "cli.png").stat().st_size > 5000


def test_bad_arguments_are_one_line_errors(two_sets, teacher_pt, capsys):  # noqa: F811
    assert main([f"sets=[{two_sets['ours']}]"]) == 2
    assert "teacher=PATH" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="names lists 1 names for 2 sets"):
        tsne_figure(
            str(teacher_pt), list(two_sets.values()), ["a"], __import__("pathlib").Path("x.png")
        )
