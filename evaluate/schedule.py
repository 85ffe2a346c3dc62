"""Learning-rate schedules as pure functions of the epoch: a resumed run needs no scheduler
state, and the protocol's arithmetic (RDED's half cosine) can be checked against its formula.
"""

from __future__ import annotations

import math

from distill.errors import ConfigError

SCHEDULES = ("rded_cosine", "cosine", "linear", "step", "constant")


def lr_factor(
    epoch: int,
    epochs: int,
    name: str,
    warmup: int = 0,
    warmup_start: float = 0.01,
    step_epochs: int = 30,
    gamma: float = 0.1,
) -> float:
    """Learning-rate multiplier of an epoch (0-based).

    ``rded_cosine`` is RDED's ``0.5 * (1 + cos(pi * e / epochs / 2))``: a quarter cosine
    period, so the rate ends at half its start, not at zero (RDED `validation/main.py`; the
    protocol behind the paper's numbers). ``cosine`` decays to zero; ``linear`` too; ``step``
    multiplies by ``gamma`` every ``step_epochs`` (torchvision's ImageNet reference recipe:
    x0.1 every 30 of 90 epochs). ``warmup`` epochs ramp linearly from ``warmup_start``
    (torchvision's recipe, used by SRe2L's Tiny-ImageNet teachers) before the main schedule
    starts.
    """
    if epoch < warmup:
        return warmup_start + (1.0 - warmup_start) * epoch / warmup
    e, n = epoch - warmup, max(1, epochs - warmup)
    if name == "rded_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * e / n / 2))
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * e / n))
    if name == "linear":
        return 1.0 - e / n
    if name == "step":
        return float(gamma) ** (e // max(1, int(step_epochs)))
    if name == "constant":
        return 1.0
    raise ConfigError(f"schedule.name={name!r}: use one of {', '.join(SCHEDULES)}")


def schedule_factor(schedule: dict, epoch: int, epochs: int) -> float:
    """`lr_factor` from a ``schedule`` config node (name, warmup_epochs, warmup_start,
    step_epochs, gamma; absent keys take RDED's defaults)."""
    return lr_factor(
        epoch,
        epochs,
        str(schedule.get("name", "rded_cosine")),
        int(schedule.get("warmup_epochs") or 0),
        float(schedule.get("warmup_start", 0.01)),
        int(schedule.get("step_epochs") or 30),
        float(schedule.get("gamma", 0.1)),
    )
