"""CLI: simulate / compare / demo / policies, as a user runs them."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.records import Request
from ckptsim.trace import TraceHeader, save_trace

runner = CliRunner()


@pytest.fixture
def edit_trace(tmp_path):
    """Three turns: extend, then an edit that rolls back into the middle of the context."""
    reqs = [Request(0, "s", 0.0, 20000, 100, user_starts=(0,)),
            Request(1, "s", 1.0, 25000, 100, 0, 20100, (0, 20100)),
            Request(2, "s", 2.0, 22000, 100, 1, 21000, (0, 20100))]
    p = tmp_path / "edit.jsonl"
    save_trace(p, TraceHeader(name="edit"), reqs)
    return p


def test_simulate_json(edit_trace):
    r = runner.invoke(app, ["simulate", str(edit_trace), "--policy", "none", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    s = doc["summary"]
    # by hand: request 0 cold (20000), request 1 extends the 20099 cached tokens (4901),
    # request 2 has no checkpoint => full re-processing (22000)
    assert s["reprocessed_tokens"] == 20000 + 4901 + 22000
    assert s["full_reprocess"] == 1


def test_simulate_server_restores_user_checkpoint(edit_trace):
    r = runner.invoke(app, ["simulate", str(edit_trace), "--json"])
    s = json.loads(r.stdout)["summary"]
    # the current server checkpoints the user start at 20100 and restores it for request 2
    assert s["restores"] == 1
    assert s["reprocessed_tokens"] == 20000 + 4901 + (22000 - 20100)


def test_compare_writes_outputs_and_refuses_overwrite(edit_trace, tmp_path):
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(edit_trace), "--policies", "none,fifo,every-n:n=1000,end=1",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    names = [p["policy"] for p in doc["policies"]]
    assert names[0] == "none" and names[2].startswith("every-n:n=1000")
    assert (out / "compare.csv").exists() and (out / "compare.png").stat().st_size > 1000
    # the proven bound (docs/oracle.md) keeps at most each request's common prefix with any earlier
    # sequence: 0, then 20100 of 25000 (the bound ignores that the cache lacks the last output
    # token), then 21000 of 22000
    assert doc["lower_bound"]["reprocessed_tokens"] == 20000 + (25000 - 20100) + (22000 - 21000)
    r2 = runner.invoke(app, ["compare", str(edit_trace), "--policies", "none", "--out", str(out)])
    assert r2.exit_code == 2 and "exists" in r2.output


def test_queue_ready_lets_a_waiting_session_be_overtaken(tmp_path):
    """--queue ready: session a's second request (sent at 0.1 s, but only after its first answer,
    2000 tokens of generation later) is served after b's, which arrived at 1 s; --queue arrival
    (the default) keeps the trace's order."""
    reqs = [Request(0, "a", 0.0, 1000, 2000), Request(1, "a", 0.1, 1000, 1), Request(2, "b", 1.0, 1000, 1)]
    p = tmp_path / "q.jsonl"
    save_trace(p, TraceHeader(name="q"), reqs)
    starts = {}
    for queue in ("arrival", "ready"):
        per = tmp_path / f"{queue}.csv"
        r = runner.invoke(app, ["simulate", str(p), "--policy", "none", "--queue", queue,
                                "--per-request", str(per), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["config"]["arrival_order"] is (queue == "arrival")
        import pandas as pd
        df = pd.read_csv(per).set_index("request_id")
        starts[queue] = df["start_s"].to_dict()
    assert starts["arrival"][1] < starts["arrival"][2]
    assert starts["ready"][2] < starts["ready"][1]


@pytest.mark.parametrize("args,msg", [
    (["simulate", "missing.jsonl"], "no such file"),
    (["simulate", "{trace}", "--policy", "bogus"], "unknown policy"),
    (["simulate", "{trace}", "--queue", "lifo"], "--queue must be arrival or ready"),
])
def test_errors_are_one_line(edit_trace, args, msg):
    args = [a.replace("{trace}", str(edit_trace)) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert msg in r.output and "Traceback" not in r.output


def test_bad_trace_line_number(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"schema":"ckptsim-trace","version":1}\n{"id":0}\n')
    r = runner.invoke(app, ["simulate", str(p)])
    assert r.exit_code == 2 and "bad.jsonl:2:" in r.output


def test_policies_lists_registry():
    r = runner.invoke(app, ["policies", "--json"])
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"none", "fifo", "per-batch", "every-n", "coverage", "user-turn", "llama-server"} <= names


def test_compare_adds_the_build_a_log_came_from(tmp_path):
    """A trace parsed from a log (header meta "build") is compared against that server build too."""
    p = tmp_path / "fromlog.jsonl"
    save_trace(p, TraceHeader(name="log", meta={"build": 9161}), [Request(0, "s", 0.0, 5000, 10)])
    r = runner.invoke(app, ["compare", str(p), "--json"])
    names = [s["policy"] for s in json.loads(r.stdout)["policies"]]
    assert any(n.startswith("llama-server:version=b9161") for n in names)


def test_demo_runs_the_quick_start(tmp_path):
    """README's quick start: `ckptsim demo` compares every default policy on the bundled trace and
    writes the CSV and PNG; no policy beats the proven lower bound."""
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    names = [p["policy"] for p in doc["policies"]]
    assert "none" in names and any(n.startswith("llama-server") for n in names)
    assert all(p["reprocessed_tokens"] >= doc["lower_bound"]["reprocessed_tokens"] for p in doc["policies"])
    assert (out / "compare.csv").exists() and (out / "compare.png").stat().st_size > 1000
    # run again, as a user re-running the quick start would: the first run's files stay as they were
    first = (out / "compare.csv").read_bytes()
    (out / "compare.csv").write_bytes(first + b"# kept\n")
    r = runner.invoke(app, ["demo", "--out", str(out)])
    assert r.exit_code == 0 and (out / "compare.csv").read_bytes().endswith(b"# kept\n")
    assert (tmp_path / "demo-2" / "compare.csv").exists() and "demo-2" in r.output


@pytest.mark.parametrize("ms,text", [(4.25, "4.2 ms"), (850.4, "850 ms"), (12_340.0, "12.3 s"),
                                     (420_000.0, "7.0 min"), (153_050_458.0, "42.5 h"),
                                     (float("nan"), "-"), (None, "-")])
def test_format_ms_human_units(ms, text):
    from ckptsim.metrics import format_ms
    assert format_ms(ms) == text


def test_tables_show_ttft_in_human_units_json_keeps_ms(edit_trace):
    """A p95 TTFT of minutes printed as '153,050,458' ms on big traces; the tables now read
    '1.5 min' etc., while --json keeps the raw milliseconds."""
    from ckptsim.metrics import format_ms
    doc = json.loads(runner.invoke(app, ["simulate", str(edit_trace), "--policy", "none", "--json"]).stdout)
    ms = doc["summary"]["ttft_p95_ms"]
    assert isinstance(ms, float) and ms > 1000
    r = runner.invoke(app, ["simulate", str(edit_trace), "--policy", "none"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "TTFT p95" in r.stdout and format_ms(ms) in r.stdout and f"{ms:,.1f}" not in r.stdout
    r = runner.invoke(app, ["compare", str(edit_trace), "--policies", "none;fifo"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert format_ms(ms) in r.stdout and f"{ms:,.1f}" not in r.stdout
