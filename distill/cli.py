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

import logging
from pathlib import Path

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


# ----------------------------------------------------------------------------- --help

CONF = Path(__file__).resolve().parents[1] / "conf"


def config_groups(app: str) -> dict[str, list[str]]:
    """The groups of ``app``'s main config (its defaults list) and each group's options.

    An app's own folder wins over the shared one (evaluate's ``experiment`` is
    ``conf/evaluate/experiment``, its ``data`` the shared ``conf/data``), and files starting
    with ``_`` are bases, not options. Read from disk, so a new preset shows up by itself.
    """
    from omegaconf import OmegaConf

    own = CONF / "evaluate" if app == "evaluate" else CONF
    main = OmegaConf.load(own / f"{app}.yaml")
    groups: dict[str, list[str]] = {}
    for entry in main.get("defaults", []):
        if not OmegaConf.is_dict(entry) and not isinstance(entry, dict):
            continue
        for group in entry:
            if group == "hydra":
                continue
            folder = own / group if (own / group).is_dir() else CONF / group
            groups[group] = sorted(
                p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_")
            )
    return groups


def help_text(app: str, doc: str) -> str:
    """``--help`` of ``python -m <app>``: its usage examples, then only its own groups."""
    lines = [doc.strip(), "", "Config groups (group=option; defaults in conf/):"]
    for group, options in config_groups(app).items():
        lines.append(f"  {group:<11} {', '.join(options)}")
    lines += [
        "",
        "Any key can be overridden (key=value, e.g. scoring.t_range=[0.1,0.3]); a key no config",
        "file defines is an error, not a silent addition. `--cfg job` prints the composed config,",
        "`--hydra-help` Hydra's own options. README.md has the recipes.",
    ]
    return "\n".join(lines)


def maybe_help(app: str, doc: str, argv: list[str]) -> None:
    """Print `help_text` and exit when ``--help``/``-h`` is on the command line."""
    if any(a in ("--help", "-h") for a in argv[1:]):
        print(help_text(app, doc))
        raise SystemExit(0)


# ----------------------------------------------------------------------------- errors, + keys


def log_to_files(logger: logging.Logger, message: str) -> None:
    """Record ``message`` as an error in the run's log file only: the console gets it once,
    from the ``error: ...`` line on stderr."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def warn_added_keys(cfg, overrides: list[str], logger: logging.Logger) -> list[str]:
    """Warn about ``+key=value`` overrides: Hydra suggests ``+`` to "fix" a mistyped key, but
    a key that no config file defines is read by no code, so the run would ignore it.

    Returns the warnings (for tests). Keys under ``hydra.`` are Hydra's own business.
    """
    import difflib

    from omegaconf import OmegaConf

    known = [k for k in _flat_keys(OmegaConf.to_container(cfg, resolve=False))]
    out = []
    for o in overrides:
        if not o.startswith("+") or o.startswith("++"):
            continue
        key = o.lstrip("+").split("=", 1)[0]
        if key.startswith("hydra.") or "=" not in o:
            continue
        others = [k for k in known if k != key]
        close = difflib.get_close_matches(key, others, n=3, cutoff=0.75)
        msg = f"{o}: '{key}' is a key no config file defines, so nothing reads it" + (
            f"; did you mean {' or '.join(close)}?" if close else ""
        )
        logger.warning(msg)
        out.append(msg)
    return out


def _flat_keys(d, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(d, dict):
        for k, v in d.items():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_flat_keys(v, full + "."))
    return keys


# ----------------------------------------------------------------------------- key=value tools
# `python -m distill.materialize`, `distill.export` and `distill.tsne` take OmegaConf
# key=value arguments over a table of defaults, outside Hydra.


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "help") for a in argv)


def setup_logging() -> None:
    """The log format the Hydra apps print, for the key=value tools."""
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )


def read_kv_args(argv: list[str], defaults: dict):
    """``key=value`` arguments over ``defaults``: a `ConfigError` (one line) for a value
    OmegaConf cannot parse or a key ``defaults`` does not have."""
    from omegaconf import OmegaConf

    from distill.errors import ConfigError

    try:
        args = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.from_dotlist(argv))
    except Exception as e:  # OmegaConf's grammar errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot read the arguments {argv}: {first} (key=value, lists as [a,b])"
        ) from None
    unknown = set(args) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown arguments {sorted(unknown)}; known: {sorted(defaults)}")
    return args


def kv_usage(doc: str, defaults: dict, helps: dict, width: int = 15) -> str:
    """``--help`` of a key=value tool: its docstring's recipes, then each argument with its
    default (none shown for a null default)."""
    lines = [doc.strip(), "", "arguments (key=value):"]
    for k, v in defaults.items():
        shown = "" if v is None else f" [default: {v}]"
        lines.append(f"  {k:<{width}} {helps[k]}{shown}")
    return "\n".join(lines)
