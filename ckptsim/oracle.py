"""Offline optimum: a clairvoyant checkpoint policy, and a proven lower bound on re-processing.

Two numbers bracket what any checkpoint policy can achieve on a trace (design principle 6);
the formulation and proofs are in docs/oracle.md.

1. ``lower_bound(trace, config, profile)`` -- a **proven lower bound**. Whatever a policy does,
   a slot only ever holds a prefix of an earlier sequence, and the restore rule never keeps more
   than the common prefix (spec §2.2; ``T - 1`` when the prompt is fully cached). So request r
   re-processes at least ``T_r - min(LCP*_r, T_r - 1)`` tokens, where ``LCP*_r`` is the longest
   common prefix of its prompt with *any* sequence processed before it (the trace's ``n_shared``).
   The bound ignores the checkpoint cap, the byte budget, slot choice and the prompt cache, so it
   holds for every policy under every configuration.

2. The ``oracle`` policy (``policies.OraclePolicy``, registered like every other) -- an
   **achievable** clairvoyant policy, replayed by the same simulator under the same cap, budget,
   slot choice and prompt cache as every other policy. It predicts each request's restore need
   from a shadow replay (``shadow_run``, ``predict_needs``), places checkpoints exactly at the
   positions future requests will restore to (``plan_uses``), and when over budget evicts the
   checkpoint whose planned uses are worth least (``victim_index``; Belady is one of its rules).
   With a cap that does not bind it is exactly optimal on a fixed slot trajectory (docs/oracle.md,
   theorem 2); with a binding cap it is a heuristic (Belady is only optimal for unit-size,
   uniform-value caching).

This module holds the machinery and imports neither the policies nor the simulator: the policy
class lives in the registry (``policies.py``), and the replays it plans on are run by the
simulator it is handed (``Policy.prepare``'s ``replay``).
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .cost import CostProfile, load_profile
from .records import EventKind
from .server import ServerConfig, batch_counts
from .trace import Trace

EVICTIONS = ("density", "value", "belady")   # the oracle's eviction rules (docs/oracle.md, "Eviction")


@dataclass(frozen=True, eq=False)
class LowerBound:
    """A proven lower bound on re-processing for one trace (valid for every policy and flag set)."""

    trace: str
    reprocessed_tokens: int
    prefill_s: float
    ttft_p95_ms: float
    min_reprocessed: np.ndarray = field(repr=False)   # per request id, tokens
    min_prefill_ms: np.ndarray = field(repr=False)    # per request id, ms

    def summary(self) -> dict:
        """The bound as a row of run-level metrics (names as in ``metrics.METRICS``)."""
        return {"trace": self.trace, "policy": "bound", "reprocessed_tokens": self.reprocessed_tokens,
                "prefill_s": self.prefill_s, "ttft_p95_ms": self.ttft_p95_ms}


def best_prefix(trace: Trace) -> np.ndarray:
    """Per request, the longest common prefix of its prompt with any sequence that can be served
    before it under some policy (capped at its length).

    Service order depends on the policy (sessions wait for their previous answer, sim.py), so
    "before" is every request of another session, at any time, and the requests of its own
    session that arrived earlier. Earlier ids are covered by ``n_shared`` (the best earlier
    sequence). A later id shares more only if it descends from this one in the parent tree,
    where the common prefix is the minimum ``n_shared`` along the path (design principle 7);
    any other later id shares at most ``n_shared`` (docs/oracle.md, theorem 1).

    So request a gets ``max(n_shared_a, min(T_a, D_a))``, D_a the best path minimum to a
    descendant x with ``session_x != session_a`` or ``rank_x < rank_a`` (arrival rank). Two
    bottom-up passes give D_a in O(n log n) (docs/oracle.md, "Computing the bound"):

    - other sessions: ``q_a = max over children c of (n_shared_c if c is of another session,
      else min(n_shared_c, q_c))`` -- a descendant of another session either is c itself or lies
      below a same-session c, where q_c already holds the best;
    - the same session, arrived earlier: on each session's own forest (a node's parent is its
      nearest same-session ancestor, the edge weighted by the path minimum between them), every
      subtree keeps the non-dominated (path minimum, smallest arrival rank) pairs of its nodes as
      a staircase (both increasing); a query is one bisection, and the staircases of siblings
      merge smaller into larger.

    ``tests/test_oracle.py`` checks it equal to the direct walk up every parent chain
    (``O(sum of depths)``, quadratic on long sessions) on random forests, sessions and arrival
    ranks; the bench (``bench/lower_bound_speed.py --reference``) times both.
    """
    n = len(trace)
    T = trace.n_prompt.astype(np.int64)
    parent, shared, session = trace._parent, trace._shared, trace.session
    rank = np.empty(n, np.int64)
    rank[np.argsort(trace.t_s, kind="stable")] = np.arange(n)
    rank_l = rank.tolist()
    # Other sessions. Parents come before children, so descending ids are a bottom-up order.
    q = [-1] * n
    for c in range(n - 1, -1, -1):
        a = parent[c]
        if a >= 0:
            v = shared[c] if session[c] != session[a] else min(q[c], shared[c])
            if v > q[a]:
                q[a] = v
    # The same session: each node's nearest same-session ancestor (a depth-first walk with one
    # stack per session) and the path minimum up to it.
    vpar, weight = _session_forest(trace)
    stairs: list = [None] * n           # per node: (path minima, smallest ranks), both increasing
    same = [-1] * n
    for a in range(n - 1, -1, -1):
        k = rank_l[a]
        held = stairs[a]
        if held is None:
            vals, keys = [_UNCAPPED], [k]
        else:
            stairs[a] = None
            vals, keys = held
            j = bisect.bisect_left(keys, k) - 1      # the descendants that arrived earlier
            if j >= 0:
                same[a] = vals[j]
            _stair_insert(vals, keys, _UNCAPPED, k)
        up = vpar[a]
        if up < 0:
            continue
        # Seen from ``up``, every path minimum is capped at the edge's: the pairs above it become
        # one, whose rank is the smallest of theirs (the lowest of them: ranks increase).
        w = weight[a]
        i = bisect.bisect_right(vals, w)
        if i < len(vals):
            k_low = keys[i]
            del vals[i:], keys[i:]
            if not vals or vals[-1] != w:
                vals.append(w)
                keys.append(k_low)
        into = stairs[up]
        if into is None:
            stairs[up] = (vals, keys)
            continue
        if len(into[0]) < len(vals):
            into, (vals, keys) = (vals, keys), into
            stairs[up] = into
        for v, kk in zip(vals, keys):
            _stair_insert(into[0], into[1], v, kk)
    best = np.minimum(trace.n_shared, T).astype(np.int64).tolist()
    T_l = T.tolist()
    for a in range(n):
        m = q[a] if q[a] > same[a] else same[a]
        if m > best[a]:
            best[a] = min(m, T_l[a])
    return np.asarray(best, dtype=np.int64)


_UNCAPPED = 1 << 62      # a node's path minimum to itself: capped by the first edge above it


def _session_forest(trace: Trace) -> tuple[list[int], list[int]]:
    """Per request, its nearest ancestor of the same session in the parent tree (-1: none), and
    the minimum ``n_shared`` on the path up to it (its common prefix with that ancestor)."""
    n = len(trace)
    parent, shared, session = trace._parent, trace._shared, trace.session
    children: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for x in range(n):
        (children[parent[x]] if parent[x] >= 0 else roots).append(x)
    vpar = [-1] * n
    open_: dict[str, list[int]] = {}     # per session, its nodes on the current root path
    todo = [~r for r in reversed(roots)]
    while todo:
        x = todo.pop()
        if x >= 0:                       # leaving x
            open_[session[x]].pop()
            continue
        x = ~x
        st = open_.setdefault(session[x], [])
        if st:
            vpar[x] = st[-1]
        st.append(x)
        todo.append(x)
        todo.extend(~c for c in reversed(children[x]))
    weight = [0] * n
    for x in range(n):
        y = vpar[x]
        if y >= 0:
            weight[x] = shared[x] if parent[x] == y else trace.trie.lcp(x, y)
    return vpar, weight


def _stair_insert(vals: list[int], keys: list[int], v: int, k: int) -> None:
    """Add the pair (v, k) to a staircase (``vals`` and ``keys`` both strictly increasing), keeping
    only pairs no other pair beats in both (a larger or equal v with a smaller or equal k)."""
    i = bisect.bisect_left(vals, v)
    if i < len(vals) and keys[i] <= k:
        return                           # beaten by the lowest pair with v' >= v
    j = bisect.bisect_left(keys, k, 0, i)  # pairs below v with k' >= k: beaten by the new one
    end = i + 1 if i < len(vals) and vals[i] == v else i
    vals[j:end] = [v]
    keys[j:end] = [k]


def lower_bound(trace: Trace, config=None, profile: CostProfile | str | None = None) -> LowerBound:
    """The proven lower bound (module docstring, docs/oracle.md theorem 1)."""
    config = config or ServerConfig()
    prof = profile if isinstance(profile, CostProfile) else load_profile(profile)
    T = trace.n_prompt.astype(np.int64)
    held = _BEST.get(id(trace))
    if held is None or held[0] is not trace:      # a sweep asks again for every batch size
        _BEST.clear()
        held = _BEST[id(trace)] = (trace, best_prefix(trace))
    # "need to evaluate at least 1 token": n_past <= T - 1 always (spec §2.2).
    cached_max = np.minimum(held[1], T - 1)
    cached_max = np.maximum(cached_max, 0)
    min_rep = T - cached_max
    # Batches without any break are the fewest a prompt can take (breaks only add batches).
    nb, ub = config.eff_n_batch, config.eff_n_ubatch
    prefill = np.array([prof.prefill_ms(int(c), int(t), *batch_counts(int(c), int(t), nb, ub))
                        for c, t in zip(cached_max, T)], dtype=float)
    p95 = float(np.percentile(prefill, 95)) if len(prefill) else 0.0
    return LowerBound(trace.name, int(min_rep.sum()), float(prefill.sum()) / 1000.0, p95,
                      min_rep, prefill)


_SHADOWS: dict = {}
_BEST: dict = {}     # id(trace) -> (trace, best_prefix): holding the trace keeps its id unique


@dataclass(frozen=True, slots=True)
class _Need:
    """What the shadow replay predicts for one request: where it resumes and what it must restore."""

    src: int          # request whose sequence the slot holds when this one starts (-1: none)
    start: int        # predicted first prefilled position (restore point or pure extension)
    need: int         # largest usable restore position when a search happens, else 0


def work_s(summary: dict) -> float:
    """Prompt work of a run, seconds: what the oracle's fallback compares (docs/oracle.md)."""
    return summary["prefill_s"] + summary["restore_s"] + summary["create_s"]


def shadow_config(config: ServerConfig) -> ServerConfig:
    """The flags of the shadow replay for a run under ``config``: the shadow has no checkpoints,
    so its cap and budget are irrelevant, and neutral values let one replay serve every run that
    differs from ``config`` only there (a sweep over --ctx-checkpoints or budgets). The same
    config is ``none``'s effective one (``policies.effective_config``): ``none`` under ``config``
    *is* the shadow replay."""
    return dataclasses.replace(config, ctx_checkpoints=0, ckpt_budget_mib=math.inf)


def shadow_run(trace: Trace, config: ServerConfig, profile: CostProfile, replay: Callable[..., object]):
    """The replay without checkpoints, by ``replay`` (the simulator), cached: a sweep over
    --ctx-checkpoints reuses it (``shadow_config``)."""
    held = _held(trace, config, profile)
    if held is not None:
        return held[1]
    cfg = shadow_config(config)
    shadow = replay(trace, "none", cfg, profile, record_events=True)
    _SHADOWS.clear()                      # one trace at a time is enough for a sweep worker
    _SHADOWS[(cfg, profile.name)] = [trace, shadow, profile, None]
    return shadow


def held_shadow(trace: Trace, config: ServerConfig, profile: CostProfile):
    """The shadow replay this process holds for ``trace`` under ``config`` (any cap and budget)
    and ``profile``, or None: what ``none`` takes instead of replaying (``NoCheckpoints.prepare``)."""
    held = _held(trace, config, profile)
    return None if held is None else held[1]


def shadow_plan(trace: Trace, config: ServerConfig, profile: CostProfile,
                replay: Callable[..., object]) -> tuple:
    """(shadow replay, ``plan_uses`` of it), both cached: the plan depends on the trace and the
    shadow alone, so every cap and budget of a sweep shares it too (read only by the oracle)."""
    shadow = shadow_run(trace, config, profile, replay)
    held = _held(trace, config, profile)
    if held[3] is None:
        held[3] = plan_uses(trace, shadow)
    return shadow, held[3]


def _held(trace: Trace, config: ServerConfig, profile: CostProfile) -> list | None:
    held = _SHADOWS.get((shadow_config(config), profile.name))
    if held is not None and held[0] is trace and held[2] == profile:   # holding the trace keeps its id from being reused
        return held
    return None


def predict_needs(trace: Trace, basis) -> dict[int, _Need]:
    """Each request's lineage and restore need, read off a replay (``basis``: a Run with events).

    Slot choice and the prompt cache do not look at checkpoints (spec §2.1, §5) except through
    entry sizes and timing, so on one slot with the prompt cache off or unlimited and a fixed
    service order the prediction from the replay without checkpoints is exact; elsewhere it is
    a forecast and the real replay still does the accounting.
    """
    shadow = basis
    loads: dict[int, int] = {e.request_id: e.n_tokens for e in shadow.events
                             if e.kind == EventKind.CACHE_LOAD}
    n_cache = (trace.n_prompt + np.maximum(trace.n_output - 1, 0)).astype(np.int64)
    prev_on_slot: dict[int, int] = {}
    by_len: dict[int, list[int]] = defaultdict(list)
    out: dict[int, _Need] = {}
    for res in shadow.results:
        r, T, l = res.request_id, res.n_prompt, res.n_true_prefix
        src, L = -1, 0
        if r in loads:
            L = loads[r]
            src = next((q for q in reversed(by_len.get(L, [])) if trace.seq_lcp(q, r) >= l), -1)
        elif l > 0:
            src = prev_on_slot.get(res.slot, -1)
            L = int(n_cache[src]) if src >= 0 else 0
        if src < 0 or l <= 0:
            out[r] = _Need(-1, 0, 0)
        elif l < T and l == L:
            out[r] = _Need(src, l, 0)             # pure extension: no search (spec §2.2)
        else:
            need = l if l < T else T - 1          # fully cached prompt: k <= n_past - 1
            out[r] = _Need(src, need, need)
        prev_on_slot[res.slot] = r
        by_len[int(n_cache[r])].append(r)
    return out


def plan_uses(trace: Trace, basis) -> tuple[dict, dict]:
    """(position uses per creator, serving rank) for the trajectory of the run ``basis``.

    ``uses[a]`` lists (position, rank of the request that restores it) for every future need
    that passes through request ``a``: ``a`` creates or keeps a checkpoint there.
    """
    needs = predict_needs(trace, basis)
    order = [res.request_id for res in basis.results]
    rank = {r: i for i, r in enumerate(order)}
    T = trace.n_prompt
    # start[a]: where a's prefill is expected to begin -- its own need after the walk below
    # (a need inside the source's output can only be served at the source's prompt end).
    start = {r: nd.start for r, nd in needs.items()}
    through: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in order:
        nd = needs[r]
        if nd.need <= 0 or nd.src < 0:
            continue
        # Walk up the lineage to the latest request that prefills position p (the one that can
        # create the checkpoint); every request on the way must keep it (p <= its start).
        p, a, use = nd.need, nd.src, rank[r]
        path = []
        while a >= 0:
            if p > int(T[a]):
                p = int(T[a])                 # inside a's output: nobody prefills it, T_a is best
            path.append(a)
            if p >= start[a]:
                break                         # a's first batch starts at or before p: creator
            a = needs[a].src
        # Everyone on the way holds the position the creator will actually make (p only
        # shrinks going up), so keeping and pruning agree with what exists.
        for b in path:
            through[b].append((p, use))
        start[r] = p if a >= 0 else 0
    return dict(through), rank


def victim_index(ks: list[int], uses: dict[int, list[int]], now: int, evict: str) -> int:
    """The checkpoint to drop among positions ``ks`` (a newcomer included when it is last), given
    the ranks of the requests that will restore each (``uses``) and the current rank ``now``."""
    order = sorted(ks)
    best_i, best = 0, None
    for i, k in enumerate(ks):
        us = uses.get(k, ())
        if not us:
            score: tuple = (0, 0.0, -k)         # nobody needs it: drop first
        elif evict == "belady":
            score = (1, -min(us), 0)
        else:
            j = order.index(k)
            below = order[j - 1] if j > 0 else 0
            value = (k - below) * len(us)       # tokens lost if the next lower one serves instead
            if evict == "density":
                value = value / max(1, max(us) - now)
            score = (1, value, -min(us))
        if best is None or score < best:
            best_i, best = i, score
    return best_i


def choose_creates(want: list[int], existing: list[int], uses: dict[int, list[int]], now: int,
                   evict: str, cap: int, budget_mib: float, profile: CostProfile | None) -> list[int]:
    """Of the planned positions ``want``, those worth creating: a newcomer that would itself be
    the eviction victim under the cap or budget is not made."""
    prof = profile or load_profile(None)
    cur = [(k, prof.ckpt_mib(k)) for k in existing]
    made: list[int] = []
    for k in want:
        size = prof.ckpt_mib(k)
        if size > budget_mib or cap <= 0:
            continue
        trial = cur + [(k, size)]
        while len(trial) > cap or sum(s for _, s in trial) > budget_mib:
            i = victim_index([c for c, _ in trial], uses, now, evict)
            if trial[i][0] == k:
                break                          # the newcomer is worth least: do not create it
            trial.pop(i)
        else:
            cur = trial
            made.append(k)
    return made
