"""Figures (issue #13): memory over time as small multiples without `none` by default, no legend
over any plotting area, and the demo figure titled with the trace name its CSV carries."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (files only; no display in the test run)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ckptsim import plots  # noqa: E402
from ckptsim.cli import app  # noqa: E402
from ckptsim.cost import load_profile  # noqa: E402
from ckptsim.metrics import results_frame, summary_frame  # noqa: E402
from ckptsim.report import profile_frame  # noqa: E402
from ckptsim.sim import ServerConfig, simulate  # noqa: E402
from ckptsim.sweep import expand, run_sweep  # noqa: E402
from ckptsim.trace import load_trace  # noqa: E402

DEMO = "ckptsim/data/demo.jsonl"
POLICIES = ["none", "fifo", "every-n:n=4096", "coverage", "llama-server", "oracle"]


@pytest.fixture(scope="module")
def runs():
    trace = load_trace(DEMO)
    return [simulate(trace, p, ServerConfig(ctx_checkpoints=8)) for p in POLICIES]


@pytest.fixture(scope="module")
def results(runs) -> pd.DataFrame:
    return pd.concat([results_frame(r) for r in runs], ignore_index=True)


def _legends_clear_of_axes(fig) -> None:
    """No legend's box overlaps any axes' plotting area (rendered extents, in pixels)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            area = ax.get_window_extent(renderer)
            assert not box.overlaps(area), (leg.get_texts()[0].get_text(), ax.get_title())


def test_memory_is_one_row_per_policy_without_none(results) -> None:
    fig = plots.memory_over_time(results, "demo: memory")
    rows = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert rows == [r for r in dict.fromkeys(results["policy"]) if r != "none"]
    assert len(fig.axes) == 2 * len(rows)
    assert all(ax.get_legend() is None for ax in fig.axes)     # rows are labelled, nothing to cover
    with_none = plots.memory_over_time(results, include_none=True)
    assert len(with_none.axes) == 2 * (len(rows) + 1)
    # each row draws only its own policy: the oracle's peak is its own, not the largest one
    oracle = results[results["policy"] == "oracle"]["ckpt_mib_after"].max()
    ax = next(a for a in fig.axes if a.get_title(loc="left") == "oracle")
    assert max(line.get_ydata().max() for line in ax.get_lines()) == pytest.approx(oracle)


def test_no_legend_covers_data(runs, results) -> None:
    sweep = run_sweep(expand([DEMO], ["fifo", "llama-server", "oracle"], (4, 32)), jobs=1)
    table = pd.DataFrame({"ram_mib": [0, 100, 200], "prompt_s": [10.0, 5.0, 4.0]})
    for fig in (plots.compare_bars(summary_frame(runs), "t", {"reprocessed_tokens": 1e6, "prefill_s": 500.0}),
                plots.cost_curves(sweep, "reprocessed_tokens", "t", 1e6),
                plots.ttft_cdf(results, "t"),
                plots.slot_timeline(results_frame(runs[-1]), "t", 60),
                plots.pareto_plot(table, table, "prompt_s"),
                plots.profile_curves(profile_frame(load_profile(None), max_tokens=16384))):
        _legends_clear_of_axes(fig)


def test_demo_figure_is_titled_with_the_csv_trace_name(tmp_path, monkeypatch) -> None:
    titles = []
    real = plots.compare_bars

    def spy(df, title="", bound=None):
        titles.append(title)
        return real(df, title, bound)

    monkeypatch.setattr(plots, "compare_bars", spy)
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    csv_name = pd.read_csv(tmp_path / "demo" / "compare.csv")["trace"].unique()
    assert len(csv_name) == 1 and titles and titles[0].startswith(f"{csv_name[0]} ")
    assert f"{csv_name[0]} (demo.jsonl)" in r.stdout       # and the table says the same
