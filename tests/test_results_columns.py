"""A run's results as columns (records.Results) and its events as tuples (records.Events): the
rows they give back, and the summary computed from the columns."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptsim.records import RESULT_FIELDS, Event, EventKind, RequestResult, Results
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import load_trace

TRACE = Path(__file__).resolve().parents[1] / "traces" / "multi-session.jsonl"


def _run(spec: str = "llama-server", **cfg):
    return simulate(load_trace(TRACE), spec, ServerConfig(**cfg), None)


def test_rows_round_trip_through_columns():
    run = _run(n_slots=3)
    rows = list(run.results)
    assert all(isinstance(r, RequestResult) for r in rows)
    assert len(rows) == len(run.results) == 600
    again = Results.from_rows(rows)
    assert again == run.results and list(again) == rows
    assert run.results[5] == rows[5] and run.results[-1] == rows[-1]
    assert run.results[10:20] == rows[10:20] and run.results[::7] == rows[::7]
    for k in RESULT_FIELDS:
        col = run.results.column(k)
        assert len(col) == 600
        assert [getattr(r, k) for r in rows] == (list(col) if k in ("session", "created_at") else col.tolist())
    assert run.results.column("n_reprocessed").tolist() == [r.n_prompt - r.n_cached for r in rows]
    assert isinstance(rows[0].n_prompt, int) and isinstance(rows[0].ttft_ms, float)
    assert isinstance(rows[0].full_reprocess, bool)


def test_summary_from_columns_equals_the_sums_over_rows():
    run = _run(n_slots=2, cache_ram_mib=1024)
    s, rows = run.summary(), list(run.results)
    assert s["prefill_s"] == sum(r.prefill_ms for r in rows) / 1000.0        # same order of additions
    assert s["prompt_s"] == sum(r.prefill_ms + r.restore_ms + r.create_ms for r in rows) / 1000.0
    assert s["lost_tokens"] == sum(r.n_lost for r in rows)
    assert s["makespan_s"] == max(r.finish_s for r in rows)
    assert s["ttft_p95_ms"] == float(np.percentile([r.ttft_ms for r in rows], 95))
    assert s["cache_loads"] == sum(1 for e in run.events if e.kind == EventKind.CACHE_LOAD) > 0


def test_events_are_records_and_loads_count_without_them():
    run = _run(n_slots=2, cache_ram_mib=1024)
    evs = list(run.events)
    assert all(isinstance(e, Event) for e in evs) and len(evs) == len(run.events)
    assert run.events[0] == evs[0] and run.events[3:9] == evs[3:9]
    assert run.events.count_kind(EventKind.CREATED) == sum(1 for e in evs if e.kind == EventKind.CREATED)
    quiet = simulate(load_trace(TRACE), "llama-server", ServerConfig(n_slots=2, cache_ram_mib=1024), None,
                     record_events=False)
    assert len(quiet.events) == 0
    assert quiet.results == run.results
    assert quiet.summary() == run.summary()         # cache loads are counted, not read off events


def test_empty_trace_run():
    from ckptsim.trace import Trace, TraceHeader
    run = simulate(Trace(TraceHeader(name="empty"), []), "fifo", ServerConfig(), None)
    assert len(run.results) == 0 and list(run.results) == []
    s = run.summary()
    assert s["n_requests"] == 0 and s["makespan_s"] == 0.0 and s["prefill_s"] == 0.0
