"""Sweeps: expansion of the cross product, tidy rows, parallel == serial, CSV/Parquet, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.policies import effective_config, make_policy, policy_names
from ckptsim.sim import ServerConfig, simulate
from ckptsim.sweep import SweepTask, expand, run_sweep, with_min_step, write_table
from ckptsim.trace import load_trace

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "chat-edit.jsonl"
pytestmark = pytest.mark.skipif(not TRACE.exists(), reason="bundled traces/ not generated yet")


def test_min_step_only_for_policies_that_have_it() -> None:
    """llama-server and coverage get the flag; fifo does not, so it is not repeated per value."""
    assert with_min_step("llama-server:version=b10573", 1024) == ("llama-server:version=b10573,min_step=1024", 1024)
    assert with_min_step("fifo", 1024) == ("fifo", None)
    tasks = expand([TRACE], ["fifo", "llama-server"], [4, 8], [256, 8192], [0, 8192])
    assert sum(t.policy == "fifo" for t in tasks) == 4          # 2 counts x 2 cache sizes
    assert sum(t.policy.startswith("llama-server") for t in tasks) == 8


def test_rows_match_direct_simulation_and_parallel_equals_serial() -> None:
    """Each row is exactly simulate()'s summary under its flags, whatever the number of processes."""
    tasks = expand([TRACE], ["fifo", "llama-server:min_step=1024"], [2, 16, 32, 64])
    serial = run_sweep(tasks, jobs=1)
    parallel = run_sweep(tasks, jobs=2)
    cols = ["policy", "ctx_checkpoints", "reprocessed_tokens", "prefill_s", "ttft_p95_ms"]
    pd.testing.assert_frame_equal(serial[cols], parallel[cols])
    trace = load_trace(TRACE)
    direct = simulate(trace, "llama-server:min_step=1024", ServerConfig(ctx_checkpoints=16)).summary()
    row = serial[(serial["policy"] == "llama-server:min_step=1024") & (serial["ctx_checkpoints"] == 16)].iloc[0]
    assert row["reprocessed_tokens"] == direct["reprocessed_tokens"]
    assert row["min_step"] == 1024
    assert (serial["bound_reprocessed_tokens"] <= serial["reprocessed_tokens"]).all()
    # memory column: n_slots x ctx_checkpoints x checkpoint size (spec §4)
    assert row["ckpt_mem_mib"] == pytest.approx(16 * 62.8)


def test_write_table_refuses_overwrite_and_bad_suffix(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1]})
    p = write_table(df, tmp_path / "x.csv")
    with pytest.raises(FileExistsError):
        write_table(df, p)
    with pytest.raises(ValueError, match="csv or .parquet"):
        write_table(df, tmp_path / "x.txt")
    pytest.importorskip("pyarrow")
    q = write_table(df, tmp_path / "x.parquet")
    assert pd.read_parquet(q)["a"].tolist() == [1]


def test_cli_sweep_writes_tidy_table(tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    runner = CliRunner()
    r = runner.invoke(app, ["sweep", str(TRACE), "-p", "fifo;coverage", "--ctx-checkpoints", "4,32",
                            "--cache-ram", "0,8192", "-o", str(out), "--json", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    df = pd.read_csv(out)
    assert doc["rows"] == len(df) == 8
    assert set(df["cache_ram_mib"]) == {0.0, 8192.0}
    # never silently overwrite
    r = runner.invoke(app, ["sweep", str(TRACE), "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output


def test_cli_sweep_bad_input_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["sweep", str(TRACE), "--ctx-checkpoints", "4,x", "-o", str(tmp_path / "a.csv")])
    assert r.exit_code == 2 and "--ctx-checkpoints" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "a.csv")])
    assert r.exit_code == 2 and "missing.jsonl" in r.output


def test_a_cap_pinned_in_the_spec_is_not_swept_under_other_labels(tmp_path: Path) -> None:
    """``llama-server:ctx_checkpoints=4`` over --ctx-checkpoints 8,32 used to print two rows
    labelled 8 and 32 with identical results (the policy's cap wins in simulate). The spec's cap
    is the one home: other swept values are refused, and a sweep of that cap alone is labelled
    with it. ``none`` keeps no checkpoints, so it pins nothing and sweeps as before."""
    with pytest.raises(ValueError, match=r"pins ctx_checkpoints=4, so --ctx-checkpoints 8,32"):
        expand([TRACE], ["llama-server:ctx_checkpoints=4"], [8, 32])
    with pytest.raises(ValueError, match="pins ctx_checkpoints=4"):
        expand([TRACE], ["fifo", "user-turn+llama-server", "llama-server:ctx_checkpoints=4+coverage"], [4, 8])
    tasks = expand([TRACE], ["llama-server:ctx_checkpoints=4", "none"], [4])
    assert [t.config.ctx_checkpoints for t in tasks] == [4, 4]
    assert len(expand([TRACE], ["none", "user-turn+llama-server:ctx_checkpoints=2"], [8, 32])) == 4
    row = run_sweep(tasks[:1], jobs=1).iloc[0]
    direct = simulate(load_trace(TRACE), "llama-server", ServerConfig(ctx_checkpoints=4)).summary()
    assert row["ctx_checkpoints"] == 4 and row["reprocessed_tokens"] == direct["reprocessed_tokens"]
    r = CliRunner().invoke(app, ["sweep", str(TRACE), "-p", "llama-server:ctx_checkpoints=4",
                                 "--ctx-checkpoints", "8,32", "-o", str(tmp_path / "a.csv")])
    assert r.exit_code == 2 and "pins ctx_checkpoints=4" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a.csv").exists()


def _figures(df: pd.DataFrame) -> pd.DataFrame:
    """Every column but the ones that say what a row cost (which differ by design when reused)."""
    return df.drop(columns=["wall_s", "reused"])


def test_runs_that_cannot_depend_on_a_swept_value_run_once_and_equal_each_run() -> None:
    """A value the policy cannot read (``policies.effective_config``) is simulated once and the
    run reported in every row it stands for; every row equals the row of running it on its own.
    Covered: ``none`` (pins 0) under caps and byte budgets; a spec pinning its cap under other
    caps (tasks built directly: ``expand`` refuses that sweep); a combination whose placement
    pins 0; any policy under a cap of 0 with several byte budgets. fifo under two live caps is
    the control: those differ and must both run."""
    budgets = (math.inf, 150.0)
    tasks = [SweepTask(str(TRACE), spec, ServerConfig(ctx_checkpoints=cp, ckpt_budget_mib=b))
             for spec in ("none", "none+fifo") for cp in (2, 8, 32) for b in budgets]
    tasks += [SweepTask(str(TRACE), "llama-server:ctx_checkpoints=4", ServerConfig(ctx_checkpoints=cp))
              for cp in (4, 8, 16)]
    tasks += [SweepTask(str(TRACE), "oracle", ServerConfig(ctx_checkpoints=0, ckpt_budget_mib=b)) for b in budgets]
    tasks += [SweepTask(str(TRACE), "fifo", ServerConfig(ctx_checkpoints=cp, ckpt_budget_mib=150.0))
              for cp in (1, 4)]
    shared = run_sweep(tasks, jobs=1)
    each = run_sweep(tasks, jobs=1, reuse=False)
    pd.testing.assert_frame_equal(_figures(shared), _figures(each))
    # none and none+fifo: 1 run for both (under a cap of 0 both are read only through the same
    # rules, policies.read_at_cap_zero); the pinned cap: 1; oracle at cap 0: 1; fifo: 2
    assert (~shared["reused"]).sum() == 5 and not each["reused"].any()
    assert (shared.loc[shared["reused"], "wall_s"] == 0).all()
    # each row keeps the flags its task asked for, not the run's
    assert shared["ctx_checkpoints"].tolist() == [t.config.ctx_checkpoints for t in tasks]
    fifo = shared[shared["policy"] == "fifo"]
    assert fifo["reprocessed_tokens"].nunique() == 2       # the control really differs


@pytest.mark.parametrize("spec", policy_names() + ["oracle+fifo"])
def test_a_run_cannot_depend_on_what_its_effective_config_leaves_out(spec: str) -> None:
    """By construction in ``simulate``, checked on the registry: under a cap of 0 the byte budget
    changes nothing, and under a pinned cap (``llama-server:ctx_checkpoints=3+B`` for every B that
    allows it) the swept cap changes nothing."""
    trace = load_trace(TRACE)
    pol = make_policy(spec)
    a = simulate(trace, spec, ServerConfig(ctx_checkpoints=0), record_events=False).summary()
    b = simulate(trace, spec, ServerConfig(ctx_checkpoints=0, ckpt_budget_mib=1.0), record_events=False).summary()
    assert a == b
    if pol.needs_own_placement:
        return
    pinned = f"llama-server:ctx_checkpoints=3+{spec}"
    runs = [simulate(trace, pinned, ServerConfig(ctx_checkpoints=cp), record_events=False).summary()
            for cp in (1, 64)]
    assert runs[0] == runs[1]
    assert effective_config(make_policy(pinned), ServerConfig(ctx_checkpoints=64)).ctx_checkpoints == 3


def _fresh_row(task: SweepTask) -> dict:
    """The row of ``task`` simulated in a process that holds no shadow replay."""
    from ckptsim import oracle
    from ckptsim.sweep import label_row, simulate_task
    oracle._SHADOWS.clear()
    return label_row(task, simulate_task(task))


def test_runs_that_share_a_shadow_replay_run_in_one_unit_none_last() -> None:
    """The oracle's runs (and oracle+B's) at every cap, and none, under otherwise equal flags need
    one shadow replay: one unit, none last; other flags, another unit; fifo alone. A group heavier
    than a process's share is split (each part then replays the shadow once)."""
    from ckptsim.sweep import shared_units
    tasks = expand([TRACE], ["oracle", "fifo", "none", "oracle+fifo"], [2, 8, 32], cache_ram_mib=(0.0, 2048.0))
    units = shared_units(tasks, 1)          # (run_sweep hands it one task per run_key: none once)
    specs = [[tasks[j].policy for j in u] for u in units]
    assert sorted(map(len, units)) == [1] * 6 + [9, 9]
    for u, sp in zip(units, specs):
        assert len({tasks[j].config.cache_ram_mib for j in u}) == 1
        if len(u) > 1:
            assert sp[-3:] == ["none"] * 3 and sorted(sp[:-3]) == ["oracle"] * 3 + ["oracle+fifo"] * 3
    assert sorted(j for u in units for j in u) == list(range(len(tasks)))
    oracle_only = expand([TRACE], ["oracle"], [2, 8, 32, 64])
    assert len(shared_units(oracle_only, 1)) == 1 and len(shared_units(oracle_only, 2)) == 2
    assert len(shared_units(oracle_only, 8)) == 4


@pytest.mark.parametrize("jobs", [1, 2])
def test_shared_shadow_replays_equal_each_run_on_its_own(jobs: int) -> None:
    """Rows with the shadow shared (the oracle's later runs and none take it) equal the rows of
    simulating every task in a process that holds no shadow."""
    tasks = expand([TRACE, REPO / "traces" / "multi-session.jsonl"], ["oracle", "none", "oracle+fifo", "fifo"],
                   [2, 32], cache_ram_mib=(0.0, 2048.0), n_slots=(1, 2))
    shared = run_sweep(tasks, jobs=jobs)
    each = pd.DataFrame([_fresh_row(t) for t in tasks])
    pd.testing.assert_frame_equal(_figures(shared), _figures(each)[_figures(shared).columns],
                                  check_dtype=False)


def test_a_sweep_replays_each_shadow_once(count_replays) -> None:
    """In one process: per trace and flags but the cap, one replay without checkpoints, whatever
    the number of caps and whether none is swept too."""
    from ckptsim import oracle
    oracle._SHADOWS.clear()
    tasks = expand([TRACE], ["none", "oracle", "oracle:evict=belady"], [2, 8, 32], cache_ram_mib=(0.0, 2048.0))
    with count_replays() as calls:
        run_sweep(tasks, jobs=1)
    assert calls.count("none") == 2                        # one per --cache-ram
    assert len(calls) == 2 + 2 * 6                         # and one replay per oracle run


def test_under_a_cap_of_0_a_policy_read_only_through_its_rules_runs_once() -> None:
    """``policies.read_at_cap_zero``: under a cap of 0 the runs of every policy it admits are
    equal when their rules are (checked on the whole registry, min-step and build variants and
    combinations, on three bundled traces, under several slot and prompt-cache settings), and
    the sweep runs them once per rules."""
    from ckptsim.policies import read_at_cap_zero
    specs = policy_names() + ["llama-server:min_step=0", "llama-server:min_step=8192", "llama-server:version=b8300",
                              "llama-server:version=b8300,every_n=1024", "llama-server:version=b9500",
                              "fifo+coverage", "none+fifo", "oracle+fifo", "every-n:n=512+llama-server"]
    admitted = {s: read_at_cap_zero(make_policy(s)) for s in specs}
    assert admitted["none"] == admitted["llama-server:min_step=8192"] == admitted["fifo+coverage"]
    assert admitted["oracle"] is None and admitted["vllm-all"] is None and admitted["oracle+fifo"] is None
    assert admitted["adaptive"] is None and admitted["marconi"] is None
    for name in ("chat-edit", "multi-session", "compaction"):
        trace = load_trace(REPO / "traces" / f"{name}.jsonl")
        for cfg in (ServerConfig(ctx_checkpoints=0), ServerConfig(ctx_checkpoints=0, n_slots=2, cache_ram_mib=1024),
                    ServerConfig(ctx_checkpoints=0, cache_ram_mib=0, arrival_order=False, n_slots=3)):
            by_rules: dict = {}
            for spec, rules in admitted.items():
                if rules is not None:
                    run = simulate(trace, spec, cfg, record_events=False)
                    by_rules.setdefault(rules, []).append((spec, run.results))
            for runs in by_rules.values():
                for spec, results in runs[1:]:
                    assert results == runs[0][1], (name, spec, runs[0][0])
    tasks = [SweepTask(str(TRACE), s, ServerConfig(ctx_checkpoints=0)) for s in specs]
    shared = run_sweep(tasks, jobs=1)
    n_rules = len({r for r in admitted.values() if r is not None})
    assert (~shared["reused"]).sum() == n_rules + sum(r is None for r in admitted.values())
    from ckptsim import oracle
    oracle._SHADOWS.clear()
    pd.testing.assert_frame_equal(_figures(shared), _figures(run_sweep(tasks, jobs=1, reuse=False)))
