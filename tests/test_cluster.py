"""Sweeps on a Dask cluster (``--cluster``): rows equal the local run, traces travel once per
worker, and a cluster that cannot be used is one line with exit 2."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.sweep import expand, run_sweep

REPO = Path(__file__).resolve().parents[1]
TRACES = [REPO / "traces" / "chat-edit.jsonl", REPO / "traces" / "agent-append.jsonl"]
pytestmark = pytest.mark.skipif(not all(t.exists() for t in TRACES), reason="bundled traces/ not generated yet")


@pytest.fixture(scope="module")
def cluster_address():
    """A local cluster of two worker processes, one thread each (as `dask worker` would be)."""
    distributed = pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_cluster_rows_equal_the_local_run(cluster_address: str) -> None:
    """Two traces x three policies x two caps, `none` runs shared between caps: the same rows,
    in the same order, as local processes give (wall time aside)."""
    tasks = expand([str(t) for t in TRACES], ["none", "fifo", "llama-server"], [4, 32])
    local = run_sweep(tasks, jobs=1)
    remote = run_sweep(tasks, cluster=cluster_address)
    pd.testing.assert_frame_equal(local.drop(columns="wall_s"), remote.drop(columns="wall_s"))
    assert remote["reused"].sum() == 2        # `none` at cap 32 on each trace: the cap-4 run


def test_traces_reach_each_worker_once(cluster_address: str) -> None:
    """The trace a task gets is the object scattered to its worker, not a fresh copy per task:
    each worker counts the tasks it saw on one object, so some count passes 1, and the first
    sightings are at most one per worker and trace."""
    from ckptsim.cluster import run_on_cluster

    def work(task, trace, profile) -> dict:       # runs on the workers (pickled by value)
        import os
        trace._seen_by_test = getattr(trace, "_seen_by_test", 0) + 1
        return {"seen": trace._seen_by_test, "worker": os.getpid(), "trace": task.trace_path}

    runs = expand([str(t) for t in TRACES], ["fifo"], [1, 2, 3, 4, 5, 6, 7, 8])
    out = [r for _, r in run_on_cluster(runs, cluster_address, work, list(range(len(runs))))]
    assert len(out) == len(runs)
    firsts = [r for r in out if r["seen"] == 1]
    assert len(firsts) <= 2 * len(TRACES)
    assert len({(r["worker"], r["trace"]) for r in firsts}) == len(firsts)
    assert max(r["seen"] for r in out) > 1


def test_cli_sweep_on_the_cluster(cluster_address: str, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(app, ["sweep", str(TRACES[0]), "-p", "none;fifo", "--ctx-checkpoints", "4,8",
                                 "--cluster", cluster_address, "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert len(df) == 4 and df["reused"].sum() == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")
    import ckptsim.cluster
    monkeypatch.setattr(ckptsim.cluster, "CONNECT_TIMEOUT_S", 2)     # Dask retries a refused port until then
    addr = f"tcp://127.0.0.1:{_closed_port()}"
    for cmd in (["sweep", str(TRACES[0]), "-p", "fifo", "--ctx-checkpoints", "4", "-o", str(tmp_path / "a.csv")],
                ["recommend", str(TRACES[0])]):
        r = CliRunner().invoke(app, cmd + ["--cluster", addr])
        assert r.exit_code == 2, r.output
        assert addr in r.output and "dask scheduler" in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "a.csv").exists()


def test_bad_address_and_missing_dask_are_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both are refused before any work, with or without the extra installed."""
    base = ["sweep", str(TRACES[0]), "-p", "fifo", "--ctx-checkpoints", "4", "-o", str(tmp_path / "a.csv")]
    r = CliRunner().invoke(app, base + ["--cluster", "localhost"])
    assert r.exit_code == 2 and "tcp://HOST:PORT" in r.output and "Traceback" not in r.output
    monkeypatch.setitem(sys.modules, "distributed", None)       # import distributed -> ImportError
    r = CliRunner().invoke(app, base + ["--cluster", "tcp://127.0.0.1:8786"])
    assert r.exit_code == 2 and "ckptsim[cluster]" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
