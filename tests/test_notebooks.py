"""The notebooks run top to bottom on the bundled traces, and are committed without outputs."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TRACE = REPO / "traces" / "chat-edit.jsonl"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not TRACE.exists():
        pytest.skip("bundled traces/ not generated yet")
    monkeypatch.setenv("CKPTSIM_TRACE", str(TRACE))
    # The kernel's own default (ipykernel's inline backend), as a user's notebook gets it: a
    # backend forced anywhere (ckptsim.plots once forced Agg) would leave the figures unshown.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and "plots." in c.source
                    and "import" not in c.source]
    assert figure_cells, f"{path.name}: no figure cell found"
    for c in figure_cells:
        images = [o for o in c.outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
        assert images, f"{path.name}: figure cell shows no image: {c.source!r} -> {c.outputs}"
