"""Command-line interface: ``ckptsim COMMAND``. Each area's commands live in their own module."""
from __future__ import annotations

from ._app import app

# Importing a module registers its commands on ``app``.
from . import sim_cmds  # noqa: E402,F401

for _mod in ("synth_cmds", "logs_cmds", "live_cmds", "import_cmds", "analysis_cmds"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # an area not built yet
        if _e.name != f"{__name__}.{_mod}":
            raise


def main() -> None:
    """Console-script entry point."""
    app()
