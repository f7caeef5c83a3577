"""Bad input to any command: one line naming the file, exit code 2, never a traceback."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app

runner = CliRunner()


@pytest.fixture
def garbage(tmp_path):
    p = tmp_path / "garbage.bin"
    p.write_bytes(bytes(range(256)) * 8)
    return p


@pytest.fixture
def bad_trace(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"schema":"ckptsim-trace","version":1}\n{"id":0,"session":"s","t":0,"n_prompt":5}\n')
    return p


@pytest.mark.parametrize("args", [
    ["simulate", "{g}"], ["compare", "{g}"], ["recommend", "{g}"], ["sweep", "{g}", "-o", "{tmp}/s.csv"],
    ["parse", "{g}", "-o", "{tmp}/t.jsonl"], ["validate", "{g}"],
    ["import", "weka", "{g}", "-o", "{tmp}/w.jsonl"], ["import", "mooncake", "{g}", "-o", "{tmp}/m.jsonl"],
])
def test_binary_garbage(garbage, tmp_path, args):
    r = runner.invoke(app, [a.replace("{g}", str(garbage)).replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 2, r.output
    assert "garbage.bin" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("cmd", [["sweep", "{t}", "-o", "{tmp}/s.csv"], ["report", "{t}", "--out", "{tmp}/r"],
                                 ["simulate", "{t}"]])
def test_bad_trace_line_reaches_the_user(bad_trace, tmp_path, cmd):
    """Worker processes (sweep) or plotting (report) never see an invalid trace."""
    r = runner.invoke(app, [a.replace("{t}", str(bad_trace)).replace("{tmp}", str(tmp_path)) for a in cmd])
    assert r.exit_code == 2 and "bad.jsonl:2: missing field(s) n_output" in r.output


def test_validate_refuses_a_file_with_no_task(tmp_path):
    """A start-up excerpt (settings only, like corpus log 017) has no decision to compare."""
    p = tmp_path / "startup.log"
    p.write_text("srv          init: context checkpoints enabled, max = 8, min spacing = 256\n")
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2 and "nothing to validate" in r.output
