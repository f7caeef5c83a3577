"""recommend: the printed flag line, re-simulated, achieves what it claims, within the RAM limit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.recommend import TOLERANCE, Flags, default_flags, flags_from_command_line, ram_needed_mib, recommend
from ckptsim.sim import simulate
from ckptsim.trace import load_trace

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "chat-edit.jsonl"
pytestmark = pytest.mark.skipif(not TRACE.exists(), reason="bundled traces/ not generated yet")
GRID = dict(ctx_grid=(0, 4, 16, 32), spacing_grid=(1024, 8192), ram_grid=(0, 2048, 8192))


def _resimulate(line: str, version: str) -> dict:
    config, spec = flags_from_command_line(line, version)
    s = simulate(load_trace(TRACE), spec, config).summary()
    s["prompt_s"] = s["prefill_s"] + s["restore_s"] + s["create_s"]
    return s


def test_flag_line_reproduces_the_claim() -> None:
    """The issue's acceptance check: parse the printed line, simulate it, get the claimed cost."""
    rec = recommend([TRACE], version="b10573", ram_mib=3000, jobs=1, **GRID)
    got = _resimulate(rec.command_line, rec.version)
    assert got["reprocessed_tokens"] == rec.claimed["reprocessed_tokens"]
    assert got["prompt_s"] == pytest.approx(rec.claimed["prompt_s"])
    assert rec.claimed["ram_mib"] <= 3000
    assert ram_needed_mib(rec.best, 1, rec.ckpt_mib) <= 3000
    # never worse than the defaults' cost when the defaults fit; brackets: bound <= oracle
    assert rec.bound["reprocessed_tokens"] <= rec.oracle["reprocessed_tokens"]
    assert rec.bound["prefill_s"] <= rec.claimed["prefill_s"]


def test_defaults_and_pareto() -> None:
    """Without a limit the choice is at least as good as the defaults; the Pareto table is monotone."""
    rec = recommend([TRACE], version="b10573", jobs=1, **GRID)
    assert rec.claimed["prompt_s"] <= rec.defaults["prompt_s"] * (1 + TOLERANCE) + 1e-9
    mem, cost = rec.pareto["ram_mib"].tolist(), rec.pareto["prompt_s"].tolist()
    assert mem == sorted(mem) and cost == sorted(cost, reverse=True)
    assert rec.best.ctx_checkpoints in (0, 4, 16, 32)


def test_default_flags_follow_the_build() -> None:
    """spec §8: 8 checkpoints before b8232, 32 after; min-step 256 at b9315, 8192 from b9775."""
    assert default_flags("b8000").ctx_checkpoints == 8 and default_flags("b8000").min_step is None
    assert default_flags("b9400").min_step == 256
    assert default_flags("b10573") == Flags(32, 8192.0, min_step=8192)
    cfg, spec = flags_from_command_line("llama-server -np 2 --ctx-checkpoints 4 --cache-ram 0", "b10573")
    assert (cfg.n_slots, cfg.ctx_checkpoints, cfg.cache_ram_mib) == (2, 4, 0.0)
    assert spec == "llama-server:version=b10573,min_step=8192"
    with pytest.raises(ValueError, match="--bogus"):
        flags_from_command_line("llama-server --bogus 3", "b10573")


def test_cli_json_is_one_document_and_line_reproduces() -> None:
    r = CliRunner().invoke(app, ["recommend", str(TRACE), "--version", "b10573", "--ram-mib", "4000",
                                 "--json", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["command_line"].startswith("llama-server ")
    got = _resimulate(doc["command_line"], doc["version"])
    assert got["reprocessed_tokens"] == doc["claimed"]["reprocessed_tokens"]
    assert {"pareto", "alternatives", "oracle", "bound", "gain_vs_defaults"} <= set(doc)


def test_cli_rejects_bad_input() -> None:
    r = CliRunner().invoke(app, ["recommend", str(TRACE), "--version", "banana"])
    assert r.exit_code == 2 and "banana" in r.output
    r = CliRunner().invoke(app, ["recommend", str(TRACE), "--queue", "fifo"])
    assert r.exit_code == 2 and "--queue must be arrival or ready" in r.output


def test_queue_ready_claim_is_simulated_in_ready_order() -> None:
    """recommend --queue ready searches and claims under the server's task-queue order: the flag
    line re-simulated in that order gives the claim, on concurrent closed-loop sessions where the
    two orders differ."""
    import dataclasses
    multi = REPO / "traces" / "multi-session.jsonl"
    r = CliRunner().invoke(app, ["recommend", str(multi), "--version", "b10573", "-np", "2", "--queue", "ready",
                                 "--json", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    config, spec = flags_from_command_line(doc["command_line"], doc["version"])
    trace = load_trace(multi)
    ready = simulate(trace, spec, dataclasses.replace(config, arrival_order=False)).summary()
    arrival = simulate(trace, spec, config).summary()
    assert ready["reprocessed_tokens"] == doc["claimed"]["reprocessed_tokens"]
    assert arrival["ttft_p95_ms"] != ready["ttft_p95_ms"]


def test_slot_count_is_searched_too() -> None:
    """-np 1,4 on concurrent sessions: the winner is the best row, and its flag line (with its -np)
    re-simulates to the claimed cost."""
    from ckptsim.recommend import recommend_over_slots
    multi = REPO / "traces" / "multi-session.jsonl"
    rec, rows = recommend_over_slots([multi], [1, 4], version="b10573", ram_mib=8000, jobs=1,
                                     objective="p95", **GRID)
    assert [r["n_slots"] for r in rows] == [1, 4]
    assert rec.claimed["ttft_p95_ms"] <= min(r["ttft_p95_ms"] for r in rows) * (1 + TOLERANCE)
    assert f"-np {rec.n_slots} " in rec.command_line
    config, spec = flags_from_command_line(rec.command_line, rec.version)
    assert config.n_slots == rec.n_slots
    s = simulate(load_trace(multi), spec, config).summary()
    assert s["reprocessed_tokens"] == rec.claimed["reprocessed_tokens"]


def _profile_with(tmp_path: Path, **costs) -> str:
    """The default profile with some prefill costs replaced, written as a profile file."""
    import dataclasses

    from ckptsim.cost import load_profile
    prof = dataclasses.replace(load_profile(None), name="test-profile", **costs)
    path = tmp_path / "test-profile.json"
    path.write_text(json.dumps(prof.to_json()))
    return str(path)


def test_batch_sizes_follow_a_per_ubatch_cost(tmp_path) -> None:
    """With 40 ms per ubatch (a GPU streaming its weights once per ubatch), -ub 512 pays 4x the
    ubatches of -ub 2048 on every 2048-token batch: the search must leave the default for a
    larger -ub, and the printed line must re-simulate to the claim (with that profile)."""
    prof = _profile_with(tmp_path, prefill_ms_per_ubatch=40.0)
    rec = recommend([TRACE], version="b10573", profile=prof, jobs=1, **GRID)
    assert rec.best.n_ubatch >= 1024
    by_ub = {(r["n_batch"], r["n_ubatch"]): r["prompt_s"] for r in rec.batch_sizes}
    assert by_ub[(rec.best.n_batch, rec.best.n_ubatch)] < by_ub[(2048, 512)] * (1 - TOLERANCE)
    assert f"-ub {rec.best.n_ubatch}" in rec.command_line
    config, spec = flags_from_command_line(rec.command_line, rec.version)
    assert (config.n_batch, config.n_ubatch) == (rec.best.n_batch, rec.best.n_ubatch)
    s = simulate(load_trace(TRACE), spec, config, prof).summary()
    assert s["prefill_s"] + s["restore_s"] + s["create_s"] == pytest.approx(rec.claimed["prompt_s"])


def test_batch_sizes_stay_at_the_default_without_evidence(tmp_path) -> None:
    """No checkpoints (50 MiB of RAM holds none of 62.8 MiB, so placement cannot matter) and no
    per-batch/ubatch cost: every pair costs the same, so the server default -b 2048 -ub 512 stays,
    and a note says what was not measured."""
    prof = _profile_with(tmp_path, prefill_ms_per_batch=0.0, prefill_ms_per_ubatch=0.0)
    rec = recommend([TRACE], version="b10573", profile=prof, ram_mib=50, jobs=1, ctx_grid=(0, 4),
                    spacing_grid=(8192,), ram_grid=(0,))
    assert rec.best.ctx_checkpoints == 0
    assert (rec.best.n_batch, rec.best.n_ubatch) == (2048, 512)
    assert len({round(r["prompt_s"], 9) for r in rec.batch_sizes}) == 1
    assert any("no per-ubatch cost" in n for n in rec.notes)
