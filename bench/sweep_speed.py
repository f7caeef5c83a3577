"""Benchmark: 6 policies x 6 --ctx-checkpoints budgets over a 10k-request synthetic trace.

Target (issue 5): under a minute on 2 cores. Run: ``python bench/sweep_speed.py [--jobs 2]``.
Prints one row per simulation (its own wall time) and the total.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from ckptsim.sweep import expand, run_sweep

POLICIES = ["fifo", "every-n:n=4096", "user-turn", "coverage", "llama-server", "oracle"]
BUDGETS = (4, 8, 16, 32, 64, 128)


def make_trace(path: Path, n_requests: int) -> None:
    """A seeded 10k-request coding-agent trace (synthetic, agent-edit kind)."""
    from ckptsim.synth import write_synth
    write_synth(str(path), "agent-edit", n_requests, seed=1, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--trace", type=Path, default=None, help="use this trace instead of generating one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.trace or Path(tmp) / "agent-edit-10k.jsonl"
        if args.trace is None:
            t0 = time.perf_counter()
            make_trace(path, args.requests)
            print(f"generated {path.name} in {time.perf_counter() - t0:.1f} s")
        tasks = expand([path], POLICIES, BUDGETS)
        t0 = time.perf_counter()
        df = run_sweep(tasks, jobs=args.jobs)
        wall = time.perf_counter() - t0
    cols = ["policy", "ctx_checkpoints", "reprocessed_tokens", "prefill_s", "wall_s"]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:,.2f}"))
    print(f"\n{len(tasks)} simulations of {args.requests:,} requests on {args.jobs} processes "
          f"({os.cpu_count()} cores here): {wall:.1f} s wall, {df['wall_s'].sum():.1f} s CPU in simulate")


if __name__ == "__main__":
    main()
