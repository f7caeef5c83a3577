"""Requests simulated per second for each policy on a 10k-request synthetic agent trace.

Usage: python bench/sim_speed.py [--requests N] [--kind agent-edit] [--slots 1] [--profile SPEC]
Prints a table; numbers depend on the machine (the CI machine has 2 cores). ``--profile SPEC``
prints, instead, where one policy's replay spends its time (cProfile, own time per function,
the top 15 and the share they leave to the rest): what stands between it and issue #15's goal
of 100k requests/s.
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
    ap.add_argument("--profile", metavar="SPEC", help="Profile one policy's replay instead.")
    a = ap.parse_args()
    t0 = time.perf_counter()
    trace = Trace(TraceHeader(name=a.kind), generate(a.kind, a.requests, a.seed))
    t_gen = time.perf_counter() - t0
    if a.profile:
        _profile(trace, a.profile, ServerConfig(n_slots=a.slots))
        return
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


def _profile(trace: Trace, spec: str, cfg: ServerConfig) -> None:
    import cProfile
    import pstats
    simulate(trace, spec, cfg, None, record_events=False)      # warm: the trie, imports
    t0 = time.perf_counter()
    simulate(trace, spec, cfg, None, record_events=False)
    plain_s = time.perf_counter() - t0
    prof = cProfile.Profile()
    prof.enable()
    simulate(trace, spec, cfg, None, record_events=False)
    prof.disable()
    st = pstats.Stats(prof).stats
    total = sum(v[2] for v in st.values())
    rows = sorted(((v[2], v[0], f"{k[0].split('ckptsim/')[-1]}:{k[1]} {k[2]}") for k, v in st.items()),
                  reverse=True)
    print(f"{spec}: {len(trace) / plain_s:,.0f} requests/s unprofiled ({plain_s * 1e6 / len(trace):.1f} us "
          f"per request); own time per function under cProfile (which inflates calls):")
    print(f"{'own %':>6} {'calls/request':>14}  function")
    for own, calls, name in rows[:15]:
        print(f"{100 * own / total:6.1f} {calls / len(trace):14.2f}  {name}")
    print(f"{100 * sum(r[0] for r in rows[15:]) / total:6.1f} {'':>14}  the other {len(rows) - 15} functions")


if __name__ == "__main__":
    main()
