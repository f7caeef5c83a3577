"""Policy comparison on the bundled real traces (traces/real/); prints the markdown for docs/real-traces.md.

    python bench/real_table.py > /tmp/real-table.md      # then paste under "Results" in docs/real-traces.md
    python bench/real_table.py --field                   # the field's policies too (README, docs/policies.md)
    python bench/real_table.py --rows adaptive traces/real/X.jsonl.gz -np 4   # only these rows, for a README table

Runs ``ckptsim compare TRACE --json`` (default policies, profile and server flags) on each
bundled trace, exactly what a user would run, and formats one table per trace; with ``--field``
a second ``compare --policies FIELD`` adds a row per policy of other engines and open PRs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACES = ["weka-sample.jsonl", "weka-sample-strict.jsonl", "mooncake-conversation.jsonl",
          "mooncake-synthetic.jsonl"]
# The field's policies (docs/policies.md, "The field's policies"), engine defaults plus vLLM's
# current retention default and its shared-prefix checkpoint.
FIELD = ["vllm-all", "vllm-align", "vllm-align:retention=0,shared=1",
         "vllm-align:retention=0,shared=1,unit=64", "sglang-no-buffer", "sglang-extra-buffer", "marconi",
         "ik-llama", "pr25592", "pr24035", "pr25472-half-step"]


def compare(trace: Path, policies: list[str] | None = None, n_slots: int = 1) -> dict:
    """The JSON document ``ckptsim compare --json`` prints for one trace."""
    extra = ["--policies", ";".join(policies)] if policies else []
    extra += ["-np", str(n_slots)]
    res = subprocess.run([sys.executable, "-c", "from ckptsim.cli import main; main()", "compare", str(trace),
                          "--json", *extra],
                         capture_output=True, text=True, cwd=REPO, check=False)
    if res.returncode != 0:
        raise SystemExit(f"ckptsim compare {trace} failed:\n{res.stderr}")
    return json.loads(res.stdout)


def table(doc: dict, name: str) -> str:
    """One markdown table: a row per policy."""
    pols = doc["policies"]
    first = pols[0]
    c = doc["config"]
    lines = [f"**{name}**: {first['n_requests']:,} requests, {first['prompt_tokens']:,} prompt tokens; "
             f"profile `{first['profile']}`; " + ", ".join(f"{k}={v}" for k, v in c.items()), "",
             "| policy | re-processed tokens | reuse | prefill s | TTFT p95 ms | full re-process | "
             "lost tokens | peak ckpt MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in pols:
        lines.append(f"| `{s['policy']}` | {s['reprocessed_tokens']:,} | {s['reuse_ratio']:.1%} | "
                     f"{s['prefill_s']:,.0f} | {s['ttft_p95_ms']:,.0f} | {s['full_reprocess']:,} | "
                     f"{s['lost_tokens']:,} | {s['peak_ckpt_mib']:,.0f} |")
    return "\n".join(lines)


def rows(argv: list[str]) -> None:
    """``--rows P1;P2 TRACE [-np N]``: only those policies' rows, in the README tables' columns."""
    specs = [p for p in argv[argv.index("--rows") + 1].split(";") if p]
    n_slots = int(argv[argv.index("-np") + 1]) if "-np" in argv else 1
    paths = [a for a in argv if a.endswith((".jsonl", ".jsonl.gz"))]
    for path in paths:
        for s in compare(Path(path), specs, n_slots)["policies"]:
            print(f"| `{s['policy']}` | {s['reprocessed_tokens']:,} | {s['reuse_ratio']:.1%} | "
                  f"{s['prefill_s']:,.0f} | {s['full_reprocess']:,} |")


def main() -> None:
    """Print every table."""
    if "--rows" in sys.argv[1:]:
        rows(sys.argv[1:])
        return
    field = "--field" in sys.argv[1:]
    for name in TRACES:
        path = REPO / "traces" / "real" / name
        if not path.exists():
            print(f"(skipped {name}: not bundled)", file=sys.stderr)
            continue
        doc = compare(path)
        if field:
            doc["policies"] += compare(path, FIELD)["policies"]
        print(table(doc, f"traces/real/{name}"))
        print()


if __name__ == "__main__":
    main()
