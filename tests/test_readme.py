"""The README's recipes work as pasted (issue 15, case 7).

Every ``python -m`` command of every shell block is read from README.md itself, so the README
cannot drift from the code: each `distill`/`evaluate` command is composed by Hydra with the
project's own argv handling (`distill.cli.prepare_argv`) and then checked by
`distill.validate` (unknown keys, renamed presets and bad values fail here); the other
modules' commands must name an importable module. The self-contained recipes then really run
on tiny data in a scratch folder (its relative ``outputs/`` paths included): a folder of
one's own through the smoke preset, materialising a class subset from that run, printing a
preset, the materialise help, and evaluate's smoke run followed by its table.
"""

import os
import re
import shlex
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from distill.cli import prepare_argv
from tests.conftest import CONF, ROOT, random_rgb, save_image

README = ROOT / "README.md"


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv after ``python -m``) of every python command in a shell block."""
    text = README.read_text()
    out = []
    for block in re.finditer(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        start = text[: block.start()].count("\n") + 2
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            line, first = lines[i], i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            if "python -m " not in line or line.lstrip().startswith(("#", "conf/", "evaluate/")):
                continue
            cmd = line[line.index("python -m ") + len("python -m ") :]
            cmd = re.sub(r"\$\([^)]*\)", "RUN", cmd)  # $(ls -d ...) -> a placeholder
            out.append((start + first, shlex.split(cmd, comments=True)))
    # Commands in table cells (the paper-items table): each `python -m ...` code span.
    for n, line in enumerate(text.splitlines(), start=1):
        if line.startswith("|"):
            for span in re.findall(r"`(python -m [^`]+)`", line):
                out.append((n, shlex.split(span[len("python -m ") :])))
    return out


COMMANDS = readme_commands()


def test_the_readme_has_recipes():
    mods = {argv[0] for _, argv in COMMANDS}
    assert {"distill", "evaluate", "distill.materialize", "evaluate.table"} <= mods
    assert len(COMMANDS) >= 25


def _compose(module: str, argv: list[str]) -> list:
    """Compose as the CLI would, every job of a multirun (up to 16), ``...`` elisions dropped."""
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, skip = [], False
    for a in prepare_argv(["prog", *argv])[1:]:
        if skip or a in ("...", "-m", "--multirun") or a.startswith("hydra."):
            skip = False
            continue
        skip = a in ("--cfg", "-c")  # its value follows
        if not skip:
            args.append(a)
    choices = []
    for o in OverridesParser.create().parse_overrides(args):
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    conf_dir = CONF / "evaluate" if module == "evaluate" else CONF
    if module == "evaluate":
        os.environ.setdefault("DPD_CONF_DIR", str(CONF))
    jobs = list(itertools.islice(itertools.product(*choices), 16))
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return [compose(config_name=module, overrides=list(job)) for job in jobs]


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"L{ln}-{argv[0]}" for ln, argv in COMMANDS])
def test_recipe_composes_and_validates(line, argv):
    module, args = argv[0], argv[1:]
    if module in ("distill", "evaluate"):
        for cfg in _compose(module, args):
            if module == "distill":
                from distill.validate import check_config

                check_config(cfg)
            else:
                assert cfg.mode in ("student", "teacher")
    else:
        assert find_spec(module) is not None, f"README line {line}: no module {module}"


# ----------------------------------------------------------------------------- real runs


def _run(argv: list[str], cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        DISTILL_CACHE=str(cwd / "cache"),
    )
    r = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"python -m {' '.join(argv)}\n{r.stderr[-3000:]}"
    return r


def recipe(prefix: str) -> list[str]:
    """The README's command that starts with ``prefix`` (exactly one)."""
    hits = [argv for _, argv in COMMANDS if " ".join(argv) == prefix] or [
        argv for _, argv in COMMANDS if " ".join(argv).startswith(prefix)
    ]
    assert len(hits) == 1, f"README has {len(hits)} commands starting {prefix!r}"
    return hits[0]


def test_own_folder_then_a_subset_then_a_preset(tmp_path):
    """Three recipes as pasted, with the README's placeholder paths pointing at tiny data."""
    images = tmp_path / "my_images"
    for ci, c in enumerate(("cat", "dog", "fox")):
        for j in range(6):
            save_image(images / c / f"{j}.jpg", random_rgb(72, 96, 10 * ci + j), format="JPEG")
    argv = recipe("distill experiment=smoke data=folder")
    argv = [a.replace("/path/to/my_images", str(images)) for a in argv]
    run_dir = tmp_path / "run"
    r = _run([*argv, f"paths.output_dir={run_dir}", "ipc=[1]", "logger=none"], tmp_path)
    assert (run_dir / "distilled" / "ipc1" / "set.json").is_file()
    # What the console shows: no noise lines, no empty progress bar, nothing printed twice.
    console = r.stdout + r.stderr
    for noise in ("GPU available:", "TPU available:", "Predicting: |", "Loading weights"):
        assert noise not in console, noise
    lines = [ln.split("] - ", 1)[-1] for ln in console.splitlines() if "] - " in ln]
    assert not [a for a, b in zip(lines, lines[1:], strict=False) if a == b], "a line twice"
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    argv = recipe("distill.materialize bank_dir=")
    argv = [re.sub(r"^bank_dir=.*", f"bank_dir={run_dir}", a) for a in argv]
    argv = [a for a in argv if not a.startswith("ipc=")] + ["ipc=[2]"]
    _run(argv, tmp_path)
    assert (run_dir / "distilled" / "classes-cat+fox" / "ipc2" / "set.json").is_file()

    argv = recipe("distill.export outputs/distill/runs/RUN format=imagefolder")
    argv = [str(run_dir) if a == "outputs/distill/runs/RUN" else a for a in argv]
    argv = [a for a in argv if not a.startswith("ipc=")] + ["ipc=1"]
    _run(argv, tmp_path)
    assert (run_dir / "export" / "imagefolder" / "ipc1" / "export.json").is_file()

    out = _run(recipe("distill experiment=imagewoof_ipc10 --cfg job"), tmp_path).stdout
    assert "name: imagewoof" in out
    assert "bank_dir" in _run(["distill.materialize", "--help"], tmp_path).stdout


def test_evaluate_smoke_then_the_table_as_pasted(tmp_path):
    _run(recipe("evaluate experiment=smoke"), tmp_path)
    _run(recipe("evaluate.table outputs/evaluate"), tmp_path)
    tables = list((tmp_path / "outputs").rglob("*.md"))
    assert tables, "evaluate.table wrote no table"
