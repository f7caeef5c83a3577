"""Peak memory (RSS) of loading and replaying large synthetic agent traces; prints a table.

    python bench/scale.py [--requests 100000,300000] [--million] [--policy llama-server]

Each size runs in a fresh Python process, so its peak resident set size (`ru_maxrss`) is its
own and not the high-water mark of an earlier, larger step. A row generates the agent-edit
trace straight into a `Trace` (requests stream into typed arrays; no list of records is ever
held), then replays it once under the policy without event records, as `simulate --no-events`
would. The "imports" row is the interpreter with numpy, pandas and ckptsim loaded and nothing
else: the fixed cost every row includes. Issue #15's goal: a 1M-request trace in < 1 GB.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

_CHILD = r"""
import json, resource, sys, time
import ckptsim.sim, ckptsim.trace, ckptsim.synth, pandas  # the fixed cost every row pays
n, kind, policy = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {"n": n}
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
out["imports_mib"] = rss_mib()
if n:
    from ckptsim.sim import ServerConfig, simulate
    from ckptsim.synth import generate
    from ckptsim.trace import Trace, TraceHeader
    t0 = time.perf_counter()
    trace = Trace(TraceHeader(name=kind), generate(kind, n, 1))
    out["load_s"] = time.perf_counter() - t0
    out["load_mib"] = rss_mib()
    out["prompt_tokens"] = trace.total_prompt_tokens()
    t0 = time.perf_counter()
    run = simulate(trace, policy, ServerConfig(n_slots=1), None, record_events=False)
    out["replay_s"] = time.perf_counter() - t0
    out["reprocessed"] = int(run.summary()["reprocessed_tokens"])
    out["peak_mib"] = rss_mib()
print(json.dumps(out))
"""


def _run(n: int, kind: str, policy: str) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, str(n), kind, policy],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"the {n:,}-request run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run each size in its own process and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="100000,300000",
                    help="Comma-separated trace sizes (requests).")
    ap.add_argument("--million", action="store_true", help="Add the 1,000,000-request row.")
    ap.add_argument("--kind", default="agent-edit")
    ap.add_argument("--policy", default="llama-server")
    a = ap.parse_args()
    sizes = [int(s) for s in a.requests.split(",") if s.strip()]
    if a.million and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    base = _run(0, a.kind, a.policy)["imports_mib"]
    print(f"trace kind {a.kind}, policy {a.policy}, -np 1, one process per row; "
          f"goal: 1M requests in < 1 GB (1024 MiB)")
    print(f"{'requests':>10} {'M prompt tok':>13} {'load s':>7} {'replay s':>9} {'req/s':>8} "
          f"{'RSS after load MiB':>19} {'peak RSS MiB':>13} {'KiB/request':>12}")
    print(f"{'imports':>10} {'':>13} {'':>7} {'':>9} {'':>8} {base:19.0f} {base:13.0f} {'':>12}")
    t_all = time.perf_counter()
    for n in sizes:
        r = _run(n, a.kind, a.policy)
        per_req_kib = (r["peak_mib"] - base) * 1024 / n
        print(f"{n:>10,} {r['prompt_tokens'] / 1e6:13.1f} {r['load_s']:7.1f} {r['replay_s']:9.1f} "
              f"{n / r['replay_s']:8,.0f} {r['load_mib']:19.0f} {r['peak_mib']:13.0f} "
              f"{per_req_kib:12.2f}")
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
