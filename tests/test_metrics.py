"""The metric table (metrics.METRIC_TABLE) is the one spelling of each run-level metric: its keys
are what ``summarize`` returns, its per-request columns exist and add up to the summary, and the
README's glossary lists every key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ckptsim.metrics import METRIC_TABLE, header, results_frame
from ckptsim.records import RequestResult
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import load_trace

REPO = Path(__file__).resolve().parents[1]


def _run():
    return simulate(load_trace(REPO / "traces" / "chat-edit.jsonl"), "llama-server",
                    ServerConfig(ctx_checkpoints=4, cache_ram_mib=1024))


def test_table_keys_are_the_summary_keys():
    s = _run().summary()
    assert set(s) - {"trace", "policy", "profile"} == set(METRIC_TABLE)


def test_per_request_columns_add_up_to_the_summary():
    run = _run()
    s, df = run.summary(), results_frame(run)
    fields = {f.name for f in dataclasses.fields(RequestResult)} | {"n_lost"}
    for key, m in METRIC_TABLE.items():
        if m.per_request:
            assert m.per_request in fields, key
    # sums (tokens, counts; seconds from milliseconds) and the counted restores
    for key in ("prompt_tokens", "reused_tokens", "reprocessed_tokens", "true_prefix_tokens", "created",
                "evicted", "invalidated", "full_reprocess"):
        assert s[key] == int(df[METRIC_TABLE[key].per_request].sum()), key
    assert s["lost_tokens"] == sum(r.n_lost for r in run.results)
    for key in ("prefill_s", "restore_s", "create_s"):
        assert abs(s[key] - df[METRIC_TABLE[key].per_request].sum() / 1000.0) < 1e-6, key
    assert s["restores"] == int((df["restored_n_tokens"] >= 0).sum()) > 0
    assert s["makespan_s"] == df["finish_s"].max()
    assert s["peak_ckpt_mib"] >= df["ckpt_mib_after"].max() > 0


def test_headers_are_distinct_and_fall_back_to_the_name():
    headers = [m.header for k, m in METRIC_TABLE.items()]
    assert len(set(headers)) == len(headers)
    assert header("ttft_p95_ms") == "TTFT p95" and header("ram_mib") == "ram_mib"


def test_readme_glossary_lists_every_metric():
    text = (REPO / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in METRIC_TABLE if f"`{k}`" not in section]
    assert not missing, missing


def test_results_record_the_cap_each_run_ran_under() -> None:
    # ctx_checkpoints is the flag a run was given; ckpt_cap what it ran under (policies.checkpoint_cap):
    # `none` keeps no checkpoint, a spec that pins its own cap keeps that one
    from ckptsim.metrics import summary_frame
    from ckptsim.sim import ServerConfig, simulate
    from ckptsim.trace import load_trace
    t = load_trace(Path(__file__).resolve().parents[1] / "traces" / "agent-edit.jsonl")
    cfg = ServerConfig(ctx_checkpoints=8)
    df = summary_frame([simulate(t, p, cfg) for p in ("none", "llama-server:ctx_checkpoints=4", "fifo")])
    assert list(df["ctx_checkpoints"]) == [8, 8, 8]
    assert list(df["ckpt_cap"]) == [0, 4, 8]
