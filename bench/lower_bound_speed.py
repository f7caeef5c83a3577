"""Benchmark: the proven lower bound (``oracle.lower_bound``) on a 20k-request agent-edit trace.

Goal (issue 15): < 2 s on the 2-core machine. Prints best of ``--repeat`` for ``best_prefix``
alone and for the whole ``lower_bound`` (best_prefix plus the per-request prefill cost), beside
the goal, and the reference implementation (``tests/test_oracle.py::best_prefix_reference``, the
chain walk it replaced, quadratic) on a small trace of ``--reference-requests`` requests, where
it is cheap; ``--reference`` times the reference on the full trace too (about a minute at 20k).

Run from the repository root: ``python bench/lower_bound_speed.py [--requests 20000]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))       # this checkout's ckptsim (and tests/, for the reference)

import numpy as np  # noqa: E402

from ckptsim import oracle  # noqa: E402
from ckptsim.synth import generate  # noqa: E402
from ckptsim.trace import Trace, TraceHeader  # noqa: E402

GOAL_S = 2.0


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        oracle._BEST.clear()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--kind", default="agent-edit")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reference-requests", type=int, default=2_500)
    ap.add_argument("--reference", action="store_true", help="also time the reference on the full trace")
    a = ap.parse_args()
    from tests.test_oracle import best_prefix_reference

    def make(n: int) -> Trace:
        return Trace(TraceHeader(name=a.kind), generate(a.kind, n, a.seed))

    print(f"{'trace':28} {'what':24} {'seconds':>9}  goal / note")
    small = make(a.reference_requests)
    t_new, b_new = best_of(lambda: oracle.best_prefix(small), a.repeat)
    t_ref, b_ref = best_of(lambda: best_prefix_reference(small), a.repeat)
    assert np.array_equal(b_new, b_ref)
    label = f"{a.kind} {len(small):,}"
    print(f"{label:28} {'best_prefix':24} {t_new:9.3f}  {t_ref / t_new:,.0f}x faster than the reference")
    print(f"{label:28} {'best_prefix (reference)':24} {t_ref:9.3f}  (the chain walk, quadratic)")
    big = make(a.requests)
    label = f"{a.kind} {len(big):,}"
    t_bp, b_big = best_of(lambda: oracle.best_prefix(big), a.repeat)
    t_lb, lb = best_of(lambda: oracle.lower_bound(big), a.repeat)
    print(f"{label:28} {'best_prefix':24} {t_bp:9.3f}")
    print(f"{label:28} {'lower_bound':24} {t_lb:9.3f}  goal < {GOAL_S:.0f} s: "
          f"{'met' if t_lb < GOAL_S else 'NOT met'} ({lb.reprocessed_tokens:,} tokens)")
    if a.reference:
        t0 = time.perf_counter()
        ref = best_prefix_reference(big)
        t_ref_big = time.perf_counter() - t0
        assert np.array_equal(ref, b_big)
        print(f"{label:28} {'best_prefix (reference)':24} {t_ref_big:9.3f}  (one run; equal output)")


if __name__ == "__main__":
    main()
