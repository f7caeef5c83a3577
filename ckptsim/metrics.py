"""Results boundary: runs -> pandas DataFrames, and the one place each metric is defined."""
from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from .sim import Run

# Each run-level metric, defined once (the README's "Metrics" glossary is generated from this).
METRICS: dict[str, str] = {
    "n_requests": "requests replayed",
    "prompt_tokens": "Σ T, prompt tokens over all requests",
    "reused_tokens": "Σ cache_n, prompt tokens taken from the slot's cache (after the restore step)",
    "reprocessed_tokens": "Σ (T − cache_n), prompt tokens prefilled (the server's prompt_n)",
    "true_prefix_tokens": "Σ LCP(slot cache, prompt): what a perfect rollback could have reused",
    "lost_tokens": "Σ (LCP − cache_n): tokens in the common prefix re-processed for want of a checkpoint",
    "reuse_ratio": "reused_tokens / prompt_tokens",
    "prefill_s": "Σ prefill time by the cost profile, seconds",
    "restore_s": "Σ checkpoint restore time, seconds",
    "create_s": "Σ checkpoint creation time, seconds",
    "prompt_s": "prefill_s + restore_s + create_s: all the device time prompts took (what recommend minimises)",
    "ttft_p50_ms": "median time to first token: queue wait + restore + prefill + checkpoint creation",
    "ttft_p95_ms": "95th percentile of the same",
    "ttft_p99_ms": "99th percentile of the same",
    "full_reprocess": "requests where a search found no usable checkpoint (\"forcing full prompt re-processing\")",
    "restores": "requests that restored a checkpoint",
    "created": "checkpoints created",
    "evicted": "checkpoints dropped to stay within budget (FIFO/spacing/superseded/policy victim)",
    "invalidated": "checkpoints erased because they lay past the restore point (\"erased invalidated\")",
    "peak_ckpt_mib": "largest checkpoint memory held by all slots at once, MiB",
    "peak_cache_ram_mib": "largest host prompt-cache (--cache-ram) use, MiB",
    "cache_loads": "requests whose slot was loaded from the host prompt cache",
    "makespan_s": "time at which the last request finished, seconds",
}


# How a metric is headed wherever it is printed: (full header, compact header, what the compact
# header means). One quantity, one label: "prefill s" is prefill alone, "prompt s" adds the
# checkpoint restores and creation -- tables, CSV and JSON use the METRICS names.
LABELS: dict[str, tuple[str, str, str]] = {
    "reprocessed_tokens": ("re-processed tokens", "re-proc tok", "re-processed prompt tokens"),
    "reuse_ratio": ("reuse", "reuse", ""),
    "prefill_s": ("prefill s", "prefill s", "prefill alone, seconds"),
    "prompt_s": ("prompt s (prefill+restore+create)", "prompt s",
                 "prefill + checkpoint restore + creation, seconds"),
    "ttft_p95_ms": ("TTFT p95", "TTFT p95", ""),
    "full_reprocess": ("full re-process", "full", "requests with full re-processing"),
    "restores": ("restores", "restores", ""),
    "created": ("created", "created", ""),
    "peak_ckpt_mib": ("peak ckpt MiB", "ckpt MiB", "peak checkpoint memory, all slots"),
    "ram_mib": ("RAM MiB (ckpts+cache)", "RAM MiB", "checkpoints + prompt cache, MiB"),
}


def with_prompt_s(summary: dict) -> dict:
    """A run's summary with ``prompt_s`` (METRICS) placed after ``create_s``."""
    out: dict = {}
    for k, v in summary.items():
        out[k] = v
        if k == "create_s":
            out["prompt_s"] = summary["prefill_s"] + summary["restore_s"] + v
    return out


def format_ms(ms: float | None) -> str:
    """A duration given in ms, in the unit a person reads: "850 ms", "12.3 s", "7.0 min", "42.5 h".

    For printed tables only; --json, CSV and DataFrames keep the raw milliseconds.
    """
    if ms is None or ms != ms:                       # None or NaN
        return "-"
    a = abs(ms)
    if a < 10:
        return f"{ms:.1f} ms"
    if a < 1000:
        return f"{ms:.0f} ms"
    if a < 60_000:
        return f"{ms / 1000:.1f} s"
    if a < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:,.1f} h"


def results_frame(run: Run) -> pd.DataFrame:
    """One row per request of a run."""
    rows = [asdict(r) for r in run.results]
    df = pd.DataFrame(rows)
    if not df.empty:
        df["created_at"] = df["created_at"].map(lambda xs: " ".join(map(str, xs)))
        df.insert(0, "policy", run.policy)
    return df


def summary_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run with the run-level metrics, plus the flags it ran under."""
    rows = []
    for run in runs:
        s = with_prompt_s(run.summary())
        c = run.config
        s.update(n_slots=c.n_slots, ctx_checkpoints=c.ctx_checkpoints, n_batch=c.n_batch,
                 n_ubatch=c.n_ubatch, cache_ram_mib=c.cache_ram_mib)
        rows.append(s)
    return pd.DataFrame(rows)


def events_frame(run: Run) -> pd.DataFrame:
    """One row per event of a run."""
    return pd.DataFrame([{"request_id": e.request_id, "slot": e.slot, "kind": e.kind.value,
                          "n_tokens": e.n_tokens, "size_mib": e.size_mib, "detail": e.detail}
                         for e in run.events])
