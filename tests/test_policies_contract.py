"""Contract suite: every policy in the registry obeys the simulator's invariants."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsim.policies import POLICIES, Checkpoint, PrefillView, make_policy
from ckptsim.records import EventKind
from ckptsim.sim import ServerConfig, simulate
from strategies import materialise, token_lcp, traces


def _specs() -> list[str]:
    specs = sorted(POLICIES)
    specs += ["llama-server:version=b6700", "llama-server:version=b7000", "llama-server:version=b8000",
              "llama-server:version=b8300", "llama-server:version=b9300", "llama-server:version=b9500",
              "llama-server:version=b9800", "llama-server:version=b9950", "llama-server:version=b9985",
              "every-n:n=512+coverage", "user-turn+llama-server", "per-batch+fifo", "oracle+fifo",
              # the field's policies with grids small enough for these traces' prompts to hit
              "vllm-all:block=64", "vllm-all:block=64,retention=256", "vllm-align:block=64,budget=256",
              "vllm-align:block=64,retention=0,shared=1,unit=16", "sglang-no-buffer:chunk=512",
              "sglang-extra-buffer:chunk=512,interval=64,grid=16", "marconi:alpha=0.5",
              "ik-llama:interval=256,tolerance=0", "pr25472-half-step:min_step=512",
              "user-turn+vllm-all", "vllm-align+coverage", "every-n:n=512+marconi"]
    return specs


SPECS = _specs()


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=25, deadline=None)
@given(trace=traces(), cap=st.integers(1, 6), budget_n=st.one_of(st.none(), st.integers(1, 5)),
       n_slots=st.integers(1, 3), nb=st.sampled_from([64, 256, 2048]))
def test_policy_contract(spec, trace, cap, budget_n, n_slots, nb):
    from ckptsim.cost import load_profile
    prof = load_profile()
    budget = float("inf") if budget_n is None else budget_n * prof.ckpt_size_mib + 1e-6
    cfg = ServerConfig(n_slots=n_slots, ctx_checkpoints=cap, ckpt_budget_mib=budget, n_batch=nb,
                       n_ubatch=min(nb, 512), cache_ram_mib=0)
    run = simulate(trace, spec, cfg, prof)
    run2 = simulate(trace, spec, cfg, prof)
    assert run.results == run2.results                                   # deterministic
    held: dict[int, list[int]] = {}
    for res in run.results:
        req = trace[res.request_id]
        assert 0 <= res.n_cached <= res.n_true_prefix <= req.n_prompt   # never beyond the true prefix
        assert res.n_cached + res.n_reprocessed == req.n_prompt
        for k in res.created_at:
            # inside the prompt, or (states kept after the answer) inside prompt + generated[:-1]
            assert 0 < k <= req.n_prompt + max(req.n_output - 1, 0)
        assert res.ckpt_mib_after <= n_slots * budget + 1e-6
    # replay the events: every restored or evicted checkpoint existed, counts stay within the cap
    for e in run.events:
        ks = held.setdefault(e.slot, [])
        if e.kind == EventKind.CREATED:
            ks.append(e.n_tokens)
            assert len(ks) <= cap
        elif e.kind in (EventKind.ERASED_OLD, EventKind.ERASED_INVALIDATED, EventKind.ERASED_SPACING,
                        EventKind.SUPERSEDED, EventKind.DROPPED):
            assert e.n_tokens in ks
            ks.remove(e.n_tokens)
        elif e.kind == EventKind.RESTORED:
            assert e.n_tokens in ks
    # a restored position really is a common prefix of the prompt and the slot's tokens, checked on
    # explicit token sequences (not the trace's prefix arithmetic the simulator uses). With the
    # prompt cache off a slot's tokens change only by its own requests: prompt + output[:-1].
    seqs = materialise(trace)
    slot_tokens: dict[int, list[int]] = {}
    for res in run.results:
        req = trace[res.request_id]
        prompt = seqs[res.request_id][:req.n_prompt]
        assert res.n_true_prefix == token_lcp(slot_tokens.get(res.slot, []), prompt)
        if res.restored_n_tokens >= 0:
            k = res.restored_n_tokens
            assert 0 < k <= res.n_true_prefix and slot_tokens[res.slot][:k] == prompt[:k]
            assert res.n_cached <= k                         # the restore lands on (or below) k
        slot_tokens[res.slot] = seqs[res.request_id][:req.n_prompt + max(req.n_output - 1, 0)]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_victim_is_a_real_checkpoint(name):
    pol = make_policy(name)
    ck = [Checkpoint(k, 1.0, 0) for k in (100, 200, 900, 950, 4000)]
    i = pol.victim(ck, 5000)
    assert 0 <= i < len(ck)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_placements_inside_prompt(name):
    pol = make_policy(name)
    v = PrefillView(0, 0, 1000, 30000, (1000, 5000, 20000), (), (500,), 2048, 512)
    plan = pol.place(v)
    assert all(1000 < k <= 30000 for k in plan.positions)
    assert list(plan.positions) == sorted(set(plan.positions))
    assert plan.n_batches >= -(-29000 // 2048)


def test_spec_round_trip():
    for spec in ["every-n:n=2048", "llama-server:version=b9985,min_step=256", "every-n:n=2048+coverage"]:
        pol = make_policy(spec)
        again = make_policy(pol.spec)
        assert type(again) is type(pol)
        if dataclasses.is_dataclass(pol) and not hasattr(pol, "placement"):
            assert dataclasses.asdict(again) == dataclasses.asdict(pol)


@pytest.mark.parametrize("bad,msg", [("nope", "unknown policy"), ("every-n:m=3", "bad parameter"),
                                     ("every-n:n=abc", "must be an integer"),
                                     ("llama-server:version=x12", "bad llama-server version"),
                                     ("llama-server:version=b5000", "predates")])
def test_bad_specs(bad, msg):
    with pytest.raises(ValueError, match=msg):
        make_policy(bad)
