"""Hypothesis strategies shared by the property tests: random but valid traces."""
from __future__ import annotations

from hypothesis import strategies as st

from ckptsim.records import Request
from ckptsim.trace import Trace, TraceHeader


@st.composite
def traces(draw, max_requests: int = 12, max_len: int = 6000, n_sessions: int = 2):
    """Traces whose prefix structure is consistent: S_r = S_parent[:n_shared] + fresh tokens."""
    n = draw(st.integers(1, max_requests))
    reqs: list[Request] = []
    t = 0.0
    for i in range(n):
        n_prompt = draw(st.integers(1, max_len))
        n_output = draw(st.integers(0, 300))
        parent, n_shared = -1, 0
        if i and draw(st.booleans()):
            parent = draw(st.integers(0, i - 1))
            p = reqs[parent]
            n_shared = draw(st.integers(0, min(n_prompt, p.n_prompt + p.n_output)))
        inherited = tuple(u for u in (reqs[parent].user_starts if parent >= 0 else ()) if u < n_shared)
        new = sorted(set(draw(st.lists(st.integers(n_shared, n_prompt - 1), max_size=4)))) \
            if n_shared < n_prompt else []
        t += draw(st.floats(0, 5))
        reqs.append(Request(i, f"s{draw(st.integers(0, n_sessions - 1))}", t, n_prompt, n_output,
                            parent, n_shared, inherited + tuple(new)))
    return Trace(TraceHeader(name="hyp"), reqs)


def materialise(trace: Trace) -> list[list[int]]:
    """Explicit token sequences (prompt + output) realising the trace's prefix structure."""
    seqs: list[list[int]] = []
    fresh = 10**9
    for r in trace:
        base = seqs[r.parent][:r.n_shared] if r.parent >= 0 else []
        n_new = r.n_seq - len(base)
        seqs.append(base + list(range(fresh, fresh + n_new)))
        fresh += n_new
    return seqs


def token_lcp(a, b) -> int:
    """Length of the common prefix of two explicit token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
