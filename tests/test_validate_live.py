"""Round trip with a real llama.cpp server: its -lv 4 log parses and validates at 100%."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.live


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=300).read())


@pytest.mark.parametrize("backend", ["xllamacpp", "llama-server"])
def test_live_log_round_trip(tmp_path: Path, backend: str) -> None:
    pytest.importorskip("gguf")
    from ckptsim.ingest.log_trace import trace_from_log
    from ckptsim.live.server import XLLAMACPP, LiveServer, ServerFlags, installed_binary
    if backend == "xllamacpp":
        pytest.importorskip("xllamacpp", reason="xllamacpp (pip install ckptsim[live]) is not installed")
        server = XLLAMACPP
    else:
        binary = installed_binary()
        if binary is None:
            pytest.skip("no llama-server binary built (run `ckptsim install-server`, ~10 min)")
        server = str(binary)
    from ckptsim.live.tinymodel import preset, write_model
    from ckptsim.validate import validate_log

    model = write_model(tmp_path / "tiny.gguf", preset("tiny"))
    log = tmp_path / "server.log"
    flags = ServerFlags(n_ctx=8192, n_batch=256, n_ubatch=256, ctx_checkpoints=8, checkpoint_min_step=256)
    with LiveServer(model, log, flags, backend=server) as s:
        msgs = [{"role": "system", "content": "You are terse. " * 100},
                {"role": "user", "content": "hello there " * 150}]
        _post(s.url + "/v1/chat/completions", {"messages": msgs, "max_tokens": 8})
        msgs += [{"role": "assistant", "content": "ok " * 20}, {"role": "user", "content": "more words " * 200}]
        _post(s.url + "/v1/chat/completions", {"messages": msgs, "max_tokens": 8})      # extension
        _post(s.url + "/v1/chat/completions",                                           # edited turn
              {"messages": msgs[:2] + [{"role": "user", "content": "edited " * 100}], "max_tokens": 8})
        _post(s.url + "/completion", {"prompt": "abc " * 500, "n_predict": 4})         # new prompt
        _post(s.url + "/completion", {"prompt": "abc " * 300, "n_predict": 4})         # rollback
    lt = trace_from_log(log)
    assert len(lt.requests) == 5 and not lt.left_out and lt.log.stats.malformed == 0
    assert any(r.observed["restored"] >= 0 for r in lt.requests)
    v = validate_log(log)
    assert len(v.known) == 25
    assert v.agreement == 1.0, v.to_json()["mismatches"]
