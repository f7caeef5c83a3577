"""The conformance matrix on many llama.cpp builds: the tables of docs/conformance.md and the README.

    python bench/conformance_all.py [VERSION ...] [--out reports/conformance] [--no-run]

Each VERSION is an xllamacpp wheel (default: every published one that can run the matrix here,
newest first; with --no-run also `llama-server-bNNNN`, a folder a `conformance --server` run
wrote); each wheel is installed once into a cached environment of its own
(~/.cache/ckptsim/xllamacpp/VERSION) and runs `ckptsim conformance --xllamacpp VERSION --json`.
Outputs (requests, logs, conformance.json, and bench.json with the run's wall time) go to
OUT/VERSION/. Then, from what is in OUT (so --no-run reprints them without a server):

1. one row per build: its logs replayed with its own build's rules by today's code;
2. the cross table: each build's logs under a few other builds' rules, and its prompt speed;
3. the boundary table: for each two neighbouring builds, each one's logs under the other's
   rules, and the rule changes the model places between them (measured, seen, or not seen).

About 1-3 minutes per build on 2 cores after the first install.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

# b8672 (2026.4.8672) dies of SIGILL on CPUs without AVX-512; 2026.4.8672.1 is its rebuild.
# 0.2.3-0.2.11 predate qwen35 and run the matrix on the generated lfm2 model. 0.2.2 and older
# predate context checkpoints for hybrid models (b6685) and are left out (docs/conformance.md).
DEFAULT = ["2026.10.11549", "2026.9.11063", "2026.9.10809", "2026.8.10566", "2026.8.10229",
           "2026.7.10068", "2026.7.9873", "2026.6.9713", "2026.6.9538", "2026.5.9294", "2026.5.9093",
           "2026.4.8929", "2026.4.8672.1", "2026.4.8672", "0.2.14", "0.2.13", "0.2.12", "0.2.11",
           "0.2.10", "0.2.9", "0.2.8", "0.2.7", "0.2.6", "0.2.5", "0.2.4", "0.2.3"]
CROSS = "b9294,b9538,b9873,b10573,b11549"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("versions", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=Path("reports/conformance"))
    ap.add_argument("--cross", default=CROSS,
                    help="also replay every build's logs under these builds' rules (a boundary check)")
    ap.add_argument("--no-run", action="store_true", help="only the tables, from earlier runs")
    ap.add_argument("--readme", action="store_true",
                    help="the README's short form: builds with the same result on one row, and the measured changes")
    a = ap.parse_args()
    if not a.versions:
        a.versions = list(DEFAULT)
        if a.no_run:
            # binaries checked with `conformance --server`, placed among the wheels by build
            from ckptsim.live.conformance import build_of_xllamacpp
            for d in sorted(a.out.glob("llama-server-b*")):
                n = int(d.name.rsplit("-b", 1)[-1])
                at = next((i for i, v in enumerate(a.versions)
                           if (b := build_of_xllamacpp(v)) and int(b[1:]) < n), len(a.versions))
                a.versions.insert(at, d.name)
    if not a.no_run:
        for v in a.versions:
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "ckptsim", "conformance", "--xllamacpp", v, "--json",
                                   "--force", "--out", str(a.out / v)], capture_output=True, text=True)
            secs = time.monotonic() - t0
            (a.out / v).mkdir(parents=True, exist_ok=True)
            last = (done.stderr.strip().splitlines() or [""])[-1]
            (a.out / v / "bench.json").write_text(json.dumps({"wall_s": round(secs, 1), "rc": done.returncode,
                                                              "stderr_tail": last[-300:]}) + "\n")
            print(f"{v}: exit {done.returncode} in {secs:.0f} s", file=sys.stderr)
    rules = a.cross.split(",")
    rows = own_rows(a.versions, a.out)
    if a.readme:
        readme_table(rows)
        print()
        boundary_table(rows, a.out, changes_only=True)
        return 0
    results_table(rows)
    print()
    cross_table(rows, a.out, rules)
    print()
    boundary_table(rows, a.out)
    return 0


def readme_table(rows: list[dict]) -> None:
    """Builds (newest first) with the same model, known decisions, agreement and unknown on one row."""
    def key(r: dict) -> tuple:
        o = r.get("own_result")
        if o is None:
            return ("failed", _short_error(r["doc"]))
        return ("+".join(r["archs"]), o["decisions"], f"{o['agreed'] / o['decisions']:.0%}", o["unknown"])

    def name(r: dict) -> str:
        b = r["own"] or r.get("dated", "build 0")
        return f"{b} ({r['version']})"

    ordered = sorted(rows, key=lambda r: -int(r["own"][1:]) if r["own"] else -int(r["doc"]["build"][1:])
                     if re.fullmatch(r"b\d+", r["doc"]["build"]) else 0)
    groups: list[tuple[tuple, list[dict]]] = []
    for r in ordered:
        if groups and groups[-1][0] == key(r):
            groups[-1][1].append(r)
        else:
            groups.append((key(r), [r]))
    print("| builds (xllamacpp version) | model | known decisions | agreement | unknown |")
    print("|---|---|---:|---:|---:|")
    for k, rs in groups:
        names = ", ".join(name(r) for r in rs)
        if k[0] == "failed":
            print(f"| {names} | – | – | – | {k[1]} |")
        else:
            each = " each" if len(rs) > 1 else ""
            print(f"| {names} | {k[0]} | {k[1]}{each} | {k[2]} | {k[3]} |")


def _own_build(v: str, doc: dict) -> str | None:
    """The build whose rules a folder's logs are replayed with: the wheel's or binary's build,
    else the one its logs print (0.x wheels); None leaves it to the log's wording."""
    from ckptsim.live.conformance import build_of_xllamacpp
    if v.startswith("llama-server-b"):
        return v.rsplit("-", 1)[-1]
    b = build_of_xllamacpp(v) or doc.get("build", "")
    return b if re.fullmatch(r"b\d+", b or "") else None


def own_rows(versions: list[str], out: Path) -> list[dict]:
    """Per version with a conformance.json: its run (as written) and its logs re-scored with its
    own build's rules by today's code (what the tables show)."""
    from ckptsim.live.conformance import cross_validate
    rows = []
    for v in versions:
        f = out / v / "conformance.json"
        if not f.exists():
            continue
        doc = json.loads(f.read_text())
        bench = json.loads((out / v / "bench.json").read_text()) if (out / v / "bench.json").exists() else {}
        own = _own_build(v, doc)
        dated = None
        if own is None and doc["decisions"]:
            # the run's JSON does not name the build: the log prints it, or its wording dates it
            from ckptsim.validate import validate_log
            val = validate_log(next(iter(sorted((out / v).glob("*.server.log")))))
            chosen = re.search(r"version=(b\d+)", val.policy).group(1)
            if val.build_range:
                lo = val.build_range[0]["builds"].split("-")[0]
                hi = val.build_range[-1]["builds"].split("-")[-1]
                dated = f"build 0; wording: {lo}–{hi}, replayed as {chosen}"
            else:
                own = chosen
        archs = sorted({w.get("model_arch", "qwen35") for w in doc["workloads"] if w.get("decisions")})
        row = {"version": v, "doc": doc, "own": own, "wall_s": bench.get("wall_s"), "archs": archs,
               "dir": str(out / v)}
        if dated:
            row["dated"] = dated
        if doc["decisions"]:
            row["own_result"] = cross_validate(out / v, [own])[own]
        rows.append(row)
    return rows


def _short_error(doc: dict) -> str:
    """The first error of a run, without the workload prefix and the log path."""
    why = (doc.get("errors") or ["no decision"])[0]
    why = re.sub(r"^server failed in workload [\w-]+: ", "", re.sub(r"; log \S+.*", "", why))
    return why if len(why) <= 150 else why[:150].rsplit(" ", 1)[0] + " …"


def results_table(rows: list[dict]) -> None:
    from ckptsim.live.conformance import server_abort
    head = ("xllamacpp", "build", "model", "tasks", "known decisions", "agreement", "unknown", "not nothing",
            "run time", "notes")
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|" + "|".join("---:" for _ in head[3:-1]) + "|---|")
    for r in rows:
        doc, o = r["doc"], r.get("own_result")
        t = f"{r['wall_s']:.0f} s" if r.get("wall_s") else "–"
        if o is None:
            why = _short_error(doc)
            print(f"| {r['version']} | {doc['build']} | – | – | – | – | – | – | {t} | {why} |")
            continue
        build = r["own"] or r.get("dated", "build 0")
        nothing = o["nothing_happened"]
        notes = []
        for w in doc["workloads"]:
            if w.get("error"):
                # the server's own assertion, read from the log kept beside the run
                log = Path(r["dir"]) / f"{w['name']}.server.log"
                why = server_abort(log)
                notes.append(f"`{w['name']}` stopped: the server aborted ({why})" if why
                             else f"`{w['name']}` stopped: {w['error'][:120]}")
        print(f"| {r['version']} | {build} | {'+'.join(r['archs'])} | {doc['tasks']} | {o['decisions']} | "
              f"{o['agreed'] / o['decisions']:.0%} | {o['unknown']} | "
              f"{o['decisions'] - nothing} | {t} | {'; '.join(notes)} |")


def cross_table(rows: list[dict], out: Path, rules: list[str]) -> None:
    """Each build's logs replayed under its own rules and under each other rule group."""
    from ckptsim.live.conformance import cross_validate
    print("| xllamacpp | own rules: agreed/known (unknown) | " + " | ".join(f"as {r}" for r in rules)
          + " | prompt tok/s | own fit: ms/token, held-out total |")
    print("|---|---:|" + "|".join("---:" for _ in rules) + "|---:|---:|")
    for row in rows:
        o = row.get("own_result")
        if o is None:
            continue
        cv = cross_validate(out / row["version"], [r for r in rules if r != row["own"]])
        cells = [f"{o['agreed']}/{o['decisions']}" if r == row["own"] else f"{cv[r]['agreed']}/{cv[r]['decisions']}"
                 for r in rules]
        t = o["timing"]
        tcells = [f"{t['tok_s']:,.0f}", f"{t['ms_per_token']:.3f}, {t['heldout_error_pct']:+.1f}%"] if t else ["–", "–"]
        print(f"| {row['version']} | {o['agreed']}/{o['decisions']} ({o['unknown']}) | " + " | ".join(cells)
              + " | " + " | ".join(tcells) + " |")


def boundary_table(rows: list[dict], out: Path, changes_only: bool = False) -> None:
    """Neighbouring builds (by build number) replayed under each other's rules: where the matrix
    sees a change, and which of the model's rule boundaries lie between them."""
    from ckptsim.live.conformance import cross_validate
    from ckptsim.server import RULE_BOUNDARIES
    by_build: dict[int, dict] = {}
    for r in rows:
        if r.get("own_result") and r["own"] and r["own_result"]["agreed"] == r["own_result"]["decisions"]:
            by_build.setdefault(int(r["own"][1:]), r)     # one folder per build (the first listed)
    builds = sorted(by_build)
    if not changes_only:
        print("| older build | newer build | model's rule changes between them | older's logs as newer | "
              "newer's logs as older | what the matrix measures |")
        print("|---|---|---|---:|---:|---|")
    for lo, hi in zip(builds, builds[1:]):
        between = [b for b in RULE_BOUNDARIES if lo < b <= hi]
        a = cross_validate(out / by_build[lo]["version"], [f"b{hi}"])[f"b{hi}"]
        b = cross_validate(out / by_build[hi]["version"], [f"b{lo}"])[f"b{lo}"]
        seen = a["agreed"] < a["decisions"] or b["agreed"] < b["decisions"]
        names = ", ".join(f"b{x}" for x in between) or "none"
        if seen and between:
            verdict = f"a change, in b{lo + 1}–b{hi}"
        elif seen:
            verdict = "a change the model does not place here"
        elif between:
            verdict = "no trace of it in this matrix"
        else:
            verdict = "no change, none modelled"
        if changes_only:
            if seen:
                print(f"- b{lo + 1}–b{hi}: the matrix sees a change (b{lo} and b{hi} disagree under each "
                      f"other's rules); the model's rule changes there: {names}")
            continue
        print(f"| b{lo} ({by_build[lo]['version']}) | b{hi} ({by_build[hi]['version']}) | {names} | "
              f"{a['agreed']}/{a['decisions']} | {b['agreed']}/{b['decisions']} | {verdict} |")


if __name__ == "__main__":
    sys.exit(main())
