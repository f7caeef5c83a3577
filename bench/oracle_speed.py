"""Benchmark: the oracle policy's requests per second on a 10k-request agent-edit trace.

Goal (issue 15): >= 30,000 requests/s on the 2-core machine. Prints, best of ``--repeat``:

- cold: a first oracle run (the shadow replay without checkpoints, the plan, and the run, which
  with a finite ``--cache-ram`` is the fallback check's trial replay);
- three replays: the same with the run replayed once more after the trial, as before issue 15
  (forced here with an empty ``Seeding``, which changes nothing in a replay but is not handed a
  replay ``prepare`` made);
- warm: another cap with the shadow and plan held (every later cap of a sweep);
- the phases of a cold run: shadow replay, plan (``plan_uses``), the run's replay.

Run from the repository root: ``python bench/oracle_speed.py [--requests 10000] [--slots 1]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))       # this checkout's ckptsim

from ckptsim import oracle  # noqa: E402
from ckptsim.cost import load_profile  # noqa: E402
from ckptsim.sim import Seeding, ServerConfig, simulate  # noqa: E402
from ckptsim.synth import generate  # noqa: E402
from ckptsim.trace import Trace, TraceHeader  # noqa: E402

GOAL_RPS = 30_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--kind", default="agent-edit")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    trace = Trace(TraceHeader(name=a.kind), generate(a.kind, a.requests, a.seed))
    prof = load_profile(None)
    cfg = ServerConfig(n_slots=a.slots)
    n = len(trace)

    def timed(fn, cold: bool = True) -> tuple[float, object]:
        best, out = float("inf"), None
        for _ in range(a.repeat):
            if cold:
                oracle._SHADOWS.clear()
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_cold, run = timed(lambda: simulate(trace, "oracle", cfg, prof, record_events=False))
    t_three, run3 = timed(lambda: simulate(trace, "oracle", cfg, prof, record_events=False,
                                           seeding=Seeding({}, {})))
    assert run3.results == run.results
    simulate(trace, "oracle", cfg, prof, record_events=False)        # holds the shadow and plan
    t_warm, _ = timed(lambda: simulate(trace, "oracle", ServerConfig(n_slots=a.slots, ctx_checkpoints=8), prof,
                                       record_events=False), cold=False)
    t_shadow, shadow = timed(lambda: simulate(trace, "none", oracle.shadow_config(cfg), prof, record_events=True))
    t_plan, _ = timed(lambda: oracle.plan_uses(trace, shadow))
    print(f"oracle on {a.kind}, {n:,} requests, -np {a.slots}, --cache-ram {cfg.cache_ram_mib:g}; best of {a.repeat}")
    print(f"{'run':44} {'seconds':>8} {'requests/s':>11}")
    for label, t in (("cold (shadow + plan + run)", t_cold), ("three replays (as before issue 15)", t_three),
                     ("warm (shadow and plan held: a sweep's next cap)", t_warm)):
        print(f"{label:44} {t:8.2f} {n / t:11,.0f}")
    print(f"goal >= {GOAL_RPS:,} requests/s: {'met' if n / t_cold >= GOAL_RPS else 'NOT met'} cold "
          f"({n / t_cold / GOAL_RPS:.0%} of it), {'met' if n / t_warm >= GOAL_RPS else 'NOT met'} warm; "
          f"{t_three / t_cold:.2f}x faster than three replays")
    rest = max(0.0, t_cold - t_shadow - t_plan)
    print(f"phases of a cold run: shadow replay {t_shadow:.2f} s ({t_shadow / t_cold:.0%}), plan {t_plan:.2f} s "
          f"({t_plan / t_cold:.0%}), the run's replay and the rest {rest:.2f} s ({rest / t_cold:.0%})")


if __name__ == "__main__":
    main()
