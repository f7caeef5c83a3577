"""Where a policy's checkpoints meet the prompt cache: the figures behind docs/policies.md's
explanations of `ik-llama` and `pr25592` on elided SWE and of `none` against `adaptive` on the
un-elided SWE trace.

    python bench/cache_pressure.py traces/real/mini-swe-agent-gemini3pro-elide5.derived.jsonl.gz \\
        --policies 'llama-server;ik-llama;pr25592;none' --cache-ram 8192,-1
    python bench/cache_pressure.py traces/real/mini-swe-agent-gemini3pro.jsonl.gz --policies 'none;adaptive;llama-server'

One replay per (policy, --cache-ram) with the README's flags (-np 1 -ctxcp 32 -b 2048 -ub 512,
profile qwen35-35b-a3b-pr19970), events recorded. Per run: re-processed tokens, restores, full
re-processes (a search found no usable checkpoint), prompt-cache loads and evictions, and what a
prompt-cache entry holds on average when it is saved: its size and how many checkpoints
(checkpoint MiB = entry MiB - the KV state of its tokens, over one checkpoint's size); 8192 over
the entry size is about how many conversations the cache holds. An unlimited cache (-1) takes
minutes per policy on the 500-session traces.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ckptsim.cost import load_profile  # noqa: E402
from ckptsim.records import EventKind  # noqa: E402
from ckptsim.sim import ServerConfig, simulate  # noqa: E402
from ckptsim.trace import load_trace  # noqa: E402


def measure(trace, policy: str, cache_ram: float, n_slots: int, profile) -> dict:
    run = simulate(trace, policy, ServerConfig(n_slots=n_slots, cache_ram_mib=cache_ram), profile)
    s = run.summary()
    saves = [e for e in run.events if e.kind == EventKind.CACHE_SAVE]
    n = len(saves)
    entry_mib = sum(e.size_mib for e in saves) / n if n else 0.0
    state_mib = sum(profile.state_mib(e.n_tokens) for e in saves) / n if n else 0.0
    return {"policy": policy, "cache_ram": cache_ram, "reprocessed": s["reprocessed_tokens"],
            "restores": s["restores"], "full": s["full_reprocess"], "loads": s["cache_loads"],
            "evictions": sum(1 for e in run.events if e.kind == EventKind.CACHE_EVICT),
            "entry_mib": entry_mib, "ckpts_per_entry": (entry_mib - state_mib) / profile.ckpt_mib(0),
            "slot_ckpts": sum(r.ckpt_mib_after for r in run.results) / max(1, len(run.results))
            / profile.ckpt_mib(0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--policies", default="llama-server;none;adaptive", help="';'-separated specs")
    ap.add_argument("--cache-ram", default="8192", help="comma-separated MiB (-1: unlimited)")
    ap.add_argument("-np", type=int, default=1)
    a = ap.parse_args()
    trace = load_trace(a.trace)
    profile = load_profile(None)
    print(f"**{trace.name}** (-np {a.np} -ctxcp 32, {len(trace):,} requests)\n")
    print("| policy | --cache-ram | re-processed tokens | restores | full re-processes | cache loads | "
          "cache evictions | entry MiB (mean) | checkpoints per entry | checkpoints per slot |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cr in [float(x) for x in a.cache_ram.split(",")]:
        for pol in [p.strip() for p in a.policies.split(";") if p.strip()]:
            t0 = time.time()
            m = measure(trace, pol, cr, a.np, profile)
            print(f"  {pol} --cache-ram {cr:g}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            print(f"| `{pol}` | {cr:g} | {m['reprocessed']:,} | {m['restores']:,} | {m['full']:,} | "
                  f"{m['loads']:,} | {m['evictions']:,} | {m['entry_mib']:,.0f} | {m['ckpts_per_entry']:.1f} | "
                  f"{m['slot_ckpts']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
