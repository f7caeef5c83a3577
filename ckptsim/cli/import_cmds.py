"""``ckptsim import SOURCE``: turn public agent traces into ckptsim traces."""
from __future__ import annotations

import typer

from ._app import app

import_app = typer.Typer(no_args_is_help=True, help="Import public agent traces as ckptsim traces.")
app.add_typer(import_app, name="import")

# Each source's commands live in their own module and register on ``import_app``.
for _mod in ("import_blocks_cmds", "import_swe_cmds"):
    try:
        __import__(f"{__package__}.{_mod}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__package__}.{_mod}":
            raise
