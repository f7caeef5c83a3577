"""The offline optimum: the proven lower bound and the clairvoyant oracle policy (docs/oracle.md)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptsim.oracle import best_prefix, lower_bound, plan_uses, predict_needs, shadow_run
from ckptsim.policies import OraclePolicy, make_policy
from ckptsim.records import Request
from ckptsim.sim import Seeding, ServerConfig, simulate
from ckptsim.trace import Trace, TraceHeader, load_trace

REPO = Path(__file__).resolve().parents[1]
BUNDLED = sorted((REPO / "traces").glob("*.jsonl"))
# More examples for a deeper check: CKPTSIM_HYPOTHESIS_N=1000 pytest tests/test_oracle.py
N_EXAMPLES = int(os.environ.get("CKPTSIM_HYPOTHESIS_N", "60"))
POLICIES = ["none", "fifo", "per-batch", "every-n:n=1024", "user-turn", "user-turn:tools=1",
            "coverage", "llama-server", "llama-server:version=b9985,min_step=0",
            "llama-server:version=b8300", "every-n:n=512+coverage"]


def trace_from_tokens(prompts: list[np.ndarray], outputs: list[np.ndarray], sessions: list[str],
                      times: list[float]) -> Trace:
    """A trace whose prefix structure is computed from real token arrays (token 0 = user start)."""
    seqs = [np.concatenate([p, o]) for p, o in zip(prompts, outputs)]
    reqs = []
    for i, p in enumerate(prompts):
        parent, n_shared = -1, 0
        for q in range(i):
            m = min(len(p), len(seqs[q]))
            diff = np.flatnonzero(p[:m] != seqs[q][:m])
            lcp = int(diff[0]) if len(diff) else m
            if lcp > 0 and lcp >= n_shared:
                parent, n_shared = q, lcp
        users = tuple(int(x) for x in np.flatnonzero(p == 0))
        reqs.append(Request(i, sessions[i], times[i], len(p), len(outputs[i]), parent, n_shared,
                            users))
    return Trace(TraceHeader(name="random"), reqs)


@st.composite
def random_traces(draw, max_requests: int = 14, closed_loop: bool = True) -> Trace:
    """Conversations that extend, rewind and branch earlier sequences (agent edits, retries).

    ``closed_loop=False`` gives every request its own session, so none waits for an earlier
    answer and the service order is the arrival order whatever the policy (sim.py)."""
    n = draw(st.integers(1, max_requests))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    prompts, outputs, seqs, sessions, times = [], [], [], [], []
    t = 0.0
    for i in range(n):
        base = int(rng.integers(-1, i)) if i else -1
        if base >= 0:
            s = seqs[base]
            cut = int(rng.choice([len(s), len(s) - 1, int(rng.integers(0, len(s) + 1)),
                                  len(prompts[base])]))
            head = s[:max(cut, 0)]
        else:
            head = np.zeros(0, dtype=np.int64)
        segs = [head]
        for _ in range(int(rng.integers(0 if len(head) else 1, 4))):
            seg = rng.integers(1, 1 << 40, size=int(rng.integers(20, 3000)))
            seg[0] = 0                              # a user turn starts the segment
            segs.append(seg)
        p = np.concatenate(segs).astype(np.int64)
        if len(p) == 0:
            p = np.array([0], dtype=np.int64)
        o = rng.integers(1, 1 << 40, size=int(rng.integers(1, 400)))
        prompts.append(p)
        outputs.append(o)
        seqs.append(np.concatenate([p, o]))
        sessions.append(f"s{int(rng.integers(0, 3))}" if closed_loop else f"s{i}")
        t += float(rng.exponential(5.0))
        times.append(t)
    return trace_from_tokens(prompts, outputs, sessions, times)


configs = st.builds(
    ServerConfig,
    n_slots=st.integers(1, 3),
    ctx_checkpoints=st.integers(0, 6),
    n_batch=st.sampled_from([256, 2048]),
    n_ubatch=st.sampled_from([64, 512]),
    cache_ram_mib=st.sampled_from([0.0, -1.0, 200.0, 8192.0]),
    ckpt_budget_mib=st.sampled_from([math.inf, 150.0]),
    kv_unified=st.booleans(),
    arrival_order=st.booleans(),     # the bound holds for either service order (docs/oracle.md)
)


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=random_traces(), config=configs)
def test_lower_bound_below_every_policy(trace: Trace, config: ServerConfig) -> None:
    """Theorem 1: no policy, under any flags, re-processes less than the bound (nor prefills faster)."""
    lb = lower_bound(trace, config)
    for spec in POLICIES + ["oracle"]:
        run = simulate(trace, spec, config, record_events=False)
        s = run.summary()
        assert s["reprocessed_tokens"] >= lb.reprocessed_tokens, spec
        assert s["prefill_s"] >= lb.prefill_s - 1e-9, spec
        assert s["ttft_p95_ms"] >= lb.ttft_p95_ms - 1e-6, spec
        per = {r.request_id: r.n_reprocessed for r in run.results}
        assert all(per[i] >= lb.min_reprocessed[i] for i in per), spec


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=random_traces(closed_loop=False), cache_ram=st.sampled_from([0.0, -1.0]),
       n_batch=st.sampled_from([256, 2048]))
def test_oracle_optimal_when_cap_does_not_bind(trace: Trace, cache_ram: float, n_batch: int) -> None:
    """Theorem 2: one slot, a fixed trajectory (no request waits for its session, so every policy
    serves in arrival order) and a cap that never binds => no policy re-processes less."""
    config = ServerConfig(ctx_checkpoints=10_000, cache_ram_mib=cache_ram, n_batch=n_batch)
    best = simulate(trace, "oracle", config, record_events=False).summary()["reprocessed_tokens"]
    for spec in POLICIES:
        s = simulate(trace, spec, config, record_events=False).summary()
        assert best <= s["reprocessed_tokens"], spec


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_oracle_never_worse_on_bundled_traces(path: Path) -> None:
    """The issue's acceptance check: on every bundled trace the oracle beats every policy, above the bound."""
    trace = load_trace(path)
    for cap in (4, 32):
        config = ServerConfig(ctx_checkpoints=cap)
        lb = lower_bound(trace, config)
        best = simulate(trace, "oracle", config, record_events=False).summary()
        assert best["reprocessed_tokens"] >= lb.reprocessed_tokens
        for spec in ["fifo", "every-n:n=4096", "user-turn", "coverage", "llama-server", "per-batch"]:
            s = simulate(trace, spec, config, record_events=False).summary()
            assert best["reprocessed_tokens"] <= s["reprocessed_tokens"], (spec, cap)


def best_prefix_reference(trace: Trace) -> np.ndarray:
    """``oracle.best_prefix`` as first written (O(sum of depths): every request walks its whole
    parent chain), the definition the fast version is checked against."""
    T = trace.n_prompt.astype(np.int64)
    best = np.minimum(trace.n_shared, T).astype(np.int64).tolist()
    T_l = T.tolist()
    parent, shared, session = trace.parent.tolist(), trace.n_shared.tolist(), trace.session
    rank = np.empty(len(T), np.int64)
    rank[np.argsort(trace.t_s, kind="stable")] = np.arange(len(T))
    rank_l = rank.tolist()
    for x in range(len(T_l)):
        m, a = shared[x], parent[x]
        while a >= 0 and m > 0:
            if (session[x] != session[a] or rank_l[x] < rank_l[a]) and m > best[a]:
                best[a] = min(m, T_l[a])
            m = min(m, shared[a])
            a = parent[a]
    return np.asarray(best, dtype=np.int64)


@st.composite
def forests(draw) -> Trace:
    """Parent forests with few distinct n_shared values (ties), sessions that interleave along a
    path, and arrival times in any order (ties too): the cases the staircases must get right."""
    n = draw(st.integers(1, 40))
    depth_bias = draw(st.booleans())            # long chains (the last few as parents) or bushy
    n_sessions = draw(st.integers(1, 4))
    reqs = []
    for i in range(n):
        parent = -1
        if i and draw(st.integers(0, 5)):
            lo = max(0, i - 3) if depth_bias else 0
            parent = draw(st.integers(lo, i - 1))
        n_prompt = draw(st.integers(1, 12))
        n_shared = draw(st.integers(0, 12)) if parent >= 0 else 0
        reqs.append(Request(i, f"s{draw(st.integers(0, n_sessions - 1))}",
                            float(draw(st.integers(0, 2 * n))), n_prompt, draw(st.integers(0, 3)),
                            parent, n_shared))
    return Trace(TraceHeader(name="forest"), reqs, check=False)


@settings(max_examples=max(300, N_EXAMPLES), deadline=None)
@given(trace=forests())
def test_best_prefix_equals_the_chain_walk(trace: Trace) -> None:
    """The O(n log n) bound (two bottom-up passes, staircases per session) is the chain walk's."""
    assert best_prefix(trace).tolist() == best_prefix_reference(trace).tolist()


_BIG = ("mini-swe-agent-gemini3pro-elide5", "mini-swe-agent-gemini3pro", "mooncake-conversation")


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=[pytest.mark.slow] if p.name.split(".")[0] in _BIG else [])
    for p in BUNDLED + sorted((REPO / "traces" / "real").glob("*.jsonl*"))], ids=lambda p: p.name.split(".")[0])
def test_best_prefix_equals_the_chain_walk_on_every_trace(path: Path) -> None:
    """Equal on every bundled and real trace (the 12-20k-request ones, where the walk takes
    seconds to minutes, with -m slow)."""
    trace = load_trace(path)
    assert np.array_equal(best_prefix(trace), best_prefix_reference(trace))


def _chat() -> Trace:
    """Hand-built: a 10k-token prompt, a rewind to 6000 (edit), then a resend of the edited prompt."""
    reqs = [Request(0, "a", 0.0, 10_000, 100),
            Request(1, "a", 10.0, 7_000, 100, parent=0, n_shared=6_000, user_starts=(6_000,)),
            Request(2, "a", 20.0, 7_000, 50, parent=1, n_shared=7_000, user_starts=(6_000,))]
    return Trace(TraceHeader(name="chat"), reqs)


def test_bound_by_hand() -> None:
    """Request 0 shares nothing (10000), 1 shares 6000 (1000 left), 2 is fully cached (T-1 rule: 1 left)."""
    lb = lower_bound(_chat())
    assert lb.min_reprocessed.tolist() == [10_000, 1_000, 1]
    assert lb.reprocessed_tokens == 11_001


def test_oracle_places_exactly_where_the_future_restores() -> None:
    """The oracle checkpoints 6000 in request 0 and 6999 in request 1, and reaches the bound."""
    run = simulate(_chat(), "oracle", ServerConfig(ctx_checkpoints=1, cache_ram_mib=0))
    assert [r.created_at for r in run.results][:2] == [(6_000,), (6_999,)]
    assert [r.n_cached for r in run.results] == [0, 6_000, 6_999]
    assert run.summary()["reprocessed_tokens"] == lower_bound(_chat()).reprocessed_tokens


def test_predicted_needs_follow_the_lineage() -> None:
    """Request 1 rewinds into 0's prompt (search, need 6000); 2 is a full resend (need T-1)."""
    from ckptsim.cost import load_profile
    chat = _chat()
    needs = predict_needs(chat, shadow_run(chat, ServerConfig(cache_ram_mib=0), load_profile(None), simulate))
    assert (needs[0].src, needs[1].src, needs[2].src) == (-1, 0, 1)
    assert (needs[1].need, needs[2].need) == (6_000, 6_999)


def test_oracle_spec_and_bad_args() -> None:
    """``oracle`` round-trips through make_policy and refuses parameters it does not have."""
    assert isinstance(make_policy("oracle"), OraclePolicy)
    assert make_policy("oracle").spec == "oracle"
    with pytest.raises(ValueError, match="oracle"):
        make_policy("oracle:n=3")


def test_oracle_placement_with_another_eviction_is_not_none() -> None:
    """``oracle+B`` runs the oracle's placement (its ``prepare`` is forwarded by ``Combined``)
    under B's eviction: it creates checkpoints and re-processes less than ``none`` (it used to
    create none, because nobody told the oracle the trace)."""
    trace = load_trace(REPO / "traces" / "agent-edit.jsonl")
    cfg = ServerConfig(ctx_checkpoints=4)
    none = simulate(trace, "none", cfg, record_events=False).summary()
    oracle = simulate(trace, "oracle", cfg, record_events=False).summary()
    for spec in ("oracle+fifo", "oracle+coverage"):
        s = simulate(trace, spec, cfg, record_events=False).summary()
        assert s["created"] > 0, spec
        assert oracle["reprocessed_tokens"] <= s["reprocessed_tokens"] < none["reprocessed_tokens"], spec


@pytest.mark.parametrize("spec", ["every-n:n=2048+oracle", "fifo+oracle:evict=belady", "oracle+oracle"])
def test_oracle_eviction_under_another_placement_is_refused(spec: str) -> None:
    """``A+oracle`` used to run as ``none`` (the oracle's eviction, knowing no planned use, dropped
    every checkpoint); it is refused at construction, naming the spec and why."""
    with pytest.raises(ValueError, match=r"policy '.*\+oracle.*': oracle's eviction only ranks"):
        make_policy(spec)


def test_prepare_is_part_of_the_interface_and_combined_forwards_it() -> None:
    """Every policy has ``prepare`` (a no-op by default); ``A+B`` calls it on both parts, and the
    simulator calls it once before the replay."""
    from ckptsim.policies import Combined, EveryN, Fifo, Policy
    calls: list[str] = []

    class Recording(Fifo):
        def prepare(self, trace, config, profile, replay) -> None:
            assert replay is simulate           # the simulator hands itself in (no import cycle)
            calls.append(type(self).__name__)

    assert Policy().prepare(None, None, None, None) is None
    trace = load_trace(REPO / "traces" / "agent-edit.jsonl")
    simulate(trace, Combined(placement=Recording(), eviction=Recording()), record_events=False)
    assert calls == ["Recording", "Recording"]
    calls.clear()
    simulate(trace, Combined(placement=EveryN(), eviction=Recording()), record_events=False)
    assert calls == ["Recording"]


def _work_s(s: dict) -> float:
    return s["prefill_s"] + s["restore_s"] + s["create_s"]


def test_oracle_falls_back_when_checkpoint_copies_crowd_the_prompt_cache() -> None:
    """docs/oracle.md "Fallback": 40 interleaved mini-swe-agent sessions on one slot with a 2 GiB
    --cache-ram. Checkpoint copies in cache entries (spec §5) make the oracle's own placement cost
    more than none at all, so it keeps none; with the cache unlimited it must not fall back."""
    trace = load_trace(REPO / "traces" / "real" / "mini-swe-agent-gemini3pro-s40.jsonl")
    finite = ServerConfig(cache_ram_mib=2048)
    from ckptsim.cost import load_profile
    placed = OraclePolicy()                       # the placement alone, without the fallback check
    placed._checking = True
    placed._through, placed._rank = plan_uses(trace, shadow_run(trace, finite, load_profile(None), simulate))
    with_ckpts = simulate(trace, placed, finite, record_events=False).summary()
    none = simulate(trace, "none", finite, record_events=False).summary()
    assert _work_s(none) < _work_s(with_ckpts)
    oracle = OraclePolicy()
    s = simulate(trace, oracle, finite, record_events=False).summary()
    assert oracle.fell_back
    assert s["reprocessed_tokens"] == none["reprocessed_tokens"] and s["created"] == 0
    for spec in ("fifo", "llama-server"):
        assert _work_s(s) <= _work_s(simulate(trace, spec, finite, record_events=False).summary()), spec
    unlimited = OraclePolicy()
    simulate(trace, unlimited, ServerConfig(cache_ram_mib=-1), record_events=False)
    assert not unlimited.fell_back


def _replayed_anyway(trace: Trace, spec: str, config: ServerConfig, record_events: bool = True):
    """The run with the oracle's last replay made (an empty ``Seeding`` changes nothing in a
    replay, but the simulator does not take a replay ``prepare`` made under it)."""
    return simulate(trace, spec, config, record_events=record_events, seeding=Seeding({}, {}))


def _same_run(a, b) -> None:
    assert (a.policy, a.config, a.profile) == (b.policy, b.config, b.profile)
    assert a.results == b.results
    assert a.events == b.events
    assert (a.peak_ckpt_mib, a.peak_cache_ram_mib) == (b.peak_ckpt_mib, b.peak_cache_ram_mib)


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=random_traces(), config=configs.filter(lambda c: c.cache_ram_mib > 0),
       spec=st.sampled_from(["oracle", "oracle:evict=belady", "oracle+fifo"]),
       record_events=st.booleans())
def test_oracle_run_is_its_trial_or_its_shadow(trace: Trace, config: ServerConfig, spec: str,
                                               record_events: bool) -> None:
    """With a finite --cache-ram the oracle's run is the trial replay it made in ``prepare`` (kept)
    or the shadow (fallen back), not a third replay: equal to making that replay, result for
    result and event for event (docs/oracle.md, "Cost and speed")."""
    _same_run(simulate(trace, spec, config, record_events=record_events),
              _replayed_anyway(trace, spec, config, record_events))


@pytest.mark.parametrize("cache_ram", [2048.0, 8192.0])
def test_oracle_run_is_its_trial_or_its_shadow_on_a_real_trace(cache_ram: float) -> None:
    """The same on 40 interleaved SWE sessions: at 2 GiB the oracle falls back (the shadow stands
    for its run), at 8 GiB it keeps its plan (the trial does)."""
    trace = load_trace(REPO / "traces" / "real" / "mini-swe-agent-gemini3pro-s40.jsonl")
    config = ServerConfig(cache_ram_mib=cache_ram)
    pol = OraclePolicy()
    run = simulate(trace, pol, config)
    assert pol.fell_back == (cache_ram == 2048.0)
    _same_run(run, _replayed_anyway(trace, "oracle", config))
    assert pol.take_replay() is None                  # handed over once, not held


def test_oracle_replays_twice(count_replays) -> None:
    """Shadow and trial (finite --cache-ram), or shadow and the run (cache off or unlimited): two
    replays of the trace, where there were three."""
    import ckptsim.oracle as oracle_mod
    trace = load_trace(REPO / "traces" / "multi-session.jsonl")
    for cache_ram in (8192.0, 0.0, -1.0):
        oracle_mod._SHADOWS.clear()
        with count_replays() as calls:
            simulate(trace, "oracle", ServerConfig(cache_ram_mib=cache_ram), record_events=False)
        assert calls == ["none", "oracle"], cache_ram


@pytest.mark.parametrize("config", [ServerConfig(), ServerConfig(n_slots=2, cache_ram_mib=1024, ctx_checkpoints=4),
                                    ServerConfig(cache_ram_mib=0, arrival_order=False, n_slots=2)])
def test_none_is_the_shadow_replay_and_takes_it(config: ServerConfig, count_replays) -> None:
    """``none`` under the oracle's flags (any cap and budget) is the oracle's shadow replay: after
    an oracle run it takes that replay, equal to replaying, result for result and event for
    event; under other flags it replays."""
    import ckptsim.oracle as oracle_mod
    trace = load_trace(REPO / "traces" / "multi-session.jsonl")
    oracle_mod._SHADOWS.clear()
    fresh = simulate(trace, "none", config)
    for events in (True, False):
        oracle_mod._SHADOWS.clear()
        simulate(trace, "oracle", ServerConfig(**{**config.__dict__, "ctx_checkpoints": 7, "ckpt_budget_mib": 300.0}),
                 record_events=False)
        with count_replays() as calls:
            taken = simulate(trace, "none", config, record_events=events)
        assert calls == []
        assert taken.results == fresh.results and taken.config == config
        assert taken.events == (fresh.events if events else [])
    with count_replays() as calls:
        simulate(trace, "none", ServerConfig(**{**config.__dict__, "n_batch": 512}), record_events=False)
    assert calls == ["none"]


def test_compare_runs_the_oracle_first_so_none_takes_its_shadow(count_replays) -> None:
    """``compare`` (cli run_policies): none, fifo and the oracle cost three replays, not four,
    and each run equals simulating it on its own, in the order asked for."""
    import ckptsim.oracle as oracle_mod
    from ckptsim.cli.sim_cmds import run_policies
    trace = load_trace(REPO / "traces" / "chat-edit.jsonl")
    config = ServerConfig()
    oracle_mod._SHADOWS.clear()
    with count_replays() as calls:
        runs = run_policies(trace, ["none", "fifo", "oracle"], config, None, show_progress=False)
    assert sorted(calls) == ["fifo:offset=0", "none", "oracle"]
    for run, spec in zip(runs, ["none", "fifo", "oracle"]):
        oracle_mod._SHADOWS.clear()
        alone = simulate(trace, spec, config, record_events=False)   # compare records no events
        assert run.policy == alone.policy and run.results == alone.results and run.events == alone.events
