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
