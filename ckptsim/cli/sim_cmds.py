"""``ckptsim simulate``, ``compare`` and ``demo``."""
from __future__ import annotations

from ._app import app  # noqa: F401  (commands are added below as the simulator lands)
