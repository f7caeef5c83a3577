"""Time in the simulator: slots share one device for prompt work (spec §9.3), decoding does not."""
from __future__ import annotations

import dataclasses

import pytest

from ckptsim.cost import load_profile
from ckptsim.records import Request
from ckptsim.server import batch_counts
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import Trace, TraceHeader

PROF = load_profile(None)
CFG = ServerConfig(n_slots=2, ctx_checkpoints=0, cache_ram_mib=0)


def _cold_ms(n: int) -> float:
    return PROF.prefill_ms(0, n, *batch_counts(0, n, CFG.eff_n_batch, CFG.eff_n_ubatch))


def test_two_cold_prompts_at_once_take_turns_on_the_device() -> None:
    """Two 10k-token prompts arrive together on two idle slots: the second's first token comes
    after both prefills (2 x one prefill), not after one as if each slot had its own GPU."""
    reqs = [Request(0, "a", 0.0, 10_000, 1), Request(1, "b", 0.0, 10_000, 1)]
    run = simulate(Trace(TraceHeader(name="two"), reqs), "none", CFG)
    first, second = sorted(run.results, key=lambda r: r.ttft_ms)
    assert {first.slot, second.slot} == {0, 1}
    assert first.ttft_ms == pytest.approx(_cold_ms(10_000))
    assert second.device_wait_ms == pytest.approx(_cold_ms(10_000))
    assert second.ttft_ms == pytest.approx(2 * _cold_ms(10_000))


def test_decoding_does_not_hold_the_device() -> None:
    """Request 0 prefills 1000 tokens, then generates 2000; request 1 arrives on the other slot
    just after 0's prefill and starts at once (decode steps batch with it), while request 2,
    arriving during 1's prefill, waits for the rest of it."""
    w = _cold_ms(1_000) / 1000.0
    reqs = [Request(0, "a", 0.0, 1_000, 2_000), Request(1, "b", w + 0.01, 1_000, 1),
            Request(2, "c", w + 0.02, 1_000, 1)]
    run = simulate(Trace(TraceHeader(name="decode"), reqs), "none",
                   ServerConfig(n_slots=3, ctx_checkpoints=0, cache_ram_mib=0))
    res = {r.request_id: r for r in run.results}
    assert res[0].finish_s - res[0].start_s > 10 * w        # still decoding when 1 and 2 arrive
    assert res[1].device_wait_ms == 0 and res[1].ttft_ms == pytest.approx(_cold_ms(1_000))
    assert res[2].device_wait_ms == pytest.approx(_cold_ms(1_000) - 10.0)


def _session_wait_trace() -> Trace:
    """Session a sends request 0 (1000 tokens, 2000 generated) and request 1, which its agent can
    only send after 0's answer; session b's request 2 arrives while 0 is still generating."""
    w = _cold_ms(1_000) / 1000.0
    return Trace(TraceHeader(name="wait"), [Request(0, "a", 0.0, 1_000, 2_000), Request(1, "a", 0.1, 1_000, 1),
                                            Request(2, "b", 2 * w, 1_000, 1)])


def test_a_session_waiting_for_its_answer_does_not_hold_a_slot() -> None:
    """Two slots, served in ready order: request 2 takes the idle slot at once; request 1 starts
    when 0 has finished. In arrival order (the default) 1 keeps its place and, started at 0's
    finish, holds the second slot from the start, so 2 waits for it: the stated artefact."""
    ready = dataclasses.replace(CFG, arrival_order=False)
    res = {r.request_id: r for r in simulate(_session_wait_trace(), "none", ready).results}
    assert res[2].start_s == pytest.approx(res[2].arrival_s) and res[2].ttft_ms == pytest.approx(_cold_ms(1_000))
    assert res[1].start_s == pytest.approx(res[0].finish_s)
    res = {r.request_id: r for r in simulate(_session_wait_trace(), "none", CFG).results}
    assert res[1].start_s == pytest.approx(res[0].finish_s) and res[2].start_s >= res[1].start_s


def test_one_slot_serves_in_the_order_requests_became_ready() -> None:
    """One slot: request 2 has waited since its arrival, request 1 only since 0 finished, so the
    server's queue gives the slot to 2 first; arrival_order=True (the default, and a log of this
    server replays so) keeps the trace's order instead."""
    one = ServerConfig(n_slots=1, ctx_checkpoints=0, cache_ram_mib=0, arrival_order=False)
    res = {r.request_id: r for r in simulate(_session_wait_trace(), "none", one).results}
    assert res[2].start_s == pytest.approx(res[0].finish_s) and res[1].start_s == pytest.approx(res[2].finish_s)
    keep = dataclasses.replace(one, arrival_order=True)
    res = {r.request_id: r for r in simulate(_session_wait_trace(), "none", keep).results}
    assert res[1].start_s == pytest.approx(res[0].finish_s) and res[2].start_s == pytest.approx(res[1].finish_s)
