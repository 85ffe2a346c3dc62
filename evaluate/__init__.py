"""Evaluation of distilled datasets: students trained on a distilled set with soft labels
from a frozen teacher (paper §3.5, §4.1, RDED's protocol), teacher training, and the
cross-architecture and sweep tables (`python -m evaluate`, `python -m evaluate.table`).

Not Hugging Face's `evaluate` library: see the README.
"""

import os as _os
from pathlib import Path as _Path

# Evaluate's config folder is conf/evaluate; the groups it shares with distill (data,
# trainer, logger, paths, hydra) are found through `hydra.searchpath: ${oc.env:DPD_CONF_DIR}`,
# this repository's conf/. Set on import so the CLI and Hydra's compose API both find them.
_os.environ.setdefault("DPD_CONF_DIR", str(_Path(__file__).resolve().parents[1] / "conf"))
