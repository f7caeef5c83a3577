"""Architecture rules: the core imports no pandas/matplotlib/typer (design principle 8)."""
from __future__ import annotations

import subprocess
import sys

CORE = ["ckptsim.records", "ckptsim.trace", "ckptsim.cost", "ckptsim.server", "ckptsim.policies",
        "ckptsim.sim"]


def test_core_imports_no_pandas():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "bad = [m for m in ('pandas', 'matplotlib', 'typer') if m in sys.modules]\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
