"""Excerpts of real whole logs, validated as users paste them: how much they settle, and never wrongly.

    python bench/excerpt_cuts.py [LOG ...] [--every K] [--version bNNNN] [--at task|inside|end]

Each LOG (default: the conformance logs under reports/conformance/*/, which `bench/conformance_all.py`
writes, else the real-server logs shipped in tests/data/conformance/) is a whole `-lv 4` log of a
real server that `validate` replays in full. It is cut at every K-th task start (from the slot
selection lines on, without the start-up lines that show the slots starting empty) and each
excerpt is validated with the server's real flags. `--at inside` cuts instead before every later
batch of a prompt (its `seq_rm` line: a paste that begins inside a prefill), `--at end` after every
`seq_rm` line (a paste that ends inside one, with the lines before it). A row per log: excerpts, decisions settled
(of those shown), and mismatches -- which must be 0: a settled decision of an excerpt is one the
whole log agrees with. The build is the one the log's conformance.json names (else its printed or
dated build).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

from ckptsim.ingest.log_trace import read_tasks
from ckptsim.validate import config_from_log, validate_log

REPO = Path(__file__).resolve().parent.parent


def _lines(p: Path) -> list[str]:
    op = gzip.open if p.suffix == ".gz" else open
    with op(p, "rt", errors="replace") as f:
        return f.read().splitlines(keepends=True)


def cuts(lines: list[str], every: int) -> list[tuple[int, str]]:
    """(first line, text) of each excerpt: start-up lines that give flags are kept, the ones that
    show slots starting empty are not (a pasted excerpt has neither, but the flags are passed)."""
    first = next((i for i, ln in enumerate(lines) if "get_availabl" in ln or "processing task" in ln), None)
    if first is None:
        return []             # a server that died before its first task
    head = [ln for ln in lines[:first] if "n_slots" not in ln and "new slot" not in ln]
    starts = [i for i, ln in enumerate(lines) if "processing task" in ln and i > first + 1]
    out = []
    for i in starts[::every]:
        j = i
        while j > first and any(s in lines[j - 1] for s in ("get_availabl", "launch_slot_", "srv")):
            j -= 1
        out.append((j, "".join(head + lines[j:])))
    return out


def cuts_in_prefills(lines: list[str], every: int, at: str) -> list[tuple[int, str]]:
    """Excerpts that begin before (``inside``) or end after (``end``) a prefill's seq_rm lines:
    ``inside`` skips each task's first one (that is the prefill's start, not inside it)."""
    first = next((i for i, ln in enumerate(lines) if "get_availabl" in ln or "processing task" in ln), None)
    if first is None:
        return []
    head = [ln for ln in lines[:first] if "n_slots" not in ln and "new slot" not in ln]
    seen: set[str] = set()
    at_lines = []
    for i, ln in enumerate(lines):
        if "memory_seq_rm" not in ln:
            continue
        task = ln.split("| task", 1)[-1].split("|", 1)[0].strip()
        if at == "inside" and task not in seen:
            seen.add(task)
            continue
        at_lines.append(i)
    return [(i, "".join(head + lines[i:]) if at == "inside" else "".join(lines[:i + 1]))
            for i in at_lines[::every]]


def build_of(p: Path, whole: Path) -> str:
    cj = p.parent / "conformance.json"
    b = json.loads(cj.read_text()).get("build") if cj.exists() else None
    if isinstance(b, str) and b.startswith("b") and b[1:].isdigit():
        return b
    head = p.name.split("-")[0]
    if head.startswith("b") and head[1:].isdigit():
        return head           # tests/data/conformance/bNNNN-*.server.log.gz
    if "0.2.14" in str(p):
        return "b8352"        # docs/conformance.md: xllamacpp 0.2.14 pins 0.2.13's llama.cpp commit (b8352)
    return f"b{read_tasks(whole).build}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="*", type=Path)
    ap.add_argument("--every", type=int, default=1, help="cut at every K-th task start")
    ap.add_argument("--version", default=None, help="replay as this build (default: the log's)")
    ap.add_argument("--at", choices=("task", "inside", "end"), default="task",
                    help="cut at task starts, before a prefill's later batches, or after its batches")
    a = ap.parse_args()
    logs = a.logs or sorted((REPO / "reports" / "conformance").glob("*/*.server.log")) \
        or sorted((REPO / "tests" / "data" / "conformance").glob("*.server.log.gz"))
    print("| log | build | excerpts | decisions settled | of shown | mismatches |")
    print("|---|---|---:|---:|---:|---:|")
    tot = [0, 0, 0, 0]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        for p in logs:
            lines = _lines(p)
            if not cuts(lines, 1):
                continue
            whole = Path(td) / "whole.log"
            whole.write_text("".join(lines))
            settings = read_tasks(whole).settings
            cfg = dataclasses.asdict(config_from_log(settings))
            ver = a.version or build_of(p, whole)
            n = known = shown = bad = 0
            for j, text in (cuts(lines, a.every) if a.at == "task" else cuts_in_prefills(lines, a.every, a.at)):
                q = Path(td) / "cut.log"
                q.write_text(text)
                v = validate_log(q, version=ver, overrides=cfg, min_step=settings.get("min_step"))
                n += 1
                known += len(v.known)
                shown += len(v.decisions)
                bad += sum(1 for d in v.decisions if d.status == "mismatch")
            name = f"{p.parent.name}/{p.name}" if p.parent.name != "conformance" else p.name
            print(f"| {name} | {ver} | {n} | {known} | {shown} | {bad} |")
            for i, x in enumerate((n, known, shown, bad)):
                tot[i] += x
    print(f"| **all {len(logs)} logs** | | {tot[0]} | {tot[1]} ({100 * tot[1] / max(1, tot[2]):.0f}%) | "
          f"{tot[2]} | {tot[3]} |")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    return 1 if tot[3] else 0


if __name__ == "__main__":
    raise SystemExit(main())
