"""Reports: ``reports/NAME/`` with a self-contained HTML page, markdown, PNGs, CSVs and config.json.

Per trace: cost vs ``--ctx-checkpoints`` curves per policy (with the proven lower bound), the CDF of
time to first token, a timeline of each slot, memory over time, and the summary table. The HTML
embeds its images as base64, so the page can be mailed or attached to an upstream PR on its own.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .sim import ServerConfig
from .sweep import DEFAULT_CTX_CHECKPOINTS, expand, run_sweep

DEFAULT_POLICIES = ("fifo", "every-n:n=4096", "user-turn", "coverage", "llama-server", "oracle")
SUMMARY_COLUMNS = ["policy", "reprocessed_tokens", "reuse_ratio", "prefill_s", "ttft_p50_ms", "ttft_p95_ms",
                   "full_reprocess", "restores", "created", "peak_ckpt_mib", "peak_cache_ram_mib"]


@dataclass(frozen=True)
class ReportSpec:
    """What a report covers: traces, policies, the count sweep and the flags of the detailed runs."""

    traces: tuple[str, ...]
    policies: tuple[str, ...] = DEFAULT_POLICIES
    ctx_checkpoints: tuple[int, ...] = DEFAULT_CTX_CHECKPOINTS
    config: ServerConfig = field(default_factory=ServerConfig)
    profile: str | None = None
    timeline_policies: tuple[str, ...] = ("llama-server", "oracle")
    timeline_requests: int = 120
    memory_include_none: bool = False   # `none`'s checkpoint memory is zero throughout

    def to_json(self) -> dict:
        """The spec as written to config.json."""
        cfg = {k: (None if isinstance(v, float) and math.isinf(v) else v)
               for k, v in dataclasses.asdict(self.config).items()}
        return {"traces": list(self.traces), "policies": list(self.policies),
                "ctx_checkpoints": list(self.ctx_checkpoints), "config": cfg,
                "profile": self.profile, "timeline_policies": list(self.timeline_policies),
                "timeline_requests": self.timeline_requests, "memory_include_none": self.memory_include_none}


@dataclass(frozen=True)
class _Figure:
    name: str        # file name without suffix
    caption: str
    png: bytes


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "trace"


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to write into a non-empty directory unless ``force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --force to overwrite it")


def build_report(spec: ReportSpec, out_dir: Path, force: bool = False, jobs: int | None = None,
                 on_done: Callable[[dict], None] | None = None) -> list[Path]:
    """Simulate, plot and write the report; returns the files written."""
    from . import plots
    from .metrics import results_frame, summary_frame
    from .oracle import lower_bound
    from .sim import simulate
    from .trace import load_trace

    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    sweep = run_sweep(expand(spec.traces, spec.policies, spec.ctx_checkpoints, base=spec.config,
                             profile=spec.profile), jobs=jobs, on_done=on_done)
    sections: list[tuple[str, list[_Figure], pd.DataFrame, str]] = []
    summaries = []
    for path in spec.traces:
        trace = load_trace(path)
        name = trace.name or Path(path).stem
        runs = [simulate(trace, p, spec.config, spec.profile) for p in spec.policies]
        for p in spec.timeline_policies:
            if p not in spec.policies:
                runs.append(simulate(trace, p, spec.config, spec.profile))
        results = pd.concat([results_frame(r) for r in runs], ignore_index=True)
        summary = summary_frame(runs)
        summaries.append(summary)
        lb = lower_bound(trace, spec.config, spec.profile)
        sw = sweep[sweep["trace_path"] == str(path)]
        slug = _slug(name)
        figs = [
            _Figure(f"{slug}-cost-tokens", "Re-processed prompt tokens vs --ctx-checkpoints per policy; "
                    "dashed: the proven lower bound for any policy.",
                    _png(plots.cost_curves(sw, "reprocessed_tokens", f"{name}: re-processed tokens",
                                           lb.reprocessed_tokens))),
            _Figure(f"{slug}-cost-prefill", "Estimated prefill time vs --ctx-checkpoints per policy.",
                    _png(plots.cost_curves(sw, "prefill_s", f"{name}: prefill time (s)", lb.prefill_s))),
            _Figure(f"{slug}-ttft-cdf", f"CDF of time to first token at -ctxcp {spec.config.ctx_checkpoints}.",
                    _png(plots.ttft_cdf(results, f"{name}: TTFT"))),
            _Figure(f"{slug}-compare", "Re-processed tokens and prefill time per policy.",
                    _png(plots.compare_bars(summary, f"{name} (-ctxcp {spec.config.ctx_checkpoints})"))),
        ]
        for p in spec.timeline_policies:
            run = next(r for r in runs if r.policy == _spec_of(p))
            figs.append(_Figure(
                f"{slug}-timeline-{_slug(run.policy)}",
                f"Slot timeline under {run.policy}: grey bars are prompts, green the reused part, blue "
                "ticks the true common prefix, dots the checkpoints created, triangles restores, "
                "red crosses full re-processing.",
                _png(plots.slot_timeline(results_frame(run), f"{name}: {run.policy}",
                                         spec.timeline_requests))))
        figs.append(_Figure(f"{slug}-memory", "Checkpoint memory (all slots, left) and the host prompt cache "
                            "(right) over time, one row per policy" + ("" if spec.memory_include_none else
                                                                       " (none, which keeps no checkpoints, "
                                                                       "left out)") + ".",
                            _png(plots.memory_over_time(results[results["policy"].isin(
                                [r.policy for r in runs])], f"{name}: memory",
                                include_none=spec.memory_include_none))))
        table = summary[[c for c in SUMMARY_COLUMNS if c in summary.columns]].copy()
        bound_row = {c: None for c in table.columns}
        bound_row.update(policy="lower bound (any policy)", reprocessed_tokens=lb.reprocessed_tokens,
                         prefill_s=lb.prefill_s, ttft_p95_ms=lb.ttft_p95_ms)
        table = pd.concat([table, pd.DataFrame([bound_row])], ignore_index=True)
        intro = (f"{len(trace):,} requests, {trace.total_prompt_tokens():,} prompt tokens; "
                 f"source: {trace.header.source or 'unknown'}.")
        sections.append((name, figs, table, intro))

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for _, figs, _, _ in sections:
        for f in figs:
            p = out_dir / f"{f.name}.png"
            p.write_bytes(f.png)
            written.append(p)
    sweep.to_csv(out_dir / "sweep.csv", index=False)
    pd.concat(summaries, ignore_index=True).to_csv(out_dir / "summary.csv", index=False)
    (out_dir / "config.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(spec, sections))
    (out_dir / "report.html").write_text(_html(spec, sections))
    written += [out_dir / n for n in ("sweep.csv", "summary.csv", "config.json", "report.md", "report.html")]
    return written


def _spec_of(policy: str) -> str:
    from .policies import make_policy
    return make_policy(policy).spec


def _fmt_table(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if c == "policy":
            continue
        out[c] = out[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                            else f"{v:.1%}" if c == "reuse_ratio"
                            else f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100
                            else f"{v:,.2f}" if isinstance(v, float) else str(v))
    return out


def _markdown(spec: ReportSpec, sections) -> str:
    lines = ["# ckptsim report", "",
             f"Flags of the detailed runs: `-np {spec.config.n_slots} --ctx-checkpoints "
             f"{spec.config.ctx_checkpoints} -b {spec.config.n_batch} -ub {spec.config.n_ubatch} "
             f"--cache-ram {spec.config.cache_ram_mib:g}`; profile: {spec.profile or 'default'}. "
             "Metric definitions: README, \"Metrics\". Full inputs: `config.json`; numbers: "
             "`summary.csv`, `sweep.csv`.", ""]
    for name, figs, table, intro in sections:
        lines += [f"## {name}", "", intro, "", _fmt_table(table).to_markdown(index=False)
                  if _has_tabulate() else "```\n" + _fmt_table(table).to_string(index=False) + "\n```", ""]
        for f in figs:
            lines += [f"![{f.caption}]({f.name}.png)", "", f"*{f.caption}*", ""]
    return "\n".join(lines)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}code{background:#f4f4f4}"""

_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length;
});
</script>"""


def _html(spec: ReportSpec, sections) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ckptsim report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>ckptsim report</h1>",
             f"<p>Flags of the detailed runs: <code>-np {spec.config.n_slots} --ctx-checkpoints "
             f"{spec.config.ctx_checkpoints} -b {spec.config.n_batch} -ub {spec.config.n_ubatch} "
             f"--cache-ram {spec.config.cache_ram_mib:g}</code>; cost profile: "
             f"{e(spec.profile or 'default')}. Inputs: <code>config.json</code>; numbers: "
             "<code>summary.csv</code>, <code>sweep.csv</code>.</p>"]
    for name, figs, table, intro in sections:
        parts += [f"<h2>{e(name)}</h2>", f"<p>{e(intro)}</p>",
                  "<div style='overflow-x:auto'>" + _fmt_table(table).to_html(index=False, border=0, escape=True)
                  + "</div>"]
        for f in figs:
            b64 = base64.b64encode(f.png).decode("ascii")
            parts.append(f"<figure><img alt='{e(f.caption)}' src='data:image/png;base64,{b64}' "
                         "onload=\"this.dataset.loaded='1'\" onerror=\"this.dataset.failed='1'\">"
                         f"<figcaption>{e(f.caption)}</figcaption></figure>")
    parts += [_CHECK, "</body></html>"]
    return "\n".join(parts)


def trace_frame(trace) -> pd.DataFrame:
    """One row per request of a trace (for notebooks and plots)."""
    return pd.DataFrame({"id": range(len(trace)), "session": trace.session, "t_s": trace.t_s,
                         "n_prompt": trace.n_prompt, "n_output": trace.n_output, "parent": trace.parent,
                         "n_shared": trace.n_shared,
                         "n_user_turns": [len(u) for u in trace.user_starts]})


def profile_frame(profile, max_tokens: int = 131072, step: int = 2048, n_batch: int = 2048,
                  n_ubatch: int = 512) -> pd.DataFrame:
    """A cost profile evaluated on a grid of prompt lengths (for the calibration notebook)."""
    from .server import batch_counts
    rows = []
    for n in range(step, max_tokens + 1, step):
        size = profile.ckpt_mib(n)
        last_1k = max(n - 1000, 0)
        rows.append({"n_tokens": n, "prefill_ms": profile.prefill_ms(0, n, *batch_counts(0, n, n_batch, n_ubatch)),
                     "resume_last_1k_ms": profile.restore_ms(profile.ckpt_mib(max(last_1k, 1)))
                     + profile.prefill_ms(last_1k, n, *batch_counts(last_1k, n, n_batch, n_ubatch)),
                     "ckpt_mib": size, "create_ms": profile.create_ms(size),
                     "restore_ms": profile.restore_ms(size)})
    return pd.DataFrame(rows)
