"""What the oracle does on the real traces: where restores land, how deep edits go, which
checkpoints are ever used. The design of the `adaptive` policy (docs/policies.md, "## adaptive")
rests on these figures.

    python bench/oracle_analysis.py                       # every trace in traces/real/, -np 1
    python bench/oracle_analysis.py --fast                # the small traces only
    python bench/oracle_analysis.py traces/real/X.jsonl -np 4

Per trace it prints, for the requests whose restore search runs (edits, truncations, resends):
- the *need* (the largest position a checkpoint may sit at to serve the request, read off a
  replay without checkpoints): how far below the end of the slot's previous prompt it lies
  (tokens, and user/tool messages), and how far above the nearest message start below it;
- what the oracle keeps: checkpoints created, how many are ever restored, how many requests
  pass between creation and restore, where the restored ones sit (a message start, the end of
  a prompt, elsewhere).
Server flags are the README's defaults (-np 1 -ctxcp 32 -b 2048 -ub 512 --cache-ram 8192).
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ckptsim.oracle import predict_needs  # noqa: E402
from ckptsim.records import EventKind  # noqa: E402
from ckptsim.sim import ServerConfig, simulate  # noqa: E402
from ckptsim.trace import load_trace  # noqa: E402

FAST = ["swe-agent-marshmallow-1867-elision.jsonl", "mini-swe-agent-gemini3pro-s40-elide5.derived.jsonl",
        "mini-swe-agent-gemini3pro-s40.jsonl", "weka-sample.jsonl"]


def pct(xs, qs=(10, 50, 90)) -> str:
    if len(xs) == 0:
        return "-"
    a = np.asarray(xs)
    return " / ".join(f"{np.percentile(a, q):,.0f}" for q in qs)


def analyse(path: Path, n_slots: int) -> None:
    trace = load_trace(path)
    cfg = ServerConfig(n_slots=n_slots)
    shadow = simulate(trace, "none", dataclasses.replace(cfg, ctx_checkpoints=0), None)
    needs = predict_needs(trace, shadow)
    T = trace.n_prompt
    bounds = [sorted(set(trace.user_starts[r]) | set(trace.tool_starts[r])) for r in range(len(trace))]
    search = [(r, nd) for r, nd in needs.items() if nd.need > 0 and nd.src >= 0]
    resend = sum(1 for r, nd in search if nd.need == T[r] - 1)
    edits = [(r, nd) for r, nd in search if nd.need < T[r] - 1]
    depth_tok, depth_msg, above_bound, at_prev_end = [], [], [], 0
    for r, nd in edits:
        src_T = int(T[nd.src])
        if nd.need >= src_T:
            at_prev_end += 1          # the need lies in the source's output: its prompt end serves it
            continue
        depth_tok.append(src_T - nd.need)
        b = bounds[nd.src]
        depth_msg.append(len(b) - bisect.bisect_right(b, nd.need))
        own = bounds[r]
        i = bisect.bisect_right(own, nd.need) - 1
        above_bound.append(nd.need - own[i] if i >= 0 else nd.need)
    n = len(trace)
    print(f"## {trace.name} ({n:,} requests, {int(T.sum()):,} prompt tokens, -np {n_slots})")
    print(f"searching requests: {len(search):,} ({len(search) / n:.1%}); fully cached resends {resend:,}; "
          f"edits {len(edits):,}, of which {at_prev_end:,} need only the previous prompt's end")
    if depth_tok:
        dm = Counter(depth_msg)
        top = ", ".join(f"{k}: {v / len(depth_msg):.0%}" for k, v in sorted(dm.items(), key=lambda kv: -kv[1])[:6])
        ab = np.asarray(above_bound)
        print(f"edit depth below the previous prompt's end, tokens p10/p50/p90: {pct(depth_tok)}")
        print(f"edit depth in messages (user/tool starts above the need): {top}")
        print(f"need above the nearest message start below it: <=16 tokens {np.mean(ab <= 16):.0%}, "
              f"<=256 {np.mean(ab <= 256):.0%}; p50 {np.median(ab):,.0f}")
    # consecutive needs of one session: does the edit point move forward?
    by_sess: dict[str, list[int]] = {}
    for r, nd in sorted(edits):
        by_sess.setdefault(trace.session[r], []).append(nd.need)
    steps = [b - a for xs in by_sess.values() for a, b in zip(xs, xs[1:])]
    if steps:
        st = np.asarray(steps)
        print(f"next edit of the same session: forward {np.mean(st > 0):.0%}, same {np.mean(st == 0):.0%}, "
              f"back {np.mean(st < 0):.0%}; forward step p10/p50/p90: {pct(st[st > 0])}")

    run = simulate(trace, "oracle", cfg, None)
    created: dict[tuple[int, int], int] = {}      # (slot lineage is not in events: key by session)
    restored_at = []
    lag = []
    used: set[tuple[str, int]] = set()
    made: dict[tuple[str, int], int] = {}
    rank = {res.request_id: i for i, res in enumerate(run.results)}
    for e in run.events:
        key = (trace.session[e.request_id], e.n_tokens)
        if e.kind == EventKind.CREATED:
            made.setdefault(key, e.request_id)
            created[key] = created.get(key, 0) + 1
        elif e.kind == EventKind.RESTORED:
            used.add(key)
            restored_at.append((e.request_id, e.n_tokens))
            if key in made:
                lag.append(rank[e.request_id] - rank[made[key]])
    kinds = Counter()
    for r, k in restored_at:
        src = made.get((trace.session[r], k))
        if src is not None and k == int(T[src]):
            kinds["a prompt end"] += 1
        elif k in set(trace.user_starts[r]):
            kinds["a user message start"] += 1
        elif k in set(trace.tool_starts[r]):
            kinds["a tool output start"] += 1
        else:
            kinds["elsewhere"] += 1
    s = run.summary()
    n_made = len(made)
    print(f"oracle: {s['reprocessed_tokens']:,} re-processed; {s['created']:,} created at {n_made:,} distinct "
          f"(session, position); {len(used & set(made)) / max(1, n_made):.0%} of those ever restored; "
          f"{s['restores']:,} restores")
    if restored_at:
        print("oracle restores land at: " + ", ".join(f"{k} {v / len(restored_at):.0%}" for k, v in kinds.most_common()))
    if lag:
        print(f"requests (serving order, all sessions) between creation and restore p10/p50/p90: {pct(lag)}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="*")
    ap.add_argument("-np", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="only the small traces")
    a = ap.parse_args()
    paths = [Path(p) for p in a.traces] or sorted((REPO / "traces" / "real").glob("*.jsonl*"))
    if a.fast and not a.traces:
        paths = [REPO / "traces" / "real" / f for f in FAST]
    for p in paths:
        analyse(p, a.np)


if __name__ == "__main__":
    main()
