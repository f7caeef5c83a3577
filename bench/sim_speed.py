"""Requests simulated per second for each policy on a 10k-request synthetic agent trace.

Usage: python bench/sim_speed.py [--requests N] [--kind agent-edit] [--slots 1]
Prints a table; numbers depend on the machine (the CI machine has 2 cores).
"""
from __future__ import annotations

import argparse
import time

from ckptsim.policies import make_policy
from ckptsim.sim import ServerConfig, simulate
from ckptsim.synth import generate
from ckptsim.trace import Trace, TraceHeader

POLICIES = ["none", "fifo", "per-batch", "every-n:n=4096", "user-turn", "coverage",
            "llama-server:version=b9985", "llama-server", "llama-server:version=b8300", "oracle"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--kind", default="agent-edit")
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    t0 = time.perf_counter()
    trace = Trace(TraceHeader(name=a.kind), generate(a.kind, a.requests, a.seed))
    t_gen = time.perf_counter() - t0
    print(f"trace: {a.kind}, {len(trace)} requests, {trace.total_prompt_tokens() / 1e6:.1f} M prompt tokens "
          f"(generated in {t_gen:.2f} s); -np {a.slots}")
    print(f"{'policy':34} {'seconds':>8} {'requests/s':>11} {'re-processed tok':>17}")
    cfg = ServerConfig(n_slots=a.slots)
    for spec in POLICIES:
        try:
            make_policy(spec)
        except ImportError:
            print(f"{spec:34} {'(not available)':>8}")
            continue
        t0 = time.perf_counter()
        run = simulate(trace, spec, cfg, None, record_events=False)
        dt = time.perf_counter() - t0
        print(f"{spec:34} {dt:8.2f} {len(trace) / dt:11,.0f} {run.summary()['reprocessed_tokens']:17,}")


if __name__ == "__main__":
    main()
