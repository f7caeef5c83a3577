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


DEMO = "ckptsim/data/demo.jsonl"


def _lines(output: str) -> list[str]:
    return [x for x in output.splitlines() if x.strip()]


def _refused(args: list[str], value: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1, r.output
    assert value in lines[0] and "Traceback" not in r.output, r.output


@pytest.fixture
def demo():
    from ckptsim.cli.sim_cmds import demo_trace_path
    return str(demo_trace_path())


@pytest.mark.parametrize("cmd", [
    ["simulate", "{t}"], ["compare", "{t}"], ["sweep", "{t}", "-o", "{tmp}/s.csv"],
    ["report", "{t}", "--out", "{tmp}/r"], ["validate", "{tmp}/x.log"], ["serve-tiny"],
    ["calibrate", "-o", "{tmp}/p.json", "--refit"],
])
@pytest.mark.parametrize("value", ["-5", "-0.5", "-2"])
def test_bad_cache_ram(demo, tmp_path, cmd, value):
    """Only -1 (unlimited), 0 (off) or a positive MiB value; ints only where the flag is an int."""
    if cmd[0] in ("serve-tiny", "calibrate") and "." in value:
        value = "-3"
    args = [a.replace("{t}", demo).replace("{tmp}", str(tmp_path)) for a in cmd]
    _refused(args + ["--cache-ram", value], value)


@pytest.mark.parametrize("args,value", [
    (["simulate", "{t}", "--ckpt-budget-mib", "-1"], "-1"),
    (["compare", "{t}", "--ckpt-budget-mib", "-1"], "-1"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "-j", "0"], "0"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "-j", "-2"], "-2"),
    (["recommend", "{t}", "-j", "0"], "0"),
    (["recommend", "{t}", "-j", "-2"], "-2"),
    (["report", "{t}", "--out", "{tmp}/r", "-j", "0"], "0"),
    (["report", "{t}", "--out", "{tmp}/r", "-j", "-2"], "-2"),
    (["simulate", "{t}", "-p", "fifo:offset=-5"], "offset=-5"),
    (["compare", "{t}", "--policies", "none,fifo:offset=-5"], "offset=-5"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "-p", "every-n:n=0"], "n=0"),
    (["report", "{t}", "--out", "{tmp}/r", "--policies", "user-turn:tools=-1"], "tools=-1"),
    (["simulate", "{t}", "-p", "llama-server:every_n=-7"], "every_n=-7"),
    (["simulate", "{t}", "-p", "every-n:n=-1+fifo"], "n=-1"),
    (["simulate", "{t}", "-ub", "4096"], "-ub 4096"),
    (["simulate", "{t}", "-b", "256", "-ub", "512"], "-ub 512"),
    (["compare", "{t}", "-b", "256", "-ub", "512"], "-ub 512"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "-b", "256", "-ub", "512"], "-ub 512"),
    (["validate", "{tmp}/x.log", "-b", "256", "-ub", "512"], "-ub 512"),
    (["serve-tiny", "-b", "256", "-ub", "512"], "-ub 512"),
    (["calibrate", "-o", "{tmp}/p.json", "--refit", "-b", "256", "-ub", "512"], "-ub 512"),
    (["simulate", "{t}", "-b", "0"], "-b 0"),
    (["validate", "{tmp}/x.log", "--min-agreement", "-1"], "-1"),
    (["validate", "{tmp}/x.log", "--min-agreement", "2"], "2"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "--ctx-checkpoints", ""], "''"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "--cache-ram", ","], "','"),
    (["report", "{t}", "--out", "{tmp}/r", "--ctx-checkpoints", ""], "''"),
    (["recommend", "{t}", "--ram-mib", "0"], "--ram-mib 0"),
    (["recommend", "{t}", "--ram-mib", "-3"], "--ram-mib -3"),
    (["simulate", "{t}", "--profile", "{tmp}/nope.json"], "nope.json"),
    (["simulate", "{t}", "--profile", "{tmp}"], "is a directory"),
    (["sweep", "{t}", "-o", "{tmp}/s.csv", "--profile", "{tmp}/nope.json"], "nope.json"),
    (["recommend", "{t}", "--profile", "{tmp}/nope.json"], "nope.json"),
    (["validate", "{tmp}/x.log", "--profile", "{tmp}/nope.json"], "nope.json"),
    (["simulate", "{t}", "--profile", "no-such-profile"], "no-such-profile"),
])
def test_bad_value_is_refused(demo, tmp_path, args, value):
    """Exit 2 and one line naming the value; never a traceback, never silently accepted."""
    _refused([a.replace("{t}", demo).replace("{tmp}", str(tmp_path)) for a in args],
             value.replace("{tmp}", str(tmp_path)))


def test_profile_file_that_cannot_be_read_says_so(demo, tmp_path):
    r = runner.invoke(app, ["simulate", demo, "--profile", str(tmp_path / "gone.json")])
    assert r.exit_code == 2 and "cannot be read" in r.output and "unknown profile" not in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = runner.invoke(app, ["simulate", demo, "--profile", str(bad)])
    assert r.exit_code == 2 and "bad.json: not JSON" in r.output


def test_a_directory_is_a_sentence_not_errno(tmp_path):
    r = runner.invoke(app, ["simulate", str(tmp_path)])
    assert r.exit_code == 2
    assert _lines(r.output) == [f"error: {tmp_path}: is a directory, not a file"]
    assert "Errno" not in r.output


def test_brackets_survive_rich_markup(monkeypatch, tmp_path):
    """"pip install 'ckptsim[live]'" must reach the user with its brackets."""
    import sys
    monkeypatch.setitem(sys.modules, "gguf", None)     # import gguf fails
    r = runner.invoke(app, ["make-model", "-o", str(tmp_path / "m.gguf")])
    assert r.exit_code == 2 and "ckptsim[live]" in r.output, r.output


@pytest.mark.parametrize("args", [["--cache-ram", "-1"], ["--cache-ram", "0"], ["-b", "512", "-ub", "512"],
                                  ["-p", "llama-server:min_step=-1"], ["-p", "fifo:offset=16"],
                                  ["--ckpt-budget-mib", "0"]])
def test_edge_values_still_accepted(demo, args):
    r = runner.invoke(app, ["simulate", demo, "--json", *args])
    assert r.exit_code == 0, r.output
