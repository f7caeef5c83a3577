"""Simulator invariants checked against explicit token sequences (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings

from ckptsim.sim import ServerConfig, simulate
from strategies import materialise, token_lcp, traces


@settings(max_examples=80, deadline=None)
@given(traces(max_requests=10, max_len=3000, n_sessions=1))
def test_true_prefix_is_the_token_lcp_single_slot(trace):
    """With one slot and no prompt cache the slot holds the previous request's prompt + output[:-1]."""
    seqs = materialise(trace)
    run = simulate(trace, "llama-server", ServerConfig(n_slots=1, cache_ram_mib=0), None)
    prev = None
    for res in run.results:
        r = res.request_id
        prompt = seqs[r][:trace[r].n_prompt]
        state = [] if prev is None else seqs[prev][:trace[prev].n_prompt + max(trace[prev].n_output - 1, 0)]
        assert res.n_true_prefix == token_lcp(state, prompt)
        assert res.n_cached <= res.n_true_prefix
        prev = r


@settings(max_examples=40, deadline=None)
@given(traces(max_requests=10, max_len=3000, n_sessions=1))
def test_none_policy_is_never_better(trace):
    """Checkpoints can only help: 'none' re-processes at least as much as the server's own policy."""
    cfg = ServerConfig(n_slots=1, cache_ram_mib=0)
    none = simulate(trace, "none", cfg, None).summary()["reprocessed_tokens"]
    for spec in ("llama-server", "per-batch", "user-turn"):
        assert simulate(trace, spec, cfg, None).summary()["reprocessed_tokens"] <= none


@settings(max_examples=40, deadline=None)
@given(traces(max_requests=12, max_len=3000, n_sessions=3))
def test_slots_share_one_device(trace):
    """spec §9.3: prompt work (restore + prefill + creation) of different slots never overlaps in
    time; it starts no earlier than the slot took the request; one slot never waits on the device."""
    for n_slots in (1, 3):
        run = simulate(trace, "llama-server", ServerConfig(n_slots=n_slots, cache_ram_mib=0), None)
        spans = []
        for res in run.results:
            assert res.device_wait_ms >= 0
            begin = res.start_s + res.device_wait_ms / 1000.0
            spans.append((begin, begin + (res.restore_ms + res.prefill_ms + res.create_ms) / 1000.0))
            assert res.ttft_ms >= res.prefill_ms
        spans.sort()
        assert all(a_end <= b_start + 1e-9 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
        if n_slots == 1:
            assert all(res.device_wait_ms == 0 for res in run.results)
