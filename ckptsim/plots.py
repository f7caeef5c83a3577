"""All matplotlib figures. Functions take DataFrames and return a Figure; callers save them.

No backend is forced here, so a notebook shows the figures inline; the CLI, which only writes
files, selects the non-interactive Agg backend itself (``ckptsim.cli._app.file_backend``).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def compare_bars(summary: pd.DataFrame, title: str = "", bound: dict | None = None) -> plt.Figure:
    """Re-processed tokens and estimated prefill time per policy, side by side; ``bound`` (the
    proven lower bound's summary) is drawn as a dashed line that no bar can cross."""
    df = summary.sort_values("reprocessed_tokens")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(df) + 2.2), layout="constrained")
    ax1.barh(df["policy"], df["reprocessed_tokens"] / 1e3, color="#4C72B0")
    ax1.set_xlabel("re-processed prompt tokens (thousands)")
    ax1.invert_yaxis()
    ax2.barh(df["policy"], df["prefill_s"], color="#DD8452")
    ax2.set_xlabel("estimated prefill time, prefill alone (s)")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    if bound is not None:
        ax1.axvline(bound["reprocessed_tokens"] / 1e3, color="k", ls="--", lw=1, label="lower bound (any policy)")
        ax2.axvline(bound["prefill_s"], color="k", ls="--", lw=1)
        # below the plots, where no bar can be
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "policy comparison")
    return fig


# --- analysis figures (sweep curves, TTFT CDF, slot timelines, memory) ---------------------------

_MARKERS = "os^vD<>ph*"


def cost_curves(sweep: pd.DataFrame, metric: str = "reprocessed_tokens", title: str = "",
                bound: float | None = None) -> plt.Figure:
    """Cost vs --ctx-checkpoints per policy (a miss-ratio-curve view), with the proven lower bound."""
    fig, ax = plt.subplots(figsize=(9.5, 4.8), layout="constrained")
    scale, unit = (1e3, " (thousands)") if metric.endswith("tokens") else (1.0, "")
    for i, (pol, g) in enumerate(sweep.groupby("policy", sort=False)):
        g = g.groupby("ctx_checkpoints", as_index=False)[metric].min().sort_values("ctx_checkpoints")
        ax.plot(g["ctx_checkpoints"], g[metric] / scale, marker=_MARKERS[i % len(_MARKERS)], label=pol)
    if bound is not None:
        ax.axhline(bound / scale, color="black", ls="--", lw=1, label="lower bound (any policy)")
    ax.set_xscale("log", base=2)
    ticks = sorted(sweep["ctx_checkpoints"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("--ctx-checkpoints (per slot)")
    ax.set_ylabel(metric.replace("_", " ") + unit)
    ax.grid(alpha=0.3)
    _legend_right(ax)
    ax.set_title(title or f"{metric.replace('_', ' ')} vs checkpoint count")
    return fig


def _legend_right(ax, **kw) -> None:
    """The legend beside the axes, never over the data (the figure must use constrained layout)."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False, **kw)


def ttft_cdf(results: pd.DataFrame, title: str = "") -> plt.Figure:
    """Empirical CDF of time to first token per policy (``results``: per-request rows with ``policy``)."""
    fig, ax = plt.subplots(figsize=(9.5, 4.8), layout="constrained")
    for pol, g in results.groupby("policy", sort=False):
        x = np.sort(g["ttft_ms"].to_numpy() / 1000.0)
        y = np.arange(1, len(x) + 1) / len(x)
        ax.step(x, y, where="post", label=pol)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("time to first token (s)")
    ax.set_ylabel("fraction of requests")
    ax.axhline(0.95, color="gray", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    ax.set_title(title or "TTFT distribution")
    return fig


def slot_timeline(results: pd.DataFrame, title: str = "", max_requests: int = 120) -> plt.Figure:
    """Per slot, request by request: prompt length, common prefix, reused tokens, checkpoints, restores,
    full re-processing (``results``: one policy's per-request rows, in processing order)."""
    df = results.head(max_requests).reset_index(drop=True)
    slots = sorted(df["slot"].unique()) or [0]
    fig, axes = plt.subplots(len(slots), 1, figsize=(11, 2.6 * len(slots) + 1.2), squeeze=False,
                             sharex=True)
    for ax, s in zip(axes[:, 0], slots):
        g = df[df["slot"] == s]
        x = g.index.to_numpy()
        ax.bar(x, g["n_prompt"] / 1e3, color="#d9d9d9", width=0.9, label="prompt length")
        ax.bar(x, g["n_cached"] / 1e3, color="#55a868", width=0.9, label="reused (cache_n)")
        ax.plot(x, g["n_true_prefix"] / 1e3, "_", color="#4c72b0", ms=9, mew=2, label="common prefix")
        cx, cy = [], []
        for xi, created in zip(x, g["created_at"]):
            for k in _positions(created):
                cx.append(xi)
                cy.append(k / 1e3)
        ax.scatter(cx, cy, s=6, color="black", marker=".", label="checkpoint created", zorder=3)
        rs = g[g["restored_n_tokens"] >= 0]
        ax.scatter(rs.index, rs["restored_n_tokens"] / 1e3, s=28, color="#dd8452", marker="^",
                   label="restored", zorder=4)
        fr = g[g["full_reprocess"]]
        ax.scatter(fr.index, fr["n_prompt"] / 1e3, s=40, color="#c44e52", marker="x",
                   label="full re-processing", zorder=5)
        ax.set_ylabel(f"slot {s}\nk tokens")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=6, loc="lower left", bbox_to_anchor=(0, 1.02), frameon=False)
    axes[-1, 0].set_xlabel(f"request (processing order, first {len(df)})")
    fig.suptitle(title or "slot timeline", y=0.995)
    fig.tight_layout()
    return fig


def _positions(created) -> list[int]:
    if isinstance(created, str):
        return [int(t) for t in created.split()]
    return [int(t) for t in (created or ())]


def memory_over_time(results: pd.DataFrame, title: str = "", include_none: bool = False) -> plt.Figure:
    """Checkpoint memory and prompt-cache memory over time, one row of small multiples per policy
    (step plots on shared axes, so rows compare at a glance and no line hides another).

    ``none`` keeps no checkpoints, so its checkpoint row is flat at zero: left out unless
    ``include_none``."""
    pols = [p for p in dict.fromkeys(results["policy"]) if include_none or p.split(":")[0] != "none"]
    pols = pols or list(dict.fromkeys(results["policy"]))
    fig, axes = plt.subplots(len(pols), 2, figsize=(11, 1.35 * len(pols) + 1.4), sharex=True,
                             sharey="col", squeeze=False, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, pol in enumerate(pols):
        g = results[results["policy"] == pol].sort_values("finish_s")
        t_min = np.concatenate([[0.0], g["finish_s"].to_numpy() / 60.0])
        for ax, col in zip(axes[i], ("ckpt_mib_after", "cache_ram_mib_after")):
            y = np.concatenate([[0.0], g[col].to_numpy()])
            ax.step(t_min, y, where="post", color=colors[i % len(colors)], lw=1.2)
            ax.fill_between(t_min, y, step="post", color=colors[i % len(colors)], alpha=0.15)
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
        axes[i, 0].set_title(pol, loc="left", fontsize=8, fontweight="bold")
        axes[i, 0].set_ylabel("MiB", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("time (min)")
    fig.suptitle((title or "memory over time") + "\nleft: checkpoint memory, all slots; "
                 "right: host prompt cache (--cache-ram)", fontsize=10)
    return fig


def pareto_plot(table: pd.DataFrame, front: pd.DataFrame, metric: str, title: str = "") -> plt.Figure:
    """Every flag set tried (grey) and the Pareto front (memory vs the objective)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    ax.scatter(table["ram_mib"], table[metric], s=12, color="#bbbbbb", label="flag sets tried")
    ax.plot(front["ram_mib"], front[metric], "o-", color="#4c72b0", label="Pareto front")
    ax.set_xlabel("host RAM for checkpoints + prompt cache (MiB)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    _legend_right(ax)
    ax.set_title(title or "memory vs time")
    return fig


def trace_overview(requests: pd.DataFrame, title: str = "") -> plt.Figure:
    """Prompt lengths, how much of each prompt an earlier sequence shares, and arrivals over time."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].hist(requests["n_prompt"] / 1e3, bins=40, color="#4c72b0")
    axes[0].set_xlabel("prompt length (k tokens)")
    axes[0].set_ylabel("requests")
    frac = requests["n_shared"] / requests["n_prompt"].clip(lower=1)
    axes[1].hist(frac, bins=40, color="#55a868")
    axes[1].set_xlabel("shared with an earlier sequence (fraction of prompt)")
    axes[2].plot(requests["t_s"] / 60.0, requests["n_prompt"] / 1e3, ".", ms=3, color="#8172b2")
    axes[2].set_xlabel("arrival (min)")
    axes[2].set_ylabel("prompt length (k tokens)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title or "trace overview")
    fig.tight_layout()
    return fig


def profile_curves(curves: pd.DataFrame, title: str = "") -> plt.Figure:
    """A cost profile: prefill time of a prompt from scratch vs from a checkpoint, and the copy costs."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    ax1.plot(curves["n_tokens"] / 1e3, curves["prefill_ms"] / 1e3, label="prefill from 0")
    ax1.plot(curves["n_tokens"] / 1e3, curves["resume_last_1k_ms"] / 1e3,
             label="restore a checkpoint 1k tokens back + prefill 1k")
    ax1.set_xlabel("prompt length (k tokens)")
    ax1.set_ylabel("seconds")
    _legend_below(ax1)
    ax2.plot(curves["n_tokens"] / 1e3, curves["ckpt_mib"], label="checkpoint size (MiB)")
    ax2.plot(curves["n_tokens"] / 1e3, curves["create_ms"], label="create (ms)")
    ax2.plot(curves["n_tokens"] / 1e3, curves["restore_ms"], label="restore (ms)")
    ax2.set_xlabel("checkpoint position (k tokens)")
    _legend_below(ax2)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "cost profile")
    return fig


def _legend_below(ax) -> None:
    """The legend under the axes' label, never over the data (constrained layout)."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def policy_curves(runs: pd.DataFrame, metric: str = "reprocessed_tokens",
                  reference: str = "llama-server", highlight: str = "adaptive",
                  y_max: float = 2.0) -> plt.Figure:
    """Cost vs --ctx-checkpoints per policy, one panel per trace (small multiples, shared legend).

    ``runs``: one row per (trace, policy, ctx_checkpoints) with ``metric``. Each panel is scaled
    to ``reference`` at the largest cap, so traces of any size read alike (1.0 = the server there).
    """
    traces = list(dict.fromkeys(runs["trace"]))
    ncol = min(3, len(traces))
    nrow = -(-len(traces) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow + 0.8), layout="constrained",
                             squeeze=False)
    policies = list(dict.fromkeys(runs["policy"]))
    # Twenty policies need twenty colours; the reference, the oracle and ``highlight`` stand out.
    palette = plt.get_cmap("tab20").colors
    for ax, tr in zip(axes.flat, traces):
        g = runs[runs["trace"] == tr]
        ref = g[g["policy"] == reference]
        base = float(ref.sort_values("ctx_checkpoints")[metric].iloc[-1]) if len(ref) else float(g[metric].max())
        top = 0.0
        for i, pol in enumerate(policies):
            p = g[g["policy"] == pol].sort_values("ctx_checkpoints")
            if len(p):
                y = p[metric] / (base or 1.0)
                top = max(top, float(y.max()))
                style = {"color": "black", "lw": 2.4, "zorder": 5} if pol == highlight else \
                    {"color": "dimgray", "lw": 2.0, "ls": "--"} if pol == "oracle" else \
                    {"color": "tab:red", "lw": 2.0} if pol == reference else \
                    {"color": palette[i % len(palette)], "lw": 1.0}
                ax.plot(p["ctx_checkpoints"], y, marker=_MARKERS[i % len(_MARKERS)], ms=4, label=pol, **style)
        if top > y_max:
            # a policy far above the rest (no checkpoints at all) would flatten every other line
            ax.set_ylim(top=y_max)
            tr = f"{tr} (clipped at {y_max:g})"
        ax.set_xscale("log", base=2)
        ticks = sorted(g["ctx_checkpoints"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_title(tr, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("--ctx-checkpoints", fontsize=8)
        ax.set_ylabel(f"{metric.replace('_', ' ')} / {reference}", fontsize=8)
    for ax in list(axes.flat)[len(traces):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    return fig
