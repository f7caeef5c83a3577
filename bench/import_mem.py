"""Peak memory of importing (and simulating) the public sample traces; prints a markdown table.

    python bench/import_mem.py [--corpus ../shared/corpus/traces]

Imports the kv-cache-tester sample in growing prefixes (6, 12, 24 files) and each Mooncake file,
then simulates the imported traces once with the current llama-server policy. Peak memory is
the Python heap high-water mark (tracemalloc) of each step alone, so the rows can be compared:
an importer that streams keeps it near the size of the largest single input file (one JSON
conversation is parsed whole), not the size of the whole input.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _measure(fn: Callable[[], object]) -> tuple[object, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, peak / 2**20, dt


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus" / "traces")
    ap.add_argument("--no-sim", action="store_true", help="Only measure the importers.")
    args = ap.parse_args()
    from ckptsim.ingest.mooncake import import_mooncake
    from ckptsim.ingest.weka import import_weka
    from ckptsim.trace import load_trace

    weka = sorted((args.corpus / "weka-sample").glob("*.json"))
    moon = [args.corpus / "mooncake" / n for n in ("conversation_trace.jsonl", "synthetic_trace.jsonl")]
    if not weka:
        raise SystemExit(f"no kv-cache-tester files under {args.corpus / 'weka-sample'}")
    rows: list[tuple[str, str, float, float, int, float]] = []
    traces: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (len(weka) // 4, len(weka) // 2, len(weka)):
            files = weka[:k]
            out = Path(tmp) / f"weka-{k}.jsonl"
            stats, peak, dt = _measure(lambda: import_weka(files, out))
            size = sum(f.stat().st_size for f in files) / 2**20
            rows.append(("import weka", f"{k} files", size, max(f.stat().st_size for f in files) / 2**20,
                         stats.n_requests, peak, dt))
        traces.append(out)
        for src in moon:
            if not src.exists():
                continue
            out = Path(tmp) / (src.stem + ".jsonl")
            stats, peak, dt = _measure(lambda: import_mooncake(src, out))
            size = src.stat().st_size / 2**20
            rows.append(("import mooncake", src.name, size, size, stats.n_requests, peak, dt))
            traces.append(out)
        if not args.no_sim:
            from ckptsim.sim import simulate
            for t in traces:
                def run(t=t):
                    trace = load_trace(t)
                    return simulate(trace, "llama-server", record_events=False), len(trace)
                (_, n), peak, dt = _measure(run)
                rows.append(("load + simulate", t.name, t.stat().st_size / 2**20, t.stat().st_size / 2**20,
                             n, peak, dt))
    print("| step | input | input MiB | largest file MiB | requests | peak heap MiB | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for step, what, size, largest, n, peak, dt in rows:
        print(f"| {step} | {what} | {size:.1f} | {largest:.1f} | {n:,} | {peak:.1f} | {dt:.1f} |")


if __name__ == "__main__":
    main()
