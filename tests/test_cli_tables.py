"""Tables that fit (issue #13): compact in a narrow terminal, full when piped or with --wide, and
never a number cut ('4,218…'); the same metric carries the same label in every table."""
from __future__ import annotations

import io
import json
import re
import shlex

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ckptsim.cli import _tables, app
from ckptsim.cli._tables import Col, layout_for, show_table, wrap_text
from ckptsim.metrics import LABELS

runner = CliRunner()
LOG = "tests/data/logs/009_repo-qwen36-27b-mtp-docker-1slot-restore-erase-cycle.log"

COLS = [Col("policy", "policy", "policy", text=True),
        Col("reprocessed_tokens", "re-processed tokens", "re-proc tok", legend="re-processed prompt tokens"),
        Col("prefill_s", "prefill s", "prefill s"),
        Col("prompt_s", "prompt s (prefill+restore+create)", None),
        Col("ttft", "TTFT p95", "TTFT p95")]
ROWS = [{"policy": "llama-server:version=b11549,min_step=8192", "reprocessed_tokens": "4,218,377",
         "prefill_s": "2,812.8", "prompt_s": "2,830.1", "ttft": "1.5 min"},
        {"policy": "none", "reprocessed_tokens": "12,345,678", "prefill_s": "10,001.5", "prompt_s": "10,001.5",
         "ttft": "22.5 s"}]
NUMBERS = ["4,218,377", "2,812.8", "12,345,678", "10,001.5", "1.5 min", "22.5 s"]


def _render(width: int, terminal: bool = True, wide: bool = False) -> tuple[str, str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=terminal, color_system=None)
    layout = show_table("a title", COLS, ROWS, wide=wide, console=console)
    return layout, buf.getvalue()


def test_narrow_terminal_gets_the_compact_layout_with_a_legend() -> None:
    layout, text = _render(60)
    assert layout == "compact"
    assert all(len(line) <= 60 for line in text.splitlines()), text
    for n in NUMBERS:
        assert n in text, (n, text)
    assert "…" not in text
    # the column left out is named, and what a short header means is said
    assert "not shown: prompt s (prefill+restore+create)" in re.sub(r"\s+", " ", text)
    assert "re-proc tok: re-processed prompt tokens" in re.sub(r"\s+", " ", text)
    # the policy name wraps between its parameters, whole
    assert "min_step=8192" in text and "version=b11549," in text


def test_piped_output_and_wide_get_every_column_in_full() -> None:
    for layout, text in (_render(60, terminal=False), _render(60, terminal=True, wide=True)):
        assert layout == "full"
        assert "prompt s (prefill+restore+create)" in text and "re-processed tokens" in text
        assert "llama-server:version=b11549,min_step=8192" in text
        assert max(len(line) for line in text.splitlines()) > 60      # not cut to the console width
        assert "…" not in text and "not shown" not in text


def test_a_wide_terminal_gets_the_full_layout_and_a_tiny_one_the_stacked_layout() -> None:
    assert _render(200)[0] == "full"
    layout, text = _render(30)
    assert layout == "stacked"
    for n in NUMBERS:
        assert n in text, (n, text)
    assert "…" not in text


@pytest.mark.parametrize("text,width", [("llama-server:version=b11549,min_step=8192", 14),
                                        ("every-n:n=4096,end=1", 10), ("a, b, c", 3)])
def test_wrap_text_breaks_between_parameters(text: str, width: int) -> None:
    lines = wrap_text(text, width).split("\n")
    assert all(len(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    for number in re.findall(r"\d+", text):
        assert any(number in line for line in lines), (number, lines)


def test_layout_follows_the_terminal() -> None:
    assert layout_for(COLS, ROWS, None) == "full"         # piped
    assert layout_for(COLS, ROWS, 80, wide=True) == "full"
    assert layout_for(COLS, ROWS, 60) == "compact"


@pytest.fixture
def small_trace(tmp_path):
    p = tmp_path / "small.jsonl"
    r = runner.invoke(app, ["synth", "agent-edit", "-o", str(p), "--requests", "60", "--seed", "1"])
    assert r.exit_code == 0, r.output
    return p


def _commands(trace) -> dict[str, list[str]]:
    return {"simulate": ["simulate", str(trace)],
            "compare": ["compare", str(trace)],
            "sweep": ["sweep", str(trace), "-p", "llama-server;fifo", "--ctx-checkpoints", "4,32",
                      "-cms", "256,1024", "-o", str(trace.with_suffix(".csv")), "--force", "-j", "1"],
            "recommend": ["recommend", str(trace), "--version", "b10573", "--ram-mib", "4000", "-j", "1"],
            "validate": ["validate", LOG],
            "parse": ["parse", LOG]}


@pytest.mark.parametrize("cmd", ["simulate", "compare", "sweep", "recommend", "validate", "parse"])
def test_every_table_fits_80_columns_in_a_terminal(cmd, small_trace, monkeypatch) -> None:
    """The issue's case: in an 80-column terminal nothing is cut ('4,218…', 'llama…'); every table
    line fits, and every number of the piped (full) output appears whole in the terminal's."""
    args = _commands(small_trace)[cmd]
    piped = runner.invoke(app, args)
    assert piped.exit_code == 0, piped.output
    monkeypatch.setattr(_tables, "table_width", lambda console=None: 80)
    term = runner.invoke(app, args)
    assert term.exit_code == 0, term.output
    boxed = [line for line in term.stdout.splitlines() if line[:1] in "┏┃┡│└┌"]
    assert boxed and all(len(line) <= 80 for line in boxed), term.stdout
    assert "…" not in term.stdout
    piped_numbers, term_numbers = _table_numbers(piped.stdout), _table_numbers(term.stdout)
    # a number folded over two lines ('4,21' / '8,377') would be a number the full table lacks
    assert term_numbers and term_numbers <= piped_numbers, term_numbers - piped_numbers
    if cmd in ("simulate", "compare"):
        tokens = json.loads(runner.invoke(app, args + ["--json"]).stdout)
        first = tokens["summary"] if cmd == "simulate" else tokens["policies"][0]
        assert f"{first['reprocessed_tokens']:,}" in term.stdout


def _table_numbers(text: str) -> set[str]:
    found: set[str] = set()
    for line in text.splitlines():
        if line[:1] in "┃│":
            for cell in line.strip("┃│").split("│" if "│" in line else "┃"):
                found.update(re.findall(r"(?<![\w.,=])\d[\d,]*(?:\.\d+)?(?![\w.,])", cell))
    return found


def test_same_metric_same_label_everywhere(small_trace) -> None:
    """prefill s is prefill alone, prompt s is prefill + restore + create: the table headers,
    the CSV columns and the JSON keys name them the same way in compare, sweep and recommend."""
    out = small_trace.parent / "cmp"
    r = runner.invoke(app, ["compare", str(small_trace), "--policies", "none;llama-server", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert LABELS["prefill_s"][0] in r.stdout and LABELS["prompt_s"][0] in r.stdout
    doc = json.loads(runner.invoke(app, ["compare", str(small_trace), "--policies", "none;llama-server",
                                         "--json"]).stdout)
    for s in doc["policies"]:
        assert s["prompt_s"] == pytest.approx(s["prefill_s"] + s["restore_s"] + s["create_s"])
    header = (out / "compare.csv").read_text().splitlines()[0].split(",")
    assert {"prefill_s", "prompt_s"} <= set(header)
    sweep_csv = small_trace.with_suffix(".csv")
    r = runner.invoke(app, ["sweep", str(small_trace), "--ctx-checkpoints", "8", "-o", str(sweep_csv), "-j", "1"])
    assert r.exit_code == 0, r.output
    assert {"prefill_s", "prompt_s"} <= set(sweep_csv.read_text().splitlines()[0].split(","))
    r = runner.invoke(app, ["recommend", str(small_trace), "--version", "b10573", "-j", "1"])
    assert r.exit_code == 0, r.output
    assert "prompt time (prefill + restore + create)" in r.stdout
    assert LABELS["prompt_s"][0] in r.stdout


def test_a_recommendation_reruns_as_printed(small_trace) -> None:
    """recommend --json's flag line, pasted into simulate (whole, with --server-args, and flag by
    flag), gives recommend's numbers for that setting; so does the printed re-run command."""
    r = runner.invoke(app, ["recommend", str(small_trace), "--version", "b10573", "-np", "2",
                            "--ram-mib", "4000", "-j", "1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    line, claimed = doc["command_line"], doc["claimed"]
    assert "-kvu" in line.split()            # -np 2 with the shared KV cache the simulator assumes
    flags = shlex.split(line)[1:]
    policy = f"llama-server:version={doc['version']}"
    runs = {"server-args": ["simulate", str(small_trace), "--policy", policy, "--server-args", line, "--json"],
            "flags": ["simulate", str(small_trace), "--policy", policy, *flags, "--json"],
            "printed": shlex.split(doc["rerun"][0])[1:] + ["--json"]}
    for how, args in runs.items():
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (how, res.output)
        s = json.loads(res.stdout)["summary"]
        assert s["reprocessed_tokens"] == claimed["reprocessed_tokens"], how
        assert s["prompt_s"] == pytest.approx(claimed["prompt_s"]), how
        assert s["prefill_s"] == pytest.approx(claimed["prefill_s"]), how
        assert s["ttft_p95_ms"] == pytest.approx(claimed["ttft_p95_ms"]), how
