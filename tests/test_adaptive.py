"""The `adaptive` policy: what it learns from the needs it sees, and that it pays on real edits."""
from __future__ import annotations

from pathlib import Path

import pytest

from ckptsim.policies import Adaptive
from ckptsim.cost import load_profile
from ckptsim.policies import Checkpoint, PrefillView, make_policy
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import load_trace

REAL = Path(__file__).resolve().parents[1] / "traces" / "real"


def _view(rid, T, starts, start=0, have=(), n_common=0, n_cached=0, cached_task=-1, slot=0, n_evicted=0):
    return PrefillView(rid, slot, start, T, tuple(starts), (), tuple(have), 2048, 512,
                       lcp_n_tokens=n_common, cached_n_tokens=n_cached, cached_task=cached_task,
                       n_cache_evicted=n_evicted)


def _elision_session(pol: Adaptive, n_requests: int):
    """A session whose every request rewrites the message 4 starts below the previous prompt's
    end, 3 tokens in (SWE-agent's last_n_observations, bench/oracle_analysis.py); each turn adds
    one 1000-token message. Returns the last view and plan."""
    prev = None
    for rid in range(n_requests):
        starts = [100 + 1000 * i for i in range(6 + rid)]
        T = starts[-1] + 1000
        if prev is None:
            v = _view(rid, T, starts)
        else:
            p_starts, p_T = prev
            need = p_starts[len(p_starts) - 5] + 3
            v = _view(rid, T, starts, start=need - 3, n_common=need, n_cached=p_T + 50, cached_task=rid - 1)
        plan = pol.place(v)
        prev = (starts, T)
    return v, plan


def test_warm_up_places_as_the_server_and_lets_nothing_go():
    """The first ``warmup`` requests: the current server's placement, FIFO, no pruning; after them
    the learned positions (here none has been needed yet: nothing)."""
    pol, server = Adaptive(warmup=2), make_policy("llama-server")
    views = [_view(rid, 5000 + 3000 * rid, [100, 2000, 4000 + 3000 * rid]) for rid in range(3)]
    for v in views[:2]:
        assert pol.place(v) == server.place(v)
        held = [Checkpoint(k, 62.8, 0) for k in (100, 2000, v.n_prompt)]
        assert pol.prune(held) == [] and pol.victim(held, 9999) == 0
    full = [Checkpoint(1000 * (i + 1), 62.8, i) for i in range(32)]   # 1000 apart: under the min step
    assert pol.pre_evict(full, 40000, 40, 32) == server.pre_evict(full, 40000, 40, 32) != []
    assert pol.place(views[2]).positions == ()


def test_learns_the_message_depth_of_edits_and_lets_the_rest_go():
    pol = Adaptive(warmup=0)
    v, plan = _elision_session(pol, 12)
    starts = v.user_starts
    # the next request rewrites the message 4 starts below this prompt's end: its start serves it
    assert starts[len(starts) - 5] in plan.positions
    assert v.n_prompt not in plan.positions          # nobody needed a prompt end
    held = [Checkpoint(k, 62.8, 0) for k in (starts[0], starts[len(starts) - 5], starts[-1])]
    dropped = pol.prune(held)
    assert [held[i].n_tokens for i in dropped] == [starts[0], starts[-1]]


def test_pure_extensions_keep_nothing():
    pol = Adaptive(warmup=0)
    T = 1000
    for rid in range(50):
        # the slot held the previous sequence whole (l == L < T): no search, nothing to restore
        v = _view(rid, T + 500, [0, T], start=T, n_common=T, n_cached=T, cached_task=rid - 1 if rid else -1)
        plan = pol.place(v)
        T += 500
    assert plan.positions == ()


def test_resends_are_served_at_the_prompt_end():
    """A need at or past the previous prompt's end (the new prompt diverges in the generated
    output, as in the Claude Code traces) is served by a checkpoint at the prompt's end."""
    pol = Adaptive(warmup=0)
    T = 3000
    for rid in range(20):
        v = _view(rid, T + 400, [0], start=T, n_common=T + 10, n_cached=T + 60,
                  cached_task=rid - 1 if rid else -1)
        plan = pol.place(v)
        T += 400
    assert plan.positions == (T,)


def test_needs_in_the_last_ubatch_also_count_at_the_servers_break_point():
    """Needs a few hundred tokens below the previous prompt's end, not at a message start, at a
    depth that changes from one to the next (Claude Code, weka-sample): besides its exact depth,
    each counts at T - 4 - n_ubatch, the server's break point, which serves any such depth
    (``near=1``); with ``near=0`` only the depths seen are served, not a deeper one next."""
    def run(pol):
        T = 20000
        for rid, depth in enumerate([108, 336, 108, 336, 108, 336]):
            v = _view(rid, T + 2000, [0], start=T - depth, n_common=T - depth, n_cached=T + 60,
                      cached_task=rid - 1 if rid else -1)
            plan = pol.place(v)
            T += 2000
        return T, plan.positions

    T, ps = run(Adaptive(warmup=0))
    assert T - 516 in ps                                  # serves the next need at depth 459 too
    T, ps = run(Adaptive(warmup=0, near=0))
    assert not any(T - 516 <= p <= T - 459 for p in ps)   # the deepest kept serves 336 at most


def test_cache_pressure_raises_the_bar_only_when_the_cache_evicts():
    """With --cache-ram, slots that swap sequences through the prompt cache carry checkpoints into
    its entries. While the cache has room that costs nothing; once it evicts entries, a rarely
    needed checkpoint's bytes push out conversations, and it is not worth keeping."""
    prof = load_profile()

    def kept_after_rare_needs(cache_ram_mib, evictions_per_swap):
        pol = Adaptive(warmup=0)
        pol.prepare(None, ServerConfig(cache_ram_mib=cache_ram_mib), prof)
        starts = [100 + 1000 * i for i in range(20)]
        T = starts[-1] + 1000
        n_evicted = 0
        for rid in range(61):        # the last one needs nothing: what stays is a choice
            if rid % 10 == 9:       # one request in ten rewrites the message 2 starts from the end
                v = _view(rid, T, starts, start=starts[-3], n_common=starts[-3] + 3, n_cached=T + 50,
                          cached_task=rid - 1, n_evicted=n_evicted)
            else:                   # the rest arrive on a slot that swapped in another sequence
                n_evicted += evictions_per_swap
                v = _view(rid, T, starts, start=T - 1, n_common=T, n_cached=T, cached_task=-1,
                          have=(starts[-3],), n_evicted=n_evicted)
            pol.place(v)
        held = [Checkpoint(starts[-3], prof.ckpt_mib(0), 0)]
        return len(held) - len(pol.prune(held))

    assert kept_after_rare_needs(0, 1) == 1       # no prompt cache
    assert kept_after_rare_needs(8192, 0) == 1    # a cache that never fills (multi-session's case)
    assert kept_after_rare_needs(8192, 1) == 0    # a full one (the 500-session SWE trace's)


def test_a_short_sequence_edit_counts_for_the_shared_head_too():
    """A need at the second message start of a 4-message sequence is as near the head as the tail;
    when the next sessions keep needing the head (a shared system prompt, chat-edit's session
    starts), a long prompt gets a checkpoint there, not only 2 messages from its end."""
    pol = Adaptive(warmup=0)
    rid = 0
    for _ in range(20):
        starts = [0, 2000, 2300, 2600]
        pol.place(_view(rid, 3000, starts, n_common=0, cached_task=rid - 1 if rid else -1))
        rid += 1
        pol.place(_view(rid, 3100, [0, 2000, 2500], start=2000, n_common=2000, n_cached=3050,
                        cached_task=rid - 1))
        rid += 1
    long_starts = [0, 2000] + [3000 + 1000 * i for i in range(30)]
    plan = pol.place(_view(rid, 40000, long_starts, n_common=0, cached_task=-1))
    assert 2000 in plan.positions


def test_a_shared_head_seen_on_long_sequences_claims_the_short_sequences_needs_too():
    """Un-elided SWE: a task arriving on a slot that holds another conversation needs the shared
    system prompt (head 0). On a short sequence that start is also a few messages from the tail;
    split evenly, those needs spread over `tail d` for every d, and together paid for a deep
    checkpoint no edit ever used (it only took prompt-cache room). Split in proportion to what
    the unambiguous needs (the same start on long sequences) say, they stay with the head."""
    pol = Adaptive(warmup=0, min_tokens=600)
    rid = 0
    for rnd in range(20):
        for n_starts in (30, 2 + rnd % 5):          # a long sequence, then a short one
            starts = [100 + 1000 * i for i in range(n_starts)]
            pol.place(_view(rid, starts[-1] + 1000, starts))                 # fresh: needs nothing
            rid += 1
            pol.place(_view(rid, 9000, [100, 5000], start=100, n_common=103, n_cached=starts[-1] + 1050,
                            cached_task=rid - 1))   # another conversation: the shared head only
            rid += 1
    long_starts = [100 + 1000 * i for i in range(40)]
    # the head (100 tokens at ~half the requests) is worth less than the bar; no edit was seen
    assert pol.place(_view(rid, 41000, long_starts)).positions == ()


def test_the_warm_up_adds_what_the_first_edits_teach():
    """During the warm-up the server's placement and eviction, plus the positions the needs
    seen so far are worth: the edit 4 messages deep gets its checkpoint from the first edits on."""
    pol, server = Adaptive(warmup=100), make_policy("llama-server")
    v, plan = _elision_session(pol, 12)
    starts = v.user_starts
    assert set(server.place(v).positions) <= set(plan.positions)
    assert starts[len(starts) - 5] in plan.positions
    held = [Checkpoint(k, 62.8, 0) for k in (starts[0], starts[len(starts) - 5], starts[-1])]
    assert pol.prune(held) == [] and pol.victim(held, 99999) == 0
    assert Adaptive(warmup=100, warm_learn=0).place(v) == server.place(v)
    # with no room beside the server's own checkpoints (-ctxcp 2 here) it adds nothing: an
    # addition would push out one the server keeps (Claude Code traces at -ctxcp 2: +5-17%)
    small = Adaptive(warmup=100)
    small.prepare(None, ServerConfig(ctx_checkpoints=2, cache_ram_mib=0), load_profile())
    v, plan = _elision_session(small, 12)
    assert plan == server.place(v)


def _elided_session_views(rid: int, prev: tuple | None, held: list, n_extended: int = 5, n_edits: int = 8):
    """The views of one session as SWE-agent's history elision makes them, on a slot that holds
    ``prev`` ((request, starts, T) of another session's last sequence, or None): the first request
    shares only the system prompt with it, the next ``n_extended`` only extend the session (a
    1000-token observation each, one message start), then ``n_edits`` requests each rewrite the
    message 4 starts below the previous prompt's end: the first time, the session's first observation
    (start 1, at 1000). Yields (k, view); the caller places each, and keeps ``held`` (the slot's
    checkpoints) up to date, before the next is made."""
    for k in range(n_extended + 1 + n_edits):
        starts = [100] + [1000 * j for j in range(1, k + 1)]
        T = 1000 * k + 900
        if prev is None:
            v = _view(rid, T, starts)
        elif k == 0:             # a new session: the shared system prompt only
            held[:] = [p for p in held if p <= 103]
            v = _view(rid, T, starts, have=held, n_common=103, n_cached=prev[2] + 50, cached_task=prev[0])
        elif k <= n_extended:    # a pure extension of the previous request
            v = _view(rid, T, starts, have=held, start=prev[2] + 50, n_common=prev[2] + 50,
                      n_cached=prev[2] + 50, cached_task=prev[0])
        else:                    # an edit, 4 starts below the previous prompt's end
            need = prev[1][-5] + 3
            held[:] = [p for p in held if p <= need]
            v = _view(rid, T, starts, have=held, start=max([0] + held), n_common=need, n_cached=prev[2] + 50,
                      cached_task=prev[0])
        yield k, v
        prev = (rid, starts, T)
        rid += 1


def test_keeps_where_first_edits_land_while_a_session_is_only_extended():
    """Each session's first edit lands at its first observation's start, prefilled as the prompt's
    last start 5 requests earlier, when no edit had yet said to keep it; the later edits, 4 starts
    from the end, the general classes serve. Once earlier sessions have shown where their first
    edits land, a session keeps that start from the request that prefills it until its first
    edit (restored there) and lets it go after; ``first=0`` (the policy before) never keeps it."""
    for first in (1, 0):
        pol = Adaptive(warmup=0, first=first)
        rid, prev, held = 0, None, []
        kept = {}
        for session in range(9):
            for k, v in _elided_session_views(rid, prev, held):
                plan = pol.place(v)
                held += plan.positions
                dropped = pol.prune([Checkpoint(p, 62.8, 0) for p in held])
                held[:] = [p for i, p in enumerate(held) if i not in dropped]
                if session == 8:     # the last: what it placed and kept
                    if k == 1:       # the request that prefills the first observation's start
                        assert (1000 in plan.positions) == bool(first)
                    if k == 6:       # the first edit restores there
                        assert (v.start == 1000) == bool(first)
                    kept[k] = 1000 in held
                prev, rid = (v.request_id, v.user_starts, v.n_prompt), v.request_id + 1
        if first:
            # k = 1..5 only extend the session: kept; k = 6 edits it first: let go after
            assert [kept[k] for k in range(1, 14)] == [True] * 5 + [False] * 8
        else:
            assert not any(kept.values())


def test_a_long_prompt_met_by_its_head_only_is_not_taken_for_a_new_session():
    """With hundreds of sessions on one slot, a session's prompt-cache entry is often gone: its
    next prompt shares only the system prompt with the slot, like a new session's first, but has
    many messages, edited or not before (the server cannot tell). Taken for an unedited sequence,
    its later edits counted as first edits at every depth, and their checkpoints only took
    prompt-cache room (the 500-session elided SWE trace: +3.4%). Only an opening prompt (at most
    ``opening`` message starts) starts an unedited sequence."""
    got = {}
    for opening in (2, 99):
        pol = Adaptive(warmup=0, opening=opening)
        rid, prev, held = 0, None, []
        for _ in range(8):
            for k, v in _elided_session_views(rid, prev, held):
                plan = pol.place(v)
                held[:] = list(plan.positions)
                prev, rid = (v.request_id, v.user_starts, v.n_prompt), v.request_id + 1
        starts = [100] + [1000 * j for j in range(1, 12)]
        v = _view(rid, 12900, starts, n_common=103, n_cached=prev[2] + 50, cached_task=prev[0])
        got[opening] = pol.place(v).positions
    assert 1000 not in got[2] and 1000 in got[99]


@pytest.mark.parametrize("bad", ["adaptive:keep=0", "adaptive:half_life=0"])
def test_bad_parameters(bad):
    with pytest.raises(ValueError, match="adaptive"):
        make_policy(bad)


def test_beats_the_server_and_every_n_on_elided_swe_sessions():
    """The 40-session elided SWE trace: edits 4 messages deep (bench/oracle_analysis.py)."""
    trace = load_trace(REAL / "mini-swe-agent-gemini3pro-s40-elide5.derived.jsonl")
    cfg = ServerConfig()
    got = {p: simulate(trace, p, cfg, None, record_events=False).summary()["reprocessed_tokens"]
           for p in ("adaptive", "llama-server", "every-n:n=4096", "oracle")}
    assert got["adaptive"] < got["every-n:n=4096"] < got["llama-server"]
    assert got["adaptive"] <= 1.15 * got["oracle"]


def test_policy_curves_one_panel_per_trace_scaled_to_the_server():
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd

    from ckptsim.plots import policy_curves
    from test_plots import _legends_clear_of_axes
    rows = [{"trace": t, "policy": p, "ctx_checkpoints": c, "reprocessed_tokens": base * f / c ** 0.1}
            for t, base in (("a", 1000.0), ("b", 5e6)) for p, f in (("llama-server", 1.0), ("adaptive", 0.5))
            for c in (4, 32)]
    fig = policy_curves(pd.DataFrame(rows))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["a", "b"]
    server_at_32 = [ln for ln in shown[1].get_lines() if ln.get_label() == "llama-server"][0].get_ydata()[-1]
    assert server_at_32 == pytest.approx(1.0)
    fig.canvas.draw()
    _legends_clear_of_axes(fig)


def test_policy_curves_clip_a_policy_far_above_the_rest():
    """`none` at 20x the server would flatten every other line: the panel stops at y_max and says so."""
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd

    from ckptsim.plots import policy_curves
    rows = [{"trace": "w", "policy": p, "ctx_checkpoints": c, "reprocessed_tokens": v}
            for p, v in (("none", 20.0), ("llama-server", 1.0), ("adaptive", 0.9)) for c in (4, 32)]
    ax = [a for a in policy_curves(pd.DataFrame(rows), y_max=2.0).axes if a.get_visible()][0]
    assert ax.get_ylim()[1] == pytest.approx(2.0)
    assert "clipped" in ax.get_title()
