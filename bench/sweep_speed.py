"""Benchmark: 6 policies x 6 --ctx-checkpoints budgets over a 10k-request synthetic trace.

Target (issue 5): under a minute on 2 cores. Run: ``python bench/sweep_speed.py [--jobs 2]``.
Prints one row per simulation (its own wall time) and the total.

``--policies 'none;fifo'`` sweeps other specs; ``--no-reuse`` simulates every row even where a
run stands for several (``sweep.run_key``: the figures of the implementation before that);
``--cluster tcp://host:port`` runs on a Dask cluster, ``--cluster local`` on a local one of
``--jobs`` worker processes started here (its start-up time is printed apart).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from ckptsim.sweep import expand, run_sweep

POLICIES = ["fifo", "every-n:n=4096", "user-turn", "coverage", "llama-server", "oracle"]
BUDGETS = (4, 8, 16, 32, 64, 128)
GOAL_S = 60.0


def make_trace(path: Path, n_requests: int) -> None:
    """A seeded 10k-request coding-agent trace (synthetic, agent-edit kind)."""
    from ckptsim.synth import write_synth
    write_synth(str(path), "agent-edit", n_requests, seed=1, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--trace", type=Path, default=None, help="use this trace instead of generating one")
    ap.add_argument("--policies", default=";".join(POLICIES), help="';'-separated policy specs")
    ap.add_argument("--no-reuse", action="store_true", help="simulate every row (no shared runs)")
    ap.add_argument("--cluster", default=None, help="tcp://host:port, or 'local' to start one here")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(";") if p.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.trace or Path(tmp) / "agent-edit-10k.jsonl"
        if args.trace is None:
            t0 = time.perf_counter()
            make_trace(path, args.requests)
            print(f"generated {path.name} in {time.perf_counter() - t0:.1f} s")
        tasks = expand([path], policies, BUDGETS)
        with _cluster(args.cluster, args.jobs) as address:
            t0 = time.perf_counter()
            df = run_sweep(tasks, jobs=args.jobs, cluster=address, reuse=not args.no_reuse)
            wall = time.perf_counter() - t0
    cols = ["policy", "ctx_checkpoints", "reprocessed_tokens", "prefill_s", "wall_s"]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:,.2f}"))
    where = f"{args.jobs} processes" if args.cluster is None else f"cluster {args.cluster}"
    print(f"\n{len(tasks)} rows ({int((~df['reused']).sum())} simulated) of {args.requests:,} requests on "
          f"{where} ({os.cpu_count()} cores here): {wall:.1f} s wall, {df['wall_s'].sum():.1f} s CPU in simulate")
    print(f"goal (issue 5): < {GOAL_S:.0f} s on 2 cores: {'met' if wall < GOAL_S else 'NOT met'}; "
          f"before issue 15: 31-33 s (its quadratic lower bound took ~17 s per process at 10k requests)")


@contextlib.contextmanager
def _cluster(spec: str | None, jobs: int):
    """The address to run on: None (local processes), the one given, or a LocalCluster started here."""
    if spec != "local":
        yield spec
        return
    from distributed import LocalCluster
    t0 = time.perf_counter()
    with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        print(f"LocalCluster of {jobs} worker processes started in {time.perf_counter() - t0:.1f} s")
        yield c.scheduler_address


if __name__ == "__main__":
    main()
