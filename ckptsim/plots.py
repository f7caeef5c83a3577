"""All matplotlib figures. Functions take DataFrames and return a Figure; callers save them."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def compare_bars(summary: pd.DataFrame, title: str = "") -> plt.Figure:
    """Re-processed tokens and p95 TTFT per policy, side by side."""
    df = summary.sort_values("reprocessed_tokens")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(df) + 1.8))
    ax1.barh(df["policy"], df["reprocessed_tokens"] / 1e3, color="#4C72B0")
    ax1.set_xlabel("re-processed prompt tokens (thousands)")
    ax1.invert_yaxis()
    ax2.barh(df["policy"], df["prefill_s"], color="#DD8452")
    ax2.set_xlabel("estimated prefill time (s)")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "policy comparison")
    fig.tight_layout()
    return fig
