"""What other engines and open llama.cpp PRs do with recurrent states, as plain rules.

The policies built on these rules live in the registry (``policies.py``: ``vllm-all``,
``vllm-align``, ``sglang-no-buffer``, ``sglang-extra-buffer``, ``marconi``, ``ik-llama``,
``pr25592``, ``pr24035``, ``pr25472-half-step``); this module holds their machinery, as
``oracle.py`` does the oracle's, so that it imports no policy. What each model leaves out is in
docs/policies.md ("The field's policies").

The engines' restore rule, ``exact_restore``::

    slot cache:  |0 ............................................ n_cache)
    new prompt:  |0 ..................... n_lcp)...................... T)
    states:           ^k1        ^k2          ^k3 (past n_lcp: another branch, erased)
    resume at the deepest state k <= min(n_lcp, T - 1) (one token must be computed for logits);
    the live state counts only where the engine keeps it (llama.cpp forks), not where a
    finished request's state is freed and only cached states remain (vLLM, SGLang, Marconi)

Sources are named in each policy's ``source`` and docstring; no third-party code is used.
"""
from __future__ import annotations

import dataclasses

from .records import Checkpoint, Request
from .server import RestoreDecision, batch_counts
from .trace import Trace

MARCONI_ALPHAS = tuple(i / 10 for i in range(21))   # the paper's grid search, 0 to 2 by 0.1
MARCONI_BOOTSTRAP = 5                               # tuning window: 5 x the requests before the 1st eviction


def exact_restore(n_lcp: int, n_cache: int, n_prompt: int, ckpt_n_tokens: list[int],
                  live_state: bool) -> RestoreDecision:
    """Resume from the deepest state inside the common prefix, leaving one token to compute.

    ``live_state``: the slot's own state (``n_cache`` tokens) may be continued when the prompt
    extends all of it. States past ``n_lcp`` hold another branch and are erased; states inside it
    stay, restored or not (#24035: "invalidate only when the saved prefix extends beyond the LCP").
    """
    limit = min(n_lcp, n_prompt - 1)
    if live_state and 0 < n_cache == n_lcp <= limit:
        return RestoreDecision(n_past=n_cache, restored=-1, full_reprocess=False, searched=False,
                               keep_upto=n_lcp)
    best = -1
    for k in ckpt_n_tokens:
        if best < k <= limit:
            best = k
    if best > 0:
        return RestoreDecision(n_past=best, restored=best, full_reprocess=False, searched=True,
                               keep_upto=n_lcp)
    return RestoreDecision(n_past=0, restored=-1, full_reprocess=n_lcp > 0, searched=n_lcp > 0,
                           keep_upto=n_lcp)


class RecencyClock:
    """Last use of each checkpoint, in request ids (a logical clock: ids follow arrival order).

    A checkpoint is used when it is created (its ``task_id``) and when it is restored
    (``restored``, the ``Policy`` hook). Ties go to the deeper checkpoint first, as vLLM frees a
    finished request's blocks tail first and SGLang evicts leaves before their parents.
    """

    def _clock_init(self) -> None:
        self._used: dict[Checkpoint, int] = {}
        self._now = -1

    def _tick(self, request_id: int) -> None:
        if request_id > self._now:
            self._now = request_id

    def restored(self, ckpt: Checkpoint, request_id: int) -> None:
        self._used[ckpt] = request_id
        self._tick(request_id)

    def _last_use(self, c: Checkpoint) -> int:
        u = self._used.get(c, -1)
        return u if u > c.task_id else c.task_id

    def _forget(self, c: Checkpoint) -> None:
        self._used.pop(c, None)

    def _lru_victim(self, ckpts: list[Checkpoint]) -> int:
        best_i, best_key = 0, None
        for i, c in enumerate(ckpts):
            key = (self._last_use(c), -c.n_tokens)
            if best_key is None or key < best_key:
                best_i, best_key = i, key
        self._forget(ckpts[best_i])
        return best_i


def grid(lo: int, hi: int, step: int) -> list[int]:
    """Multiples of ``step`` in (lo, hi]."""
    if step <= 0 or hi <= lo:
        return []
    return list(range((lo // step + 1) * step, hi + 1, step))


def check_positive(name: str, **values: int) -> None:
    """Refuse a parameter that must be > 0, naming it."""
    for k, v in values.items():
        if v <= 0:
            raise ValueError(f"policy {name!r}: {k} must be > 0, got {v}")


# --- vLLM -------------------------------------------------------------------------------------

def vllm_align_states(start: int, n_prompt: int, block: int, budget: int) -> list[int]:
    """Block boundaries where vLLM's align mode ends a prefill chunk (``MambaPrefillChunkAlignmentPolicy``):
    chunks of at most ``budget`` tokens cut to a block multiple; the chunk crossing the prompt's
    last block boundary stops there; the tail past it keeps no state."""
    B, T = block, n_prompt
    last = T - T % B
    pos, out = start, []
    while pos < T:
        n = min(budget, T - pos)
        if pos + n < last:
            n = max(B, n // B * B)     # a budget below one block still schedules one block
        elif pos < last < pos + n:
            n = last - pos
        pos += n
        if pos % B == 0:
            out.append(pos)
    return out


def vllm_retained(ps: list[int], block: int, retention: int, replay: int) -> list[int]:
    """The states vLLM keeps of ``ps`` under ``--prefix-cache-retention-interval`` (#45845, #52216):
    -1 all; 0 only ``replay``; N > 0 the last block boundary of each N-token segment, and ``replay``."""
    if retention < 0:
        return ps
    R, B = retention, block
    return [p for p in ps if p == replay or (R > 0 and (p + B) // R > p // R)]


# --- SGLang -----------------------------------------------------------------------------------

def sglang_tracked_states(start: int, n_prompt: int, chunk: int, grid_n: int, branch: int) -> list[int]:
    """SGLang extra_buffer's one tracked state per prefill chunk: the branch point if the chunk
    holds it, else the chunk's last ``grid_n``-aligned position strictly inside it."""
    T = n_prompt
    step = chunk or T
    ps, s = [], start
    while s < T:
        e = min(s + step, T)
        if s < branch <= e and branch < T:
            ps.append(branch)
        elif (e - s - 1) // grid_n >= 1:
            ps.append(s + (e - s - 1) // grid_n * grid_n)
        s = e
    return ps


# --- Marconi ----------------------------------------------------------------------------------

def normalise(xs: list[float]) -> list[float]:
    """Min-max normalisation; all ones when the values do not spread (the artifact's rule)."""
    lo, hi = min(xs), max(xs)
    if hi <= lo:
        return [1.0] * len(xs)
    return [(x - lo) / (hi - lo) for x in xs]


def marconi_victim(ckpts: list[Checkpoint], last_use: list[int], now: int, alpha: float, profile,
                   n_batch: int, n_ubatch: int) -> int:
    """Index of the state with the lowest ``recency + alpha x FLOP efficiency`` (each min-max
    normalised): recency 1 / (now - last use); efficiency the prefill time a state saves over its
    parent state (the next shallower one) per MiB (tokens when there is no profile)."""
    ks = [c.n_tokens for c in ckpts]
    eff = [0.0] * len(ks)
    rec = [0.0] * len(ks)
    prev = 0
    for i in sorted(range(len(ks)), key=ks.__getitem__):
        k, size = ks[i], ckpts[i].size_mib
        saved = (profile.prefill_ms(prev, k, *batch_counts(prev, k, n_batch, n_ubatch))
                 if profile is not None else float(k - prev))
        eff[i] = saved / size if size > 0 else saved
        rec[i] = 1.0 / max(1, now - last_use[i])
        prev = k
    eff, rec = normalise(eff), normalise(rec)
    return min(range(len(ks)), key=lambda i: (rec[i] + alpha * eff[i], -ks[i]))


def sub_trace(trace: Trace, ids: list[int]) -> Trace:
    """The requests ``ids`` as a trace of their own, renumbered in id order; a parent outside
    the set is dropped (the replay starts from empty servers, as the artifact's tuner does)."""
    keep = sorted(ids)
    new_id = {r: i for i, r in enumerate(keep)}
    reqs: list[Request] = []
    for r in keep:
        q = trace[r]
        p = new_id.get(q.parent, -1)
        reqs.append(dataclasses.replace(q, id=new_id[r], parent=p, n_shared=q.n_shared if p >= 0 else 0,
                                        observed=None))
    return Trace(trace.header, reqs, check=False)


# --- ik_llama.cpp and llama.cpp PRs: which checkpoint goes --------------------------------------

def variance_victim(ks: list[int], protected: list[bool]) -> int:
    """ik_llama.cpp's variance eviction (ik#2020) with the prompt-end checkpoints kept (ik#2491).

    Removing interior point i merges its two gaps; the span, so the mean gap, stays, and the sum
    of squares grows by 2 x the gaps' product: the least variance removes the least product. The
    first and last stay; protected points only go when nothing else can."""
    n = len(ks)
    if n < 3:
        return 0
    order = sorted(range(n), key=ks.__getitem__)
    cands = []
    for j in range(1, n - 1):
        i = order[j]
        g0, g1 = ks[i] - ks[order[j - 1]], ks[order[j + 1]] - ks[i]
        cands.append((protected[i], g0 * g1, j, i))
    return min(cands)[3]


def nearest_neighbour_victim(ks: list[int], new_k: int) -> int:
    """#25592: the checkpoint nearest to a neighbour (the new one counts as the last neighbour);
    ties: the one whose removal leaves the smaller gap. The earliest stays as the anchor."""
    order = sorted(range(len(ks)), key=ks.__getitem__)
    pts = [ks[i] for i in order] + [new_k]
    if len(pts) < 3:
        return 0
    best = None
    for j in range(1, len(order)):
        key = (min(pts[j] - pts[j - 1], pts[j + 1] - pts[j]), pts[j + 1] - pts[j - 1], j)
        if best is None or key < best[0]:
            best = (key, order[j])
    return best[1]


def densest_interior_victim(ks: list[int], new_k: int) -> int:
    """#24035: the interior checkpoint in the densest region (the smallest gap left by removing
    it); the earliest and the most recent existing checkpoints stay."""
    order = sorted(range(len(ks)), key=ks.__getitem__)
    pts = [ks[i] for i in order] + [new_k]
    if len(order) < 3:
        return order[0] if order else 0
    j = min(range(1, len(order) - 1), key=lambda j: (pts[j + 1] - pts[j - 1], j))
    return order[j]
