"""compare on worker processes (issue #15): the same runs as one after another, in the order asked."""
from __future__ import annotations

import json
import multiprocessing as mp
import threading

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.sim import ServerConfig
from ckptsim.sweep import simulate_many
from ckptsim.synth import generate
from ckptsim.trace import Trace, TraceHeader, save_trace

# the oracle and none share a shadow replay (they must land in one process); the rest stand alone
SPECS = ["none", "fifo", "oracle", "llama-server", "user-turn", "adaptive"]


def _trace(n: int = 300) -> Trace:
    return Trace(TraceHeader(name="agent-edit"), generate("agent-edit", n, 3))


@pytest.mark.parametrize("other_thread", [False, True], ids=["fork", "no-fork"])
def test_workers_give_the_serial_runs(other_thread):
    trace = _trace()
    cfg = ServerConfig(n_slots=2, ctx_checkpoints=4)
    done: list[int] = []
    # with another thread running (a notebook, a progress bar) forking is unsafe: the workers
    # are started fresh and sent the trace instead
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    if other_thread:
        t.start()
    try:
        parallel = simulate_many(trace, SPECS, cfg, None, jobs=2, on_progress=done.append)
    finally:
        stop.set()
    # forked before it returns, so a caller's progress-bar thread starts after the fork
    assert len(mp.active_children()) == 2
    got = dict(parallel)
    serial = dict(simulate_many(trace, SPECS, cfg, None, jobs=1))
    assert sorted(got) == list(range(len(SPECS)))
    for i, spec in enumerate(SPECS):
        assert got[i].policy == serial[i].policy
        assert got[i].summary() == serial[i].summary(), spec
        assert got[i].results.column("n_reprocessed").tolist() == serial[i].results.column("n_reprocessed").tolist()
    assert done == [len(trace)] * len(SPECS)


def test_cli_jobs_keep_the_order_and_figures(tmp_path):
    p = tmp_path / "t.jsonl"
    trace = _trace(200)
    save_trace(p, trace.header, trace)
    docs = []
    for jobs in ("1", "2"):
        r = CliRunner().invoke(app, ["compare", str(p), "--policies", ";".join(SPECS), "-j", jobs, "--json"])
        assert r.exit_code == 0, r.output
        docs.append(json.loads(r.stdout))
    assert [s["policy"].split(":")[0] for s in docs[1]["policies"]] == SPECS
    assert docs[0]["policies"] == docs[1]["policies"]
    bad = CliRunner().invoke(app, ["compare", str(p), "-j", "0"])
    assert bad.exit_code == 2 and "--jobs" in bad.output
