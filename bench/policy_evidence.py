"""Every policy over the real traces at equal memory, with bootstrap intervals from resampling
sessions: the evidence table of docs/policies.md.

    python bench/policy_evidence.py                                  # all of traces/real/, -np 1 -ctxcp 32
    python bench/policy_evidence.py --fast                           # the small traces only
    python bench/policy_evidence.py -np 4 traces/real/X.jsonl.gz
    python bench/policy_evidence.py --fast --ctx-checkpoints 2,4,8,16,32 --csv curves.csv --plot curves.png

Each (trace, policy, --ctx-checkpoints) is replayed once, with the README's default flags
(-b 2048 -ub 512 --cache-ram 8192, profile qwen35-35b-a3b-pr19970) and the same cap for every
policy. Per session it sums re-processed tokens and prompt time (prefill + restore + create).
"X vs Y" is sum_X / sum_Y - 1 over the sessions; its 95% interval comes from ``--boot`` resamples
of the sessions with replacement (numpy, ``--seed``), printed as "-12.0% ± 3.1%" (half the
interval's width) with the interval beside it. Sessions share the slots and the prompt cache,
so a resample reuses each session's cost from the one replay of the whole trace: the interval
covers which sessions a workload has, not how they would interact in another mix.

Held-back sessions: the tuning half is the sessions whose CRC-32 of the name is even; the rest
are held back. Every table prints all sessions, then both halves. How far ``adaptive``'s defaults
kept to that split is told in docs/policies.md, "adaptive" (not entirely: read it there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ckptsim.sim import ServerConfig, simulate  # noqa: E402
from ckptsim.trace import load_trace  # noqa: E402

# The field's policies as bench/real_table.py runs them (engine defaults, vLLM's current retention
# default and its shared-prefix checkpoint).
FIELD = ["vllm-all", "vllm-align", "vllm-align:retention=0,shared=1", "vllm-align:retention=0,shared=1,unit=64",
         "sglang-no-buffer", "sglang-extra-buffer", "marconi", "ik-llama", "pr25592", "pr24035",
         "pr25472-half-step"]
ONLINE = ["none", "fifo", "per-batch", "every-n:n=4096", "user-turn", "coverage", "llama-server", *FIELD, "adaptive"]
REFERENCE = "llama-server"
FAST = ["swe-agent-marshmallow-1867-elision.jsonl", "mini-swe-agent-gemini3pro-s40-elide5.derived.jsonl",
        "mini-swe-agent-gemini3pro-s40.jsonl", "weka-sample.jsonl", "weka-sample-strict.jsonl",
        "mooncake-synthetic.jsonl"]


def tune_half(session: str) -> bool:
    """The declared tuning half: sessions whose CRC-32 of the name is even."""
    return zlib.crc32(session.encode()) % 2 == 0


def per_session(run) -> dict[str, tuple[int, float]]:
    """session -> (re-processed tokens, prompt seconds)."""
    out: dict[str, list] = {}
    for r in run.results:
        acc = out.setdefault(r.session, [0, 0.0])
        acc[0] += r.n_reprocessed
        acc[1] += (r.prefill_ms + r.restore_ms + r.create_ms) / 1000.0
    return {s: (a[0], a[1]) for s, a in out.items()}


def bootstrap_ratio(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(point, lo, hi) of sum(x)/sum(y) - 1 over sessions, 95% percentile interval."""
    point = x.sum() / y.sum() - 1.0 if y.sum() > 0 else float("nan")
    if len(x) < 2:
        return point, point, point
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    ys = y[idx].sum(axis=1)
    ratios = np.where(ys > 0, x[idx].sum(axis=1) / np.where(ys > 0, ys, 1) - 1.0, np.nan)
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def fmt_ci(point: float, lo: float, hi: float) -> str:
    return f"{point:+.1%} ± {(hi - lo) / 2:.1%} [{lo:+.1%}, {hi:+.1%}]"


def run_trace(path: Path, policies: list[str], caps: list[int], n_slots: int, oracle: bool) -> list[dict]:
    trace = load_trace(path)
    rows = []
    for cap in caps:
        cfg = ServerConfig(n_slots=n_slots, ctx_checkpoints=cap)
        for pol in policies + (["oracle"] if oracle else []):
            t0 = time.time()
            run = simulate(trace, pol, cfg, None, record_events=False)
            s = run.summary()
            rows.append({"trace": trace.name, "policy": pol, "ctx_checkpoints": cap, "n_slots": n_slots,
                         "reprocessed_tokens": s["reprocessed_tokens"],
                         "prompt_s": s["prefill_s"] + s["restore_s"] + s["create_s"],
                         "peak_ckpt_mib": s["peak_ckpt_mib"], "sessions": per_session(run)})
            print(f"  {trace.name} {pol} -ctxcp {cap}: {s['reprocessed_tokens']:,} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return rows


def compare_rows(rows: list[dict], target: str, metric: int, n_boot: int, seed: int) -> list[dict]:
    """``target`` against every other policy per (trace, cap), on all / tuning / held-back sessions."""
    out = []
    for (trace, cap) in sorted({(r["trace"], r["ctx_checkpoints"]) for r in rows}):
        grp = {r["policy"]: r for r in rows if r["trace"] == trace and r["ctx_checkpoints"] == cap}
        if target not in grp:
            continue
        sess = sorted(grp[target]["sessions"])
        for pol, r in grp.items():
            if pol == target:
                continue
            row = {"trace": trace, "ctx_checkpoints": cap, "vs": pol}
            for split, keep in (("all", lambda s: True), ("tune", tune_half), ("held", lambda s: not tune_half(s))):
                ss = [s for s in sess if keep(s)]
                x = np.array([grp[target]["sessions"][s][metric] for s in ss], float)
                y = np.array([r["sessions"].get(s, (0, 0.0))[metric] for s in ss], float)
                rng = np.random.default_rng(seed)
                row[split] = bootstrap_ratio(x, y, n_boot, rng) if len(ss) else (float("nan"),) * 3
                row[f"n_{split}"] = len(ss)
            out.append(row)
    return out


def print_brief(rows: list[dict], comps: list[dict], target: str, metric: int, n_slots: int) -> None:
    """A row per (trace, cap): the reference, the target, the oracle, target vs reference per half."""
    key = "reprocessed_tokens" if metric == 0 else "prompt_s"
    print(f"| trace (-np {n_slots}) | -ctxcp | sessions | `{REFERENCE}` | `{target}` | oracle | "
          f"{target} vs {REFERENCE}, all sessions | tuning half | held-back half |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (trace, cap) in sorted({(r["trace"], r["ctx_checkpoints"]) for r in rows}):
        grp = {r["policy"]: r for r in rows if r["trace"] == trace and r["ctx_checkpoints"] == cap}
        c = next((c for c in comps if c["trace"] == trace and c["ctx_checkpoints"] == cap
                  and c["vs"] == REFERENCE), None)
        if target not in grp or REFERENCE not in grp or c is None:
            continue
        orc = f"{grp['oracle'][key]:,.0f}" if "oracle" in grp else "–"
        cells = [fmt_ci(*c[s]) if c[f"n_{s}"] else "–" for s in ("all", "tune", "held")]
        print(f"| {trace} | {cap} | {len(grp[target]['sessions'])} | {grp[REFERENCE][key]:,.0f} | "
              f"{grp[target][key]:,.0f} | {orc} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="*")
    ap.add_argument("-np", type=int, default=1)
    ap.add_argument("--ctx-checkpoints", default="32", help="comma-separated caps (the curves)")
    ap.add_argument("--policies", default=";".join(ONLINE),
                    help="comma-separated specs (';' when a spec has commas)")
    ap.add_argument("--target", default="adaptive", help="the policy every other one is compared with")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--metric", choices=["tokens", "prompt_s"], default="tokens")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--fast", action="store_true", help="only the small traces")
    ap.add_argument("--csv", help="write one row per (trace, policy, cap) here")
    ap.add_argument("--plot", help="write the cost-vs-memory curves here (ckptsim.plots.policy_curves)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    ap.add_argument("--brief", action="store_true",
                    help=f"one table: a row per trace, the target against {REFERENCE} (and the oracle)")
    a = ap.parse_args()
    try:
        caps = [int(x) for x in a.ctx_checkpoints.split(",") if x.strip()]
    except ValueError:
        ap.exit(2, f"--ctx-checkpoints: expected comma-separated integers, got {a.ctx_checkpoints!r}\n")
    if not caps or min(caps) < 1 or a.np < 1 or a.boot < 1:
        ap.exit(2, "--ctx-checkpoints, -np and --boot must be >= 1\n")
    real = REPO / "traces" / "real"
    paths = [Path(p) for p in a.traces] or (
        [real / f for f in FAST] if a.fast else sorted(real.glob("*.jsonl*")))
    for p in paths:
        if not p.exists():
            ap.exit(2, f"{p}: no such trace\n")
    policies = [p.strip() for p in a.policies.split(";" if ";" in a.policies else ",") if p.strip()]
    rows = []
    for p in paths:
        rows += run_trace(p, policies, caps, a.np, not a.no_oracle)
    metric = 0 if a.metric == "tokens" else 1
    comps = compare_rows(rows, a.target, metric, a.boot, a.seed)
    if a.csv:
        import pandas as pd
        pd.DataFrame([{k: v for k, v in r.items() if k != "sessions"} for r in rows]).to_csv(a.csv, index=False)
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        from ckptsim.plots import policy_curves
        import pandas as pd
        fig = policy_curves(pd.DataFrame([{k: v for k, v in r.items() if k != "sessions"} for r in rows]),
                            "reprocessed_tokens" if metric == 0 else "prompt_s")
        fig.savefig(a.plot, dpi=80)
    if a.json:
        print(json.dumps({"runs": [{k: v for k, v in r.items() if k != "sessions"} for r in rows],
                          "comparisons": comps, "metric": a.metric, "boot": a.boot, "seed": a.seed}))
        return
    name = "re-processed tokens" if metric == 0 else "prompt s"
    if a.brief:
        print_brief(rows, comps, a.target, metric, a.np)
        return
    for (trace, cap) in sorted({(r["trace"], r["ctx_checkpoints"]) for r in rows}):
        grp = [r for r in rows if r["trace"] == trace and r["ctx_checkpoints"] == cap]
        print(f"**{trace}** (-np {a.np} -ctxcp {cap}, {len(grp[0]['sessions'])} sessions)\n")
        print(f"| policy | {name} | {a.target} vs it, all sessions | tuning half | held-back half |")
        print("|---|---:|---:|---:|---:|")
        for r in grp:
            c = next((c for c in comps if c["trace"] == trace and c["ctx_checkpoints"] == cap
                      and c["vs"] == r["policy"]), None)
            val = r["reprocessed_tokens"] if metric == 0 else r["prompt_s"]
            cells = [fmt_ci(*c[s]) if c[f"n_{s}"] else "–" for s in ("all", "tune", "held")] if c else ["–"] * 3
            print(f"| `{r['policy']}` | {val:,.0f} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
