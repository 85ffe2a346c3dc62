"""Command-line conveniences shared by `python -m distill` and `python -m evaluate`.

``paths.output_dir=X`` is how the README resumes or places a run. Hydra, however, decides
its own run folder (``hydra.run.dir``) before the config is composed, so ``.hydra/`` (the
run's provenance) and the log used to land in ``./outputs/...`` while the results went to X,
and a later evaluation read the wrong config. `route_output_dir` makes X Hydra's run folder
too, so one folder holds everything.

``experiment=null`` is the README's way into the bare paper defaults; Hydra's override
grammar reads it as "set the group to None" and fails with a raw traceback (its own
spelling is ``~experiment``). `prepare_argv` translates it.
"""

from __future__ import annotations

OUTPUT_KEYS = ("paths.output_dir=", "+paths.output_dir=", "++paths.output_dir=")


def route_output_dir(argv: list[str]) -> list[str]:
    """``argv`` with ``hydra.run.dir=X`` added when ``paths.output_dir=X`` is given.

    Left alone: an explicit ``hydra.run.dir`` (the user's choice wins) and multirun (each job
    has its own folder under ``hydra.sweep.dir``; one output_dir for all jobs is the user's
    explicit wish).
    """
    args = list(argv)
    if any(
        a in ("-m", "--multirun") or a.startswith(("hydra.run.dir=", "hydra.mode=")) for a in args
    ):
        return args
    value = None
    for a in args:
        for key in OUTPUT_KEYS:
            if a.startswith(key):
                value = a[len(key) :]
    if value:
        args.append(f"hydra.run.dir={value}")
    return args


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line as Hydra should see it: ``experiment=null`` (or ``none``) becomes
    ``~experiment`` (no preset), and `route_output_dir` is applied."""
    args = ["~experiment" if a in ("experiment=null", "experiment=none") else a for a in argv]
    return route_output_dir(args)
