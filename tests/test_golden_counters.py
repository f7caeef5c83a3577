"""Golden counters: exact results of the simulator on the bundled traces, per policy and flag set.

The numbers in ``data/golden_counters.json`` were written by this module from commit ``faf6352``
(main before the structure work of issue #13: the oracle's registration, the split of
``simulate``, the rule flags of ``ServerRules``), and rewritten once when issue #11's conformance
runs on older builds fixed two rules (before b8400 the invalidation pass runs for every request;
before #25070 a prompt-cache save does not pop the oldest entry), which moved exactly one case
(multi-session, b8300, -np 4). Any later change that moves a result -- a
rule, a policy, slot choice, the prompt cache, timing -- shows here as a failing case. They are
not derived by hand: they pin behaviour, they do not prove it right (the property, restore-rule
and conformance tests do that).

Regenerate (only when a result is meant to change, and say why in the commit)::

    python -m tests.test_golden_counters --write            # refuses to overwrite
    python -m tests.test_golden_counters --write --force    # overwrites

The real traces (``traces/real/``, every registered policy; ``data/golden_real.json``) are a
second, slow set: issue #15's speed work is checked against them. ``--write --real`` writes it.
Its adaptive, pr24035 and pr25592 cases were rewritten once (issue #14: the PR policies keep the
build's supersede, #28302; adaptive shares an ambiguous need by evidence and learns in its warm-up),
and its adaptive cases once more (issue #14 again: while a sequence has only been extended, adaptive
keeps the message starts where other sequences' first edits landed; four cases moved, the elided
SWE traces and mooncake-synthetic, each to fewer re-processed tokens; only the ``adaptive`` cases
were recomputed, every other case is as recorded), and its adaptive cases a third time (issue #14:
a need in the previous prompt's last ubatch also counts at the server's break point there,
``near=1``; three cases moved: weka-sample 12,314,483 -> 12,175,913, weka-sample-strict
12,489,060 -> 12,281,380, mooncake-synthetic 57,922,151 -> 57,935,432; recomputed with
``counters()`` for the adaptive cases only); the file's ``rewritten`` list says so.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from ckptsim.cost import load_profile
from ckptsim.sim import ServerConfig, simulate
from ckptsim.trace import Trace, load_trace

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_counters.json"

# Counted events: must match exactly.
EXACT = ("reprocessed_tokens", "restores", "created", "evicted", "invalidated", "full_reprocess",
         "cache_loads")
# Timing sums: the refactors keep the order of every float operation, so these match to the last
# bits; the tolerance only absorbs a different platform's libm.
TIMED = ("prefill_s", "makespan_s", "ttft_p95_ms")

_ALL = ("none", "fifo", "per-batch", "every-n", "user-turn", "llama-server", "coverage", "oracle")
_BUILDS = ("b6685", "b7000", "b8000", "b8300", "b8500", "b9300", "b9500", "b9800", "b9950", "b9985",
           "b10573", "latest")

# (trace, policy spec, ServerConfig fields): -np 1 with the defaults (cap 32, --cache-ram 8192),
# a binding cap per build, several slots in both service orders, a binding --cache-ram, and a
# byte budget.
CASES: list[tuple[str, str, dict]] = (
    [(t, p, {}) for t in ("agent-edit", "chat-edit") for p in _ALL]
    + [("agent-edit", f"llama-server:version={b}", {"ctx_checkpoints": 8}) for b in _BUILDS]
    + [("chat-edit", f"llama-server:version={b}", {"ctx_checkpoints": 4, "n_batch": 512})
       for b in ("b8300", "b9500", "b9985", "latest")]
    + [("multi-session", p, {"n_slots": 4})
       for p in ("fifo", "coverage", "llama-server", "llama-server:version=b8300", "oracle")]
    + [("multi-session", p, {"n_slots": 2, "arrival_order": False, "cache_ram_mib": 0})
       for p in ("user-turn", "llama-server", "oracle")]
    + [("multi-session", p, {"cache_ram_mib": 2048}) for p in ("user-turn", "llama-server", "oracle")]
    + [("multi-session", "llama-server", {"n_slots": 2, "cache_ram_mib": 1024, "ctx_checkpoints": 8})]
    + [("compaction", p, {}) for p in ("llama-server", "every-n:n=2048+coverage", "oracle+fifo")]
    + [("agent-append", p, {}) for p in ("llama-server", "oracle")]
    + [("chat-edit", p, {"ckpt_budget_mib": 200.0}) for p in ("per-batch", "llama-server", "coverage")]
    + [("real/mini-swe-agent-gemini3pro-s40-elide5.derived", "llama-server", {"n_slots": 2})]
)


# Every registered policy on every real trace at -np 1, and the big SWE trace at -np 4 (slot
# choice and the prompt cache under several sessions): recorded at efaa807, before the speed work
# of issue #15, so an optimisation that moves any result fails here.
_REAL = ("mini-swe-agent-gemini3pro-elide5.derived", "mini-swe-agent-gemini3pro", "mini-swe-agent-gemini3pro-s40",
         "mini-swe-agent-gemini3pro-s40-elide5.derived", "mooncake-conversation", "mooncake-synthetic",
         "swe-agent-marshmallow-1867-elision", "weka-sample", "weka-sample-strict")
_REAL_POLICIES = ("none", "fifo", "per-batch", "every-n", "every-n:n=4096", "user-turn", "llama-server",
                  "llama-server:version=b9500", "coverage", "adaptive", "marconi", "ik-llama", "pr24035",
                  "pr25472-half-step", "pr25592", "sglang-no-buffer", "sglang-extra-buffer", "vllm-all",
                  "vllm-align", "oracle")
REAL_CASES: list[tuple[str, str, dict]] = (
    [(f"real/{t}", p, {}) for t in _REAL for p in _REAL_POLICIES]
    + [("real/mini-swe-agent-gemini3pro-elide5.derived", p, {"n_slots": 4})
       for p in ("fifo", "llama-server", "coverage", "adaptive", "marconi", "oracle")]
)
GOLDEN_REAL = GOLDEN.with_name("golden_real.json")


def case_id(trace: str, spec: str, fields: dict) -> str:
    flags = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{trace}|{spec}|{flags}"


@lru_cache(maxsize=None)
def _trace(name: str) -> Trace:
    path = REPO / "traces" / f"{name}.jsonl"
    return load_trace(path if path.exists() else path.with_name(path.name + ".gz"))


def counters(trace: str, spec: str, fields: dict) -> dict:
    """The counted and timed results of one case, as stored in the golden file."""
    run = simulate(_trace(trace), spec, ServerConfig(**fields), load_profile(None))
    s = run.summary()
    return {k: s[k] for k in EXACT + TIMED}


@lru_cache(maxsize=2)
def _golden(path: Path = GOLDEN) -> dict:
    return json.loads(path.read_text())


def _check(want: dict | None, got: dict) -> None:
    assert want is not None, "no golden numbers for this case; regenerate (module docstring)"
    assert {k: got[k] for k in EXACT} == {k: want[k] for k in EXACT}
    for k in TIMED:
        assert math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-9), (k, got[k], want[k])


@pytest.mark.parametrize("trace,spec,fields", CASES, ids=[case_id(*c) for c in CASES])
def test_golden_counters(trace: str, spec: str, fields: dict) -> None:
    _check(_golden()["cases"].get(case_id(trace, spec, fields)), counters(trace, spec, fields))


@pytest.mark.slow
@pytest.mark.parametrize("trace,spec,fields", REAL_CASES, ids=[case_id(*c) for c in REAL_CASES])
def test_golden_counters_real(trace: str, spec: str, fields: dict) -> None:
    _check(_golden(GOLDEN_REAL)["cases"].get(case_id(trace, spec, fields)), counters(trace, spec, fields))


def test_golden_cases_exercise_every_counter() -> None:
    """A counter that is zero in every case would pin nothing."""
    cases = _golden()["cases"].values()
    for k in EXACT:
        assert any(c[k] > 0 for c in cases), k


def _write(force: bool, real: bool = False) -> int:
    target, todo = (GOLDEN_REAL, REAL_CASES) if real else (GOLDEN, CASES)
    if target.exists() and not force:
        print(f"{target} exists; pass --force to overwrite it (only when a result is meant to change)",
              file=sys.stderr)
        return 2
    import subprocess
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    from rich.progress import track
    cases = {case_id(*c): counters(*c) for c in track(todo, description="golden cases", transient=True)}
    target.write_text(json.dumps({"commit": commit, "written_by": "python -m tests.test_golden_counters "
                                  "--write", "cases": cases}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {target} (commit {commit})")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write the golden counters from the code checked out.")
    ap.add_argument("--write", action="store_true", help="compute every case and write the file")
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    ap.add_argument("--real", action="store_true", help="the real traces' set (data/golden_real.json)")
    a = ap.parse_args()
    if not a.write:
        ap.error("nothing to do: pass --write (and --force to overwrite)")
    sys.exit(_write(a.force, a.real))
