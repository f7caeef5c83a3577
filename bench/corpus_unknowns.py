"""What `validate` settles on the logs users posted, and why the rest stays unknown.

    python bench/corpus_unknowns.py [DIR] [--per-log]

DIR (default ../shared/corpus/logs) holds real llama-server logs as users pasted them. Each is
validated as a user would (`ckptsim validate LOG`, no flags). Printed: one row per log (tasks,
decisions shown = 5 per task, known, agreed, and how many of its tasks have their restore, full
and created decisions settled), then the unknown decisions by what the log lacks, split into the
restore decision (restored + full), created, and the rest (cache_n, erased). docs/diagnose.md
holds its output.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))           # measure this checkout, not another installed copy

from ckptsim.validate import validate_log  # noqa: E402

# why_unknown texts (validate.compare_task, log_trace.excerpt_seeds) -> what the log lacks
_REASONS = (
    ("not modelled", "a relative of llama-server (ik_llama.cpp, llama-cpp-python, unmerged PR branches): rules not modelled"),
    ("prompt length is not in the log", "no prompt length (the excerpt starts or ends at the task)"),
    ("the log ends before the restore decision", "the excerpt ends before the restore decision"),
    ("after its restore decision", "the excerpt starts after the restore decision"),
    ("the log starts after this restore decision", "the excerpt starts after the restore decision"),
    ("starts inside this task's prefill", "the excerpt starts inside the prefill"),
    ("hand-edited", "a hand-edited paste (lines without their prefix)"),
    ("not finished inside the log", "the excerpt ends before the prompt is done"),
    ("prompt length only inferred", "the prompt length is only estimated"),
    ("not visible", "no checkpoint line: not printed at this verbosity (b9829+ at -lv 3)"),
    ("no checkpoint line in the log", "no checkpoint line, though this build prints them: the model may take none"),
    ("depends on the checkpoints the slot held", "where the checkpoints before the excerpt lay"),
    ("user-message starts", "user-message starts before the excerpt"),
    ("parted from the log", "follows a task no stand-in history reproduced"),
    ("inferred only", "cache_n not printed"),
)


def category(why: str) -> str:
    return next((c for key, c in _REASONS if key in why), why)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, default=REPO.parent / "shared" / "corpus" / "logs")
    a = ap.parse_args()
    logs = sorted(a.dir.glob("*.log"))
    if not logs:
        print(f"error: no .log file in {a.dir}", file=sys.stderr)
        return 2
    print("| log | tasks | decisions | known | agreed | restore settled | created settled |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tot = Counter()
    why: dict[str, Counter] = {}
    for p in logs:
        v = validate_log(p)
        per = v.per_task()
        n_known, n_agreed = len(v.known), v.agreed
        restore = sum(1 for t in per if t["status"]["restored"] != "unknown" and t["status"]["full"] != "unknown")
        created = sum(1 for t in per if t["status"]["created"] != "unknown")
        print(f"| {p.name[:3]} | {v.n_tasks} | {len(v.decisions)} | {n_known} | {n_agreed} | "
              f"{restore}/{len(per)} | {created}/{len(per)} |")
        tot.update(tasks=v.n_tasks, decisions=len(v.decisions), known=n_known, agreed=n_agreed,
                   restore=restore, created=created, logs=1, taskless=not v.n_tasks)
        for d in v.decisions:
            if d.status == "unknown":
                part = "restore" if d.decision in ("restored", "full") else \
                    "created" if d.decision == "created" else "other"
                why.setdefault(category(d.why), Counter())[part] += 1
    print(f"| **{tot['logs']} logs** ({tot['taskless']} without a task line) | {tot['tasks']} | {tot['decisions']} | "
          f"{tot['known']} | {tot['agreed']} | {tot['restore']}/{tot['tasks']} | {tot['created']}/{tot['tasks']} |")
    print()
    print("| unknown because | restore (restored + full) | created | cache_n + erased |")
    print("|---|---:|---:|---:|")
    for c, n in sorted(why.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"| {c} | {n['restore']} | {n['created']} | {n['other']} |")
    print(f"| **all** | {sum(n['restore'] for n in why.values())} | {sum(n['created'] for n in why.values())} | "
          f"{sum(n['other'] for n in why.values())} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
