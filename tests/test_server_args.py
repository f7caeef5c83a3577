"""llama-server's own flags on simulate / compare (issue #13): a pasted command line runs as it
reads; unknown flags are refused by name, flags that do not change checkpoints are listed."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ckptsim.cli import app
from ckptsim.server_args import ServerArgs, ServerArgsError, parse_server_args, policy_with_flags
from ckptsim.sim import ServerConfig

runner = CliRunner()
DEMO = "ckptsim/data/demo.jsonl"


def test_a_real_command_line_is_read() -> None:
    a = parse_server_args("/opt/llama/llama-server -m /models/q.gguf -ngl 99 -fa on -c 131072 --parallel 2 "
                          "-kvu -ctxcp 16 --checkpoint-min-step=256 -cram 4096 --batch-size 4096 -ub 1024 "
                          "--port 8080 --seed -1 --jinja")
    assert (a.n_slots, a.ctx_checkpoints, a.min_step, a.cache_ram_mib, a.n_batch, a.n_ubatch) == \
        (2, 16, 256, 4096.0, 4096, 1024)
    assert a.kv_unified is True and a.n_ctx == 131072
    assert a.ignored == ("-m /models/q.gguf", "-ngl 99", "-fa on", "--port 8080", "--seed -1", "--jinja")
    cfg = a.config()
    assert (cfg.n_slots, cfg.ctx_checkpoints, cfg.n_batch, cfg.n_ubatch, cfg.n_ctx) == (2, 16, 4096, 1024, 131072)


def test_context_is_split_between_slots_without_a_unified_cache() -> None:
    """spec §8: -kvu gives every slot the whole -c, otherwise each gets -c / -np."""
    assert parse_server_args("-c 65536 -np 4 -no-kvu").config().n_ctx == 16384
    assert parse_server_args("-np -1 -c 65536").config().n_slots == 4      # auto: 4 slots, unified
    assert parse_server_args("-np -1 -c 65536").config().n_ctx == 65536


@pytest.mark.parametrize("line,named", [("--bogus 3", "--bogus"), ("-b", "-b"), ("-b x", "-b x"),
                                        ("-ctxcp -2", "-ctxcp -2"), ("--cache-ram -5", "--cache-ram -5"),
                                        ("model.gguf", "model.gguf"), ("-np 0", "-np 0")])
def test_bad_lines_name_the_flag(line: str, named: str) -> None:
    with pytest.raises(ServerArgsError, match=named):
        parse_server_args(line)


def test_flags_typed_alone_win_over_the_pasted_line() -> None:
    merged = ServerArgs(n_slots=1).over(parse_server_args("-np 3 -ctxcp 8 -ngl 9"))
    assert (merged.n_slots, merged.ctx_checkpoints, merged.ignored) == (1, 8, ("-ngl 9",))
    assert merged.config(ServerConfig(cache_ram_mib=0)).cache_ram_mib == 0


def test_spacing_flags_go_to_the_policies_that_have_them() -> None:
    assert policy_with_flags("llama-server:version=b10573", 256, None) == \
        ("llama-server:version=b10573,min_step=256", ["--checkpoint-min-step"])
    assert policy_with_flags("server", 0, None)[0] == "llama-server:min_step=0"
    assert policy_with_flags("fifo", 256, None) == ("fifo", [])
    assert policy_with_flags("every-n:n=2048+llama-server", None, 4096)[0] == \
        "every-n:n=2048+llama-server:every_n=4096"
    assert policy_with_flags("llama-server:min_step=256", 256, None)[0] == "llama-server:min_step=256"
    with pytest.raises(ServerArgsError, match="min_step=256"):
        policy_with_flags("llama-server:min_step=256", 512, None)


def _sim(*args: str) -> dict:
    r = runner.invoke(app, ["simulate", DEMO, "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_simulate_runs_the_same_with_flags_typed_or_pasted() -> None:
    typed = _sim("-np", "2", "--ctx-checkpoints", "8", "--checkpoint-min-step", "1024", "--cache-ram", "0",
                 "-b", "1024", "-ub", "256")
    pasted = _sim("--server-args", "llama-server -m x.gguf -ngl 99 -np 2 --ctx-checkpoints 8 "
                                   "--checkpoint-min-step 1024 --cache-ram 0 -b 1024 -ub 256")
    assert typed["summary"] == pasted["summary"]
    assert typed["summary"]["policy"].endswith("min_step=1024")
    assert pasted["ignored_flags"] == ["-m x.gguf", "-ngl 99"] and typed["ignored_flags"] == []
    assert (pasted["config"]["n_slots"], pasted["config"]["n_batch"]) == (2, 1024)
    # and the flag changes the run: the build's default spacing (8192) re-processes another amount
    assert _sim("-np", "2", "--ctx-checkpoints", "8", "--cache-ram", "0", "-b", "1024", "-ub", "256"
                )["summary"]["reprocessed_tokens"] != typed["summary"]["reprocessed_tokens"]


def test_every_n_flag_for_older_builds() -> None:
    a = _sim("--policy", "llama-server:version=b9000", "--checkpoint-every-n-tokens", "2048")
    b = _sim("--policy", "llama-server:version=b9000,every_n=2048")
    assert a["summary"] == b["summary"]


def test_compare_takes_the_flags_and_lists_what_it_ignored() -> None:
    r = runner.invoke(app, ["compare", DEMO, "--policies", "fifo;coverage", "--server-args", "-cms 512 -ngl 99"])
    assert r.exit_code == 0, r.output
    assert "ignored (not modelled by the simulator): -ngl 99" in r.stderr
    doc = json.loads(runner.invoke(app, ["compare", DEMO, "--policies", "fifo;coverage", "-cms", "512",
                                         "--json"]).stdout)
    assert doc["server_flags"].startswith("-np 1 --ctx-checkpoints 32 --checkpoint-min-step 512")
    r = runner.invoke(app, ["simulate", DEMO, "--policy", "fifo", "-cms", "512", "--json"])
    assert "--checkpoint-min-step 512 (no policy here has that setting)" in json.loads(r.stdout)["ignored_flags"]


@pytest.mark.parametrize("args,named", [
    (["--server-args", "--bogus 1"], "--bogus"),
    (["--server-args", "-b 256 -ub 512"], "-ub 512"),
    (["--server-args", "-cram -7"], "-cram -7"),
    (["--policy", "llama-server:min_step=256", "-cms", "512"], "min_step=256"),
    (["--checkpoint-min-step", "-3"], "--checkpoint-min-step -3"),
])
def test_bad_server_flags_exit_2_naming_the_value(args: list[str], named: str) -> None:
    r = runner.invoke(app, ["simulate", DEMO, *args])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in r.output, r.output
