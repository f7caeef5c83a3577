"""Results boundary: runs -> pandas DataFrames, and the one place each metric is defined."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .policies import checkpoint_cap, make_policy
from .records import RESULT_FIELDS
from .sim import Run


@dataclass(frozen=True, slots=True)
class Metric:
    """One run-level metric: how tables head it, what it means, and the per-request column it adds up."""

    header: str              # column header in printed tables (full layout)
    definition: str          # the README's "Metrics" glossary line
    per_request: str = ""    # RequestResult field (results CSV column) it sums or counts, if any
    compact: str = ""        # header in the compact layout (cli/_tables), when shorter
    legend: str = ""         # what the compact header means, for the legend under the table


# Each run-level metric, defined once: its key is the summary/JSON/CSV name (``sim.summarize``),
# and tables print ``header(key)``; a test ties the keys to summarize, the per-request columns to
# RequestResult, and the README's glossary to this table.
METRIC_TABLE: dict[str, Metric] = {
    "n_requests": Metric("requests", "requests replayed"),
    "prompt_tokens": Metric("prompt tok", "Σ T, prompt tokens over all requests", "n_prompt"),
    "reused_tokens": Metric("reused tok", "Σ cache_n, prompt tokens taken from the slot's cache (after the "
                            "restore step)", "n_cached"),
    "reprocessed_tokens": Metric("re-processed tokens", "Σ (T − cache_n), prompt tokens prefilled (the server's "
                                 "prompt_n)", "n_reprocessed", "re-proc tok", "re-processed prompt tokens"),
    "true_prefix_tokens": Metric("true prefix tok", "Σ LCP(slot cache, prompt): what a perfect rollback could "
                                 "have reused", "n_true_prefix"),
    "lost_tokens": Metric("lost tok", "Σ (LCP − cache_n): tokens in the common prefix re-processed for want "
                          "of a checkpoint", "n_lost"),
    "reuse_ratio": Metric("reuse", "reused_tokens / prompt_tokens"),
    "prefill_s": Metric("prefill s", "Σ prefill time by the cost profile, seconds", "prefill_ms",
                        legend="prefill alone, seconds"),
    "restore_s": Metric("restore s", "Σ checkpoint restore time, seconds", "restore_ms"),
    "create_s": Metric("create s", "Σ checkpoint creation time, seconds", "create_ms"),
    # one quantity, one label: "prefill s" is prefill alone, "prompt s" adds restores and creation
    "prompt_s": Metric("prompt s (prefill+restore+create)", "prefill_s + restore_s + create_s: all the device "
                       "time prompts took (what recommend minimises)", "", "prompt s",
                       "prefill + checkpoint restore + creation, seconds"),
    "ttft_p50_ms": Metric("TTFT p50", "median time to first token: queue wait + restore + prefill + "
                          "checkpoint creation", "ttft_ms"),
    "ttft_p95_ms": Metric("TTFT p95", "95th percentile of the same", "ttft_ms"),
    "ttft_p99_ms": Metric("TTFT p99", "99th percentile of the same", "ttft_ms"),
    "full_reprocess": Metric("full re-process", "requests where a search found no usable checkpoint (\"forcing "
                             "full prompt re-processing\")", "full_reprocess", "full", "requests with full re-processing"),
    "restores": Metric("restores", "requests that restored a checkpoint", "restored_n_tokens"),
    "created": Metric("created", "checkpoints created", "n_created"),
    "evicted": Metric("evicted", "checkpoints dropped to stay within budget (FIFO/spacing/superseded/policy "
                      "victim)", "n_evicted"),
    "invalidated": Metric("invalidated", "checkpoints erased because they lay past the restore point "
                          "(\"erased invalidated\")", "n_invalidated"),
    "peak_ckpt_mib": Metric("peak ckpt MiB", "largest checkpoint memory held by all slots at once, MiB",
                            "ckpt_mib_after", "ckpt MiB", "peak checkpoint memory, all slots"),
    "peak_cache_ram_mib": Metric("peak cache MiB", "largest host prompt-cache (--cache-ram) use, MiB",
                                 "cache_ram_mib_after"),
    "cache_loads": Metric("cache loads", "requests whose slot was loaded from the host prompt cache"),
    "makespan_s": Metric("makespan s", "time at which the last request finished, seconds", "finish_s"),
}
# The glossary alone (key -> definition).
METRICS: dict[str, str] = {k: m.definition for k, m in METRIC_TABLE.items()}


def header(key: str) -> str:
    """The table header of a metric (``METRIC_TABLE``); any other column is headed by its name."""
    m = METRIC_TABLE.get(key)
    return m.header if m is not None else key


# (full header, compact header, what the compact header means) per column, for the table layouts
# (cli/_tables): the run metrics' come from METRIC_TABLE; recommend adds its RAM column.
LABELS: dict[str, tuple[str, str, str]] = {
    **{k: (m.header, m.compact or m.header, m.legend) for k, m in METRIC_TABLE.items()},
    "ram_mib": ("RAM MiB (ckpts+cache)", "RAM MiB", "checkpoints + prompt cache, MiB"),
}


def with_prompt_s(summary: dict) -> dict:
    """A run's summary with ``prompt_s`` (METRICS) placed after ``create_s`` (summaries written
    before ``summarize`` gave it, e.g. sweep CSVs of older runs, lack it)."""
    if "prompt_s" in summary:
        return summary
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
    """One row per request of a run (from the run's columns)."""
    res = run.results
    if not len(res):
        return pd.DataFrame()
    df = pd.DataFrame({k: (res.column(k) if k != "created_at"
                           else [" ".join(map(str, xs)) for xs in res.created_at_lists()])
                       for k in RESULT_FIELDS})
    df.insert(0, "policy", run.policy)
    return df


def summary_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run with the run-level metrics, plus the flags it ran under."""
    rows = []
    for run in runs:
        s = with_prompt_s(run.summary())
        c = run.config
        # ctx_checkpoints is the flag the run was given; ckpt_cap the cap it ran under (a spec may
        # pin its own, `none` pins 0: policies.checkpoint_cap)
        s.update(n_slots=c.n_slots, ctx_checkpoints=c.ctx_checkpoints,
                 ckpt_cap=checkpoint_cap(make_policy(run.policy), c), n_batch=c.n_batch,
                 n_ubatch=c.n_ubatch, cache_ram_mib=c.cache_ram_mib)
        rows.append(s)
    return pd.DataFrame(rows)


def events_frame(run: Run) -> pd.DataFrame:
    """One row per event of a run."""
    return pd.DataFrame([{"request_id": e.request_id, "slot": e.slot, "kind": e.kind.value,
                          "n_tokens": e.n_tokens, "size_mib": e.size_mib, "detail": e.detail}
                         for e in run.events])
