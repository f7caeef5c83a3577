"""The conformance matrix on many llama.cpp builds: one row per build, printed as a markdown table.

    python bench/conformance_all.py [VERSION ...] [--out reports/conformance]

Each VERSION is an xllamacpp wheel (default: every 2026.x wheel, newest first; with --no-run also
`llama-server-bNNNN`, a folder a `conformance --server` run wrote); each wheel is installed
once into a cached environment of its own (~/.cache/ckptsim/xllamacpp/VERSION) and runs
`ckptsim conformance --xllamacpp VERSION --json`. Outputs (requests, logs, conformance.json) go
to OUT/VERSION/; the table is what docs/conformance.md and the README show. About a minute per
build on 2 cores after the first install.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT = ["2026.10.11549", "2026.9.11063", "2026.9.10809", "2026.8.10566", "2026.8.10229",
           "2026.7.10068", "2026.7.9873", "2026.6.9713", "2026.6.9538", "2026.5.9294", "2026.5.9093",
           "2026.4.8929", "2026.4.8672"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("versions", nargs="*", default=DEFAULT)
    ap.add_argument("--out", type=Path, default=Path("reports/conformance"))
    ap.add_argument("--cross", default="b9538,b10573,b11549",
                    help="also replay every build's logs under these builds' rules (a boundary check)")
    ap.add_argument("--no-run", action="store_true", help="only the cross table, from earlier runs")
    a = ap.parse_args()
    if a.no_run:
        return cross_table(a.versions, a.out, a.cross.split(","))
    rows = []
    for v in a.versions:
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ckptsim", "conformance", "--xllamacpp", v, "--json",
                               "--force", "--out", str(a.out / v)], capture_output=True, text=True)
        secs = time.monotonic() - t0
        try:
            doc = json.loads(done.stdout)
        except json.JSONDecodeError:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append((v, "–", "–", "–", "–", "–", "–", f"{secs:.0f} s", last[:120]))
            print(f"{v}: failed: {last}", file=sys.stderr)
            continue
        ag = doc["agreement"]
        wl_bad = [w["name"] for w in doc["workloads"] if w["mismatches"] or w.get("error")]
        rows.append((v, doc["build"], str(doc["tasks"]), str(doc["decisions"]),
                     f"{ag:.1%}" if ag is not None else "–", str(doc["unknown"]),
                     str(len(doc["mismatches"])), f"{secs:.0f} s",
                     ", ".join(wl_bad) if wl_bad else "all agree"))
        print(f"{v}: {doc['agreed']}/{doc['decisions']} known decisions agree", file=sys.stderr)
    head = ("xllamacpp", "build", "tasks", "known decisions", "agreement", "unknown", "mismatches",
            "time", "workloads with a mismatch or failure")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    return cross_table(a.versions, a.out, a.cross.split(","))


def cross_table(versions: list[str], out: Path, rules: list[str]) -> int:
    """Each build's logs replayed under its own rules (re-scored with today's code, no server)
    and under each other rule group: which rules agree with which build."""
    from ckptsim.live.conformance import build_of_xllamacpp, cross_validate
    print("| xllamacpp | own rules: agreed/known (unknown) | " + " | ".join(f"as {r}" for r in rules)
          + " | prompt tok/s | own fit: ms/token, held-out total |")
    print("|---|---:|" + "|".join("---:" for _ in rules) + "|---:|---:|")
    for v in versions:
        if not (out / v / "conformance.json").exists():
            continue
        own = v.rsplit("-", 1)[-1] if v.startswith("llama-server-b") else (build_of_xllamacpp(v) or "latest")
        cv = cross_validate(out / v, [own] + [r for r in rules if r != own])
        o = cv[own]
        cells = [f"{cv[r]['agreed']}/{cv[r]['decisions']}" for r in rules]
        t = o["timing"]
        tcells = [f"{t['tok_s']:,.0f}", f"{t['ms_per_token']:.3f}, {t['heldout_error_pct']:+.1f}%"] if t else ["–", "–"]
        print(f"| {v} | {o['agreed']}/{o['decisions']} ({o['unknown']}) | " + " | ".join(cells)
              + " | " + " | ".join(tcells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
