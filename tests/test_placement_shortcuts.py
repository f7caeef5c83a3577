"""server_placement's shortcuts (skipping plain batches and quiet user starts by bisection) change
no plan: checked against the batch-by-batch loop they replaced, kept here as the reference."""
from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsim.server import PrefillPlan, ServerRules, _placement_single_end, batch_counts, server_placement


def _reference(rules: ServerRules, start: int, n_prompt: int, user_starts: tuple[int, ...],
                     last_k: int | None, n_batch: int, n_ubatch: int, min_step: int,
                     every_n: int, enabled: bool = True,
                     last_user_min_step: int | None = None) -> PrefillPlan:
    """The loop as it was before the shortcuts (0607ec0), one batch at a time."""
    T = n_prompt
    nb = max(1, min(n_batch, max(T, 1)))
    ub = max(1, min(nb, n_ubatch))
    era = rules.era
    if start >= T:
        return PrefillPlan((), 0, 0)
    if not enabled:
        return PrefillPlan((), *batch_counts(start, T, nb, ub))
    if era in ("end", "end-64", "end-batch"):
        return _placement_single_end(rules, start, T, last_k, nb, ub, era)
    # Break points that do not depend on state (#20288): T-(4+ub) and T-4, ascending.
    fixed = (T - min(nb, 4 + ub), T - min(nb, 4))
    # Only the user eras look at user starts (breaks and checkpoints alike).
    users = user_starts if era in ("last-user", "user") else ()
    last_user = users[-1] if users else -1
    every_n_on = rules.every_n and every_n > 0
    user_break_conditional = rules.user_break_conditional
    near_end_exempt = rules.near_end_exempt
    min64 = rules.min64
    out: list[int] = []
    n_batches = n_ubatches = 0
    ub_per_batch = -(-nb // ub)
    pos = start

    def spaced(p: int) -> bool:
        return last_k is None or p > last_k + min_step

    while pos < T:
        # Fast-forward over plain batches: n_batch long, no break point before the next user
        # start or fixed break, and no checkpoint at their start (not a user start, not near the
        # end, no every-n due). The per-batch rules below would only count them.
        if T - ub - pos >= nb:
            j = bisect.bisect_right(users, pos)
            if not (j > 0 and users[j - 1] == pos):
                nxt = users[j] if j < len(users) else T
                for f in fixed:
                    if pos < f < nxt:
                        nxt = f
                        break
                m = (min(nxt, T - ub) - pos) // nb
                if every_n_on:
                    m = min(m, -(-((last_k if last_k is not None else 0) + every_n - pos) // nb))
                if m > 0:
                    pos += m * nb
                    n_batches += m
                    n_ubatches += m * ub_per_batch
        n_start = pos
        end = min(n_start + nb, T)
        for f in fixed:
            if n_start < f < end:
                end = f
                break
        i = bisect.bisect_right(users, n_start)          # users[:i] <= n_start
        if era == "last-user":
            is_user = n_start == last_user
        else:
            is_user = i > 0 and users[i - 1] == n_start
        while i < len(users) and users[i] < end:
            u = users[i]
            if era == "last-user":
                brk = u == last_user
            elif user_break_conditional:
                brk = u == last_user or spaced(u)
            else:
                brk = True
            if brk:
                end = u
                break
            i += 1
        n_ubatches += -(-(end - pos) // ub)
        pos = end
        n_batches += 1
        # Decide whether this batch gets a checkpoint at its start (state before the batch).
        near_end = T < pos + ub
        if era == "last-user" and n_start < last_user:
            # b9315-b9774: a near-end batch gets a checkpoint only after the last user message
            # (spec §3, #22929 row); seen in b9538's log: T=1467, -b 512, last user at 987 -> the
            # batch at T-512 = 955 is near the end but gets none, 987 and 1463 do
            near_end = False
        do = pos == T or is_user or near_end
        if every_n_on and not do and pos != T:
            # b8232 #20087: a mid batch far enough from the last checkpoint gets one.
            do = n_start - (last_k if last_k is not None else 0) >= every_n
        if n_start == 0:
            do = False          # memory empty: pos_min < 0 (spec §2.3)
        if do:
            if era == "near-end":
                if min64:
                    do = n_start >= 64 and (last_k is None or n_start > last_k + 64)
            elif era == "last-user":
                do = spaced(n_start)       # last_user became exempt only in b9775
            else:
                do = (last_k is None
                      or (n_start == last_user
                          and (last_user_min_step is None or n_start > last_k + last_user_min_step))
                      or (near_end and near_end_exempt) or n_start > last_k + min_step)
        if do:
            out.append(n_start)
            last_k = n_start
    return PrefillPlan(tuple(out), n_batches, n_ubatches)


BUILDS = (6685, 6800, 8000, 8250, 8300, 9000, 9320, 9500, 9800, 9950, 10000, 11549)


@st.composite
def _cases(draw):
    T = draw(st.integers(1, draw(st.sampled_from((100, 3000, 40000)))))
    start = draw(st.integers(0, T))
    users = tuple(sorted(set(draw(st.lists(st.integers(0, T - 1), max_size=draw(st.sampled_from((5, 60, 300))))))))
    last_k = draw(st.one_of(st.none(), st.integers(1, max(1, start))))
    return (draw(st.sampled_from(BUILDS)), start, T, users, last_k, draw(st.sampled_from((64, 512, 1000, 2048, 4096))),
            draw(st.sampled_from((16, 128, 333, 512))), draw(st.sampled_from((0, 1, 64, 256, 1000, 8192))),
            draw(st.sampled_from((-1, 0, 512, 8192))), draw(st.sampled_from((None, 0, 100, 4096))))


@settings(max_examples=3000, deadline=None)
@given(_cases())
def test_placement_matches_the_batch_loop(case):
    build, start, T, users, last_k, nb, ub, min_step, every_n, half = case
    rules = ServerRules(build)
    assert server_placement(rules, start, T, users, last_k, nb, ub, min_step, every_n,
                            last_user_min_step=half) == \
        _reference(rules, start, T, users, last_k, nb, ub, min_step, every_n, last_user_min_step=half)
