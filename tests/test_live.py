"""End to end against a real llama.cpp server (xllamacpp wheel) on 127.0.0.1 with the tiny model.

Skipped, with the reason, only where the 'live' extra (xllamacpp, gguf) cannot be imported.
One short calibration run (about 20 s on 2 cores) is shared by the tests of this module.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
pytest.importorskip("xllamacpp", reason="xllamacpp (the 'live' extra) is not installed: no llama.cpp server")
pytest.importorskip("gguf", reason="gguf (the 'live' extra) is not installed: cannot write the tiny model")

from typer.testing import CliRunner  # noqa: E402

from ckptsim.cli import app  # noqa: E402
from ckptsim.cost import load_profile  # noqa: E402
from ckptsim.live.calibrate import fit_profile, trace_from_measurements  # noqa: E402
from ckptsim.live.harness import Client, ServerError, probe  # noqa: E402
from ckptsim.live.server import LiveServer, ServerFlags  # noqa: E402
from ckptsim.live.tinymodel import preset, write_model  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """`ckptsim calibrate --tiny --quick`: a real server, the short plan, the fit and the replay."""
    d = tmp_path_factory.mktemp("live")
    out = d / "tiny.json"
    r = CliRunner().invoke(app, ["calibrate", "--tiny", "--quick", "-c", "2048", "-b", "256", "-ub", "256",
                                 "--passes", "2", "-o", str(out), "--json"], env={"CKPTSIM_CACHE": str(d)})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    return {"dir": d, "out": out, "doc": doc, "meas": Path(doc["measurements"]),
            "log": d / "tiny.server.log"}


def test_profile_fields(run):
    """The profile loads, has positive prefill costs, the log's checkpoint size and provenance."""
    p = load_profile(str(run["out"]))
    assert p.prefill_ms_per_token > 0
    assert p.ckpt_size_mib == pytest.approx(0.205)        # live-backend.md: 0.205 MiB per checkpoint
    assert p.kv_mib_per_ktok > 0 and p.decode_ms_per_token > 0
    prov = p.provenance
    assert prov["server_build"].startswith("b") and prov["n_ctx"] == 2048
    assert (prov["n_batch"], prov["n_ubatch"]) == (256, 256)
    assert prov["features_from"] == "server log (-lv 4)"
    assert prov["hardware"]["n_cpus"] >= 1 and prov["date"]


def test_restores_and_full_reprocessing_observed(run):
    """The plan made the real server both restore checkpoints and re-process whole prompts."""
    fit = fit_profile(run["meas"], run["log"])
    rows = fit.fit_rows + fit.heldout_rows
    assert fit.used_log
    assert sum(r["restored"] for r in rows) >= 10
    assert sum(r["full_reprocess"] for r in rows) >= 2
    cut = [r for r in rows if r["phase"] == "cut"]
    assert cut and all(r["full_reprocess"] and r["cache_n"] == 0 for r in cut)   # PR #19970's case
    hits = [r for r in rows if r["phase"] == "hit"]
    assert all(r["restored"] and r["prompt_n"] == 4 for r in hits)               # T-4 checkpoint


def test_measurements_file_is_complete(run):
    """One header, one line per request sent; the trace rebuilt from it has every /completion request."""
    lines = [json.loads(x) for x in run["meas"].read_text().splitlines()]
    assert lines[0]["kind"] == "run" and all(x["kind"] == "request" for x in lines[1:])
    trace = trace_from_measurements(run["meas"])
    assert len(trace) == sum(1 for x in lines[1:] if x["endpoint"] == "/completion")


def test_simulator_replays_the_real_server(run):
    """Replayed in the simulator, the exact request sequence gets the server's cache_n everywhere,
    and the held-out prompt time is in the right range (15% is checked on the committed profile's
    longer run; a 20 s run on a shared CI box is noisier)."""
    v = run["doc"]["validation"]
    assert v["cache_n_agree"] == v["n_requests"]
    assert abs(v["heldout"]["total_error_pct"]) < 50.0
    assert abs(run["doc"]["heldout"]["total_error_pct"]) < 50.0


def test_server_start_probe_and_clean_stop(tmp_path):
    """A real server answers /props and token-id prompts; once stopped, calls fail with one clear line."""
    model = write_model(tmp_path / "tiny.gguf", preset("tiny"))
    srv = LiveServer(model, tmp_path / "s.log", ServerFlags(n_ctx=2048, n_batch=256, n_ubatch=256)).start()
    try:
        c = Client(srv.url, timeout_s=30)
        info = probe(c)
        assert info.n_ctx == 2048 and info.total_slots == 1
        r = c.post("/completion", {"prompt": list(range(40, 100)), "n_predict": 1})
        assert r["timings"]["prompt_n"] == 60
    finally:
        srv.stop()
    with pytest.raises(ServerError, match="connection refused"):
        c.get("/health")


def test_calibrate_at_several_ubatch_sizes(tmp_path):
    """`calibrate --tiny --ubatch-sizes 64,256 -b 256`: one real server per -ub, each with its own log
    and run in one measurements file, fitted together and each replayed under its own flags."""
    out = tmp_path / "ub.json"
    r = CliRunner().invoke(app, ["calibrate", "--tiny", "--quick", "-c", "2048", "-b", "256",
                                 "--ubatch-sizes", "64,256", "--passes", "2", "-o", str(out), "--json"],
                           env={"CKPTSIM_CACHE": str(tmp_path)})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    prov = load_profile(str(out)).provenance
    assert (prov["n_batch"], prov["n_ubatch"]) == (256, [64, 256])
    assert len(prov["measurements"]["run"].split(",")) == 2
    assert (tmp_path / "ub.server-ub64.log").is_file() and (tmp_path / "ub.server-ub256.log").is_file()
    assert [c["n_ubatch"] for c in doc["validation"]["config"]] == [64, 256]
    assert doc["validation"]["cache_n_agree"] == doc["validation"]["n_requests"]
