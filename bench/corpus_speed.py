"""Benchmark: the kv-cache-tester corpus goals of issue 15 -- import, sweep, recommend.

    python bench/corpus_speed.py [--corpus DIR] [--jobs 2] [--repeat 3]

``DIR`` holds kv-cache-tester conversations (``*.json``; default: ``../shared/corpus/traces/
weka-sample``, the 24-file sample beside the project's own checkout). As ``ckptsim import weka
DIR -o corpus.jsonl`` does, the conversations become one trace, then:

- import: ``ingest.weka.import_weka`` of every file into that trace;
- sweep: 8 policies x 6 ``--ctx-checkpoints`` on it (``sweep.run_sweep``, ``--jobs``);
- recommend: ``recommend.recommend(..., ram_mib=16000)`` on it.

Each figure is the best of ``--repeat`` runs, printed beside the issue's goal for the full corpus
(710 traces, 49,334 requests) and that goal scaled to this corpus's requests (the work grows
about linearly with requests; the full corpus measured 48.5 s, 80.6 s and
214 s in the issue), with the share of the sweep's simulation time per policy.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))       # this checkout's ckptsim

FULL_REQUESTS = 49_334
GOALS_S = {"import": 20.0, "sweep": 20.0, "recommend": 45.0}
POLICIES = ["none", "fifo", "per-batch", "every-n:n=4096", "user-turn", "coverage", "llama-server", "oracle"]
CAPS = (4, 8, 16, 32, 64, 128)


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "traces" / "weka-sample")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out (import,sweep,recommend)")
    a = ap.parse_args()
    from ckptsim.ingest.weka import import_weka
    from ckptsim.recommend import recommend
    from ckptsim.sweep import expand, run_sweep
    from ckptsim.trace import load_trace
    files = sorted(a.corpus.glob("*.json"))
    if not files:
        raise SystemExit(f"no kv-cache-tester files (*.json) under {a.corpus}")
    skip = set(filter(None, a.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        path = out / "corpus.jsonl"
        t_import, _ = best_of(lambda: import_weka(files, path, overwrite=True), a.repeat if "import" not in skip else 1)
        trace = load_trace(path)
        n_req, tokens = len(trace), trace.total_prompt_tokens()
        scale = n_req / FULL_REQUESTS
        print(f"corpus: {len(files)} conversations under {a.corpus} -> one trace of {n_req:,} requests, "
              f"{tokens / 1e9:.2f} G prompt tokens ({scale:.1%} of the full corpus's requests); "
              f"{a.jobs} jobs, best of {a.repeat}")
        print(f"{'step':44} {'seconds':>8}  {'goal (full)':>11}  {'goal (scaled)':>13}")

        def row(step: str, key: str, t: float) -> None:
            g = GOALS_S[key]
            print(f"{step:44} {t:8.2f}  {g:10.0f}s  {g * scale:12.2f}s  "
                  f"{'met' if t < g * scale else 'NOT met'} (scaled)")

        if "import" not in skip:
            row(f"import ({len(files)} files)", "import", t_import)
        if "sweep" not in skip:
            tasks = expand([str(path)], POLICIES, CAPS)
            t_sweep, df = best_of(lambda: run_sweep(tasks, jobs=a.jobs), a.repeat)
            row(f"sweep {len(POLICIES)} policies x {len(CAPS)} caps ({len(tasks)} rows, "
                f"{int((~df['reused']).sum())} runs)", "sweep", t_sweep)
            share = df.groupby("policy_name")["wall_s"].sum().sort_values(ascending=False)
            total = share.sum()
            print("    simulation time per policy (CPU s, all jobs): " +
                  ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in share.items()))
        if "recommend" not in skip:
            t_rec, rec = best_of(lambda: recommend([str(path)], ram_mib=16000, jobs=a.jobs),
                                 a.repeat)
            row("recommend --ram-mib 16000", "recommend", t_rec)
            print(f"    -> {rec.command_line}")


if __name__ == "__main__":
    main()
